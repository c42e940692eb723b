//! Dockerfile lowering: COPY and ADD (sources, heredocs, URLs, flags) and what `--from` names.

use super::{
    CopyOp, Heredoc, Instruction, Lowerer, NamedContext, NodeId, Op, Result, Span, Stage, Word,
    copy_history, join_path, shell, suggest,
};

use crate::graph::remote::{self, Checksum, RemoteKind};

impl Lowerer<'_> {
    pub(super) fn copy(
        &mut self,
        stage: &mut Stage,
        ins: &Instruction,
        sources: &[Word],
        dest: &Word,
        add: bool,
    ) -> Result<()> {
        let what = if add { "ADD" } else { "COPY" };
        let flags: &[&str] = if add {
            &[
                "from",
                "chown",
                "chmod",
                "link",
                "checksum",
                "keep-git-dir",
                "parents",
                "exclude",
            ]
        } else {
            &["from", "chown", "chmod", "link", "parents", "exclude"]
        };
        self.reject_flags(ins, flags)?;
        let lookup = |n: &str| stage.lookup(n);
        let heredocs = self.copy_heredocs(ins, sources)?;
        let mut srcs = Vec::new();
        let mut remote: Vec<(String, Span)> = Vec::new();
        for s in sources {
            if s.text.starts_with("<<") && !heredocs.is_empty() {
                continue;
            }
            let mut v = self.expand(s, &lookup)?;
            if v.is_empty() && self.opts.lenient {
                v = s.text.clone();
            }
            if v.is_empty() {
                return Err(self.error(s.span, format!("{what} source is empty after expansion")));
            }
            if add && (v.contains("://") || v.starts_with("git@")) {
                if remote::kind(&v).is_none() && !self.opts.lenient {
                    return Err(self
                        .error(s.span, format!("ADD cannot fetch `{}`", remote::redacted(&v)))
                        .help("ADD fetches http://, https:// and git URLs; copy other files into the context"));
                }
                remote.push((v, s.span));
                continue;
            }
            srcs.push(v);
        }
        // Mixing URLs and files needs a source tree per origin; a build would refuse the URL anyway, so
        // compile-only mode keeps the first URL as the graph leaf.
        if !remote.is_empty() && sources.len() != 1 && !self.opts.lenient {
            return Err(self
                .error(remote[0].1, "ADD of a URL takes exactly one source")
                .help("use one ADD per URL"));
        }
        let mut inline = self.heredoc_files(&heredocs, &lookup)?;
        srcs.extend(inline.iter().map(|(name, _)| name.clone()));
        let mixed = !heredocs.is_empty() && heredocs.len() != sources.len();
        let raw_dest = self.expand(dest, &lookup)?;
        let mut dest_path = join_path(stage.image.dir(), &raw_dest);
        if (raw_dest.ends_with('/') || raw_dest == "." || raw_dest.ends_with("/."))
            && !dest_path.ends_with('/')
        {
            dest_path.push('/');
        }
        if srcs.len() > 1 && !dest_path.ends_with('/') && !self.opts.lenient {
            return Err(self
                .error(
                    dest.span,
                    "when copying several sources, the destination must be a directory",
                )
                .help(format!("end it with a slash: `{raw_dest}/`")));
        }
        let CopyFlags {
            chown,
            chmod,
            checksum,
            keep_git_dir,
            excludes,
            parents,
            source_node,
        } = self.copy_flags(stage, ins)?;
        // Heredocs beside files of the source: written by the same COPY, into the same layer.
        let (files, doc_names) = if mixed {
            let names = srcs.split_off(srcs.len() - inline.len());
            (std::mem::take(&mut inline), names)
        } else {
            (Vec::new(), Vec::new())
        };
        let from_url = !remote.is_empty();
        if let Some((span, c)) = &checksum {
            self.check_checksum(*span, c, remote.first())?;
        }
        let source = match source_node {
            _ if from_url => {
                let (url, span) = remote.remove(0);
                // A download is the single entry of its tree, named as BuildKit names it; a repository is all of it.
                srcs.push(remote::source_name(&url));
                let at = self.at(span);
                let name = format!("ADD {}", remote::redacted(&url));
                let op = Op::Remote {
                    url,
                    checksum: checksum.map(|(_, c)| c),
                    keep_git_dir,
                };
                self.program.push(op, vec![], name, at)
            }
            Some(_) if !inline.is_empty() || !files.is_empty() => {
                return Err(self
                    .error(
                        ins.keyword.span,
                        format!("{what} --from cannot be used with heredocs"),
                    )
                    .help("heredocs are the source; drop --from"));
            }
            Some(n) => n,
            None if !inline.is_empty() => {
                let at = self.at(ins.span);
                self.program.push(
                    Op::Inline { files: inline },
                    vec![],
                    "heredoc files".into(),
                    at,
                )
            }
            None => self.context_leaf("context"),
        };
        let created_by = copy_history(add, &[srcs.as_slice(), &doc_names].concat(), &dest_path);
        let op = Op::Copy(CopyOp {
            sources: srcs,
            dest: dest_path,
            chown,
            chmod,
            // A remote archive is copied as it is, never unpacked (Docker's ADD reference).
            extract: add && !from_url,
            excludes,
            parents,
            files,
        });
        self.push_fs(stage, ins, op, vec![source], created_by);
        if from_url {
            // The step's name quotes the instruction; a token written into its URL is not shown.
            let node = &mut self.program.nodes[stage.image.fs];
            node.name = remote::redact_text(&node.name);
        }
        Ok(())
    }

    /// `--from=` names an earlier stage (by name or index), a named build context, or an image.
    pub(super) fn copy_from(&mut self, span: Span, value: &str) -> Result<NodeId> {
        if value.is_empty() {
            return Err(self.error(span, "`from` names no stage or image").help(
                "it is empty: a build argument used here may be unset; give it a default or pass --build-arg",
            ));
        }
        if let Some(s) = self.stage_by_name(value)? {
            return Ok(s.state.image.fs);
        }
        if let Ok(index) = value.parse::<usize>() {
            if index >= self.decls.len() {
                return Err(self
                    .error(span, format!("stage index {index} does not exist"))
                    .help(format!(
                        "the Dockerfile has {} stage(s), numbered from 0",
                        self.decls.len()
                    )));
            }
            self.lower_stage(index)?;
            return Ok(self.stages[index]
                .as_ref()
                .expect("just lowered")
                .state
                .image
                .fs);
        }
        match self.named_context(value).cloned() {
            Some(NamedContext::Dir(_)) => return Ok(self.context_leaf(value)),
            Some(NamedContext::Image(r)) => {
                let platform = self.opts.platform.clone();
                return Ok(self.image_leaf(&r, span, &platform));
            }
            None => {}
        }
        // As in BuildKit, a name that is no stage, index or named context is an image reference
        // (`--from=composer` is `docker.io/library/composer:latest`), pulled like a FROM base.
        let Err(invalid) = crate::registry::ImageName::parse(value) else {
            let r = value.to_string();
            let platform = self.opts.platform.clone();
            return Ok(self.image_leaf(&r, span, &platform));
        };
        let names: Vec<&str> = self
            .decls
            .iter()
            .filter_map(|(_, _, a)| a.as_deref())
            .collect();
        let d = self.error(
            span,
            format!(
                "no stage named `{value}`, nor is it an image: {}",
                invalid.message
            ),
        );
        Err(match suggest(value, names.iter().copied()) {
            Some(s) => d.help(format!("did you mean the stage `{s}`?")),
            None if names.is_empty() => d.help(invalid.help.unwrap_or_default()),
            None => d.help(format!(
                "the stages are: {}; for an image write its reference such as `busybox:latest`",
                names.join(", ")
            )),
        })
    }

    /// Each heredoc as a file: its name and its body, expanded unless its delimiter was quoted.
    fn heredoc_files(
        &self,
        heredocs: &[&Heredoc],
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>> {
        heredocs
            .iter()
            .map(|h| {
                let content = if h.expand {
                    shell::expand_raw(&h.text(), self.escape(), lookup).map_err(|e| {
                        self.error(h.body.span, format!("cannot expand the heredoc: {e}"))
                    })?
                } else {
                    h.text()
                };
                Ok((h.name.text.clone(), content))
            })
            .collect()
    }

    /// The heredocs a COPY/ADD's sources name.
    fn copy_heredocs<'i>(
        &self,
        ins: &'i Instruction,
        sources: &[Word],
    ) -> Result<Vec<&'i Heredoc>> {
        let heredocs: Vec<&Heredoc> = sources
            .iter()
            .filter_map(|s| {
                ins.heredocs.iter().find(|h| {
                    s.text
                        .trim_start_matches('<')
                        .trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        == h.name.text
                        && s.text.starts_with("<<")
                })
            })
            .collect();
        Ok(heredocs)
    }

    /// A COPY/ADD's flags, expanded; `--from` resolved to its node.
    /// `--checksum` pins an HTTP download: it must be a digest, and there must be a URL to pin. A git
    /// source's checksum (a commit) is the git fetcher's to judge.
    fn check_checksum(&self, span: Span, value: &str, url: Option<&(String, Span)>) -> Result<()> {
        match url {
            None if !self.opts.lenient => Err(self
                .error(span, "--checksum can only pin an HTTP(S) source")
                .help("give ADD a URL, or drop --checksum")),
            Some((u, _)) if remote::kind(u) == Some(RemoteKind::Http) => {
                Checksum::parse(value).map(|_| ()).map_err(|e| {
                    self.error(span, format!("invalid --checksum: {e}"))
                        .help("write `--checksum=sha256:` followed by the file's 64-digit SHA-256")
                })
            }
            _ => Ok(()),
        }
    }

    fn copy_flags(&mut self, stage: &Stage, ins: &Instruction) -> Result<CopyFlags> {
        let lookup = |n: &str| stage.lookup(n);
        let mut chown = None;
        let mut chmod = None;
        let mut checksum = None;
        let mut keep_git_dir = false;
        let mut excludes = Vec::new();
        let mut parents = false;
        let mut source_node = None;
        for f in &ins.flags {
            let v = self.expand_flag(f, &lookup)?;
            match f.name.as_str() {
                "chown" => chown = Some(v),
                "chmod" => {
                    chmod = Some(
                        u32::from_str_radix(&v, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| {
                                self.error(f.value_span, format!("invalid --chmod value `{v}`"))
                                    .help("give an octal mode such as `644` or `0755`")
                            })?,
                    )
                }
                "from" => source_node = Some(self.copy_from(f.value_span, &v)?),
                // Every kiln layer is already independent of what lies below it in the cache.
                "link" => {}
                "checksum" => checksum = Some((f.value_span, v)),
                "keep-git-dir" => {
                    keep_git_dir = crate::options::parse_bool(Some(&v)).unwrap_or(true)
                }
                "exclude" => {
                    if v.is_empty() {
                        return Err(self.error(f.span, "--exclude needs a pattern"));
                    }
                    excludes.push(v)
                }
                "parents" => {
                    parents = crate::options::parse_bool(
                        Some(&v).filter(|v| !v.is_empty()).map(|v| v.as_str()),
                    )
                    .ok_or_else(|| self.error(f.value_span, "--parents takes true or false"))?
                }
                _ => unreachable!("flags were checked or refused"),
            }
        }
        Ok(CopyFlags {
            chown,
            chmod,
            checksum,
            keep_git_dir,
            excludes,
            parents,
            source_node,
        })
    }
}

/// A COPY/ADD's flags, expanded.
struct CopyFlags {
    chown: Option<String>,
    chmod: Option<u32>,
    /// The value and where it is written.
    checksum: Option<(Span, String)>,
    keep_git_dir: bool,
    excludes: Vec<String>,
    parents: bool,
    source_node: Option<NodeId>,
}
