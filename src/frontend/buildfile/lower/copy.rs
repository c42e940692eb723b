//! `.build` evaluation: `.copy(...)` and `.add(...)`.

use super::{Arg, CopyOp, Evaluator, Img, Op, Result, Span, Value, copy_history, join_path, shell};

impl Evaluator<'_> {
    pub(super) fn copy(
        &mut self,
        img: &mut Img,
        add: bool,
        v: &[Value],
        span: Span,
        args: &[Arg],
    ) -> Result<()> {
        let what = if add { "add" } else { "copy" };
        let at = |i: usize| args.get(i).map_or(span, |a| a.value.span);
        let (mut srcs, mut remote) = self.copy_sources(img, add, v, at(1))?;
        let from_url = !remote.is_empty() || matches!(v[0], Value::Remote { .. });
        let source = match &v[0] {
            _ if !remote.is_empty() => {
                let url = remote.remove(0);
                srcs.push(crate::graph::remote::source_name(&url));
                let keep = false;
                self.remote_node(url, None, keep, at(1))
            }
            Value::Remote {
                url,
                checksum,
                keep_git_dir,
                span: rspan,
            } => {
                // As ADD does: the URL is expanded like any source, and the fetched file is the single
                // entry of its tree, named like the URL's end.
                let url = self.expand(img, url, *rspan)?;
                let checksum = match checksum {
                    Some(c) => Some(self.expand(img, c, *rspan)?),
                    None => None,
                };
                if srcs.is_empty() {
                    srcs.push(crate::graph::remote::source_name(&url));
                }
                self.remote_node(url, checksum, *keep_git_dir, *rspan)
            }
            Value::Inline {
                files,
                expand: true,
                span: ispan,
            } => {
                // An unquoted heredoc: variables expand, quotes and escapes stay as written.
                let mut expanded = Vec::new();
                for (name, content) in files {
                    let text = shell::expand_raw(content, '\\', &|n| img.lookup(n))
                        .map_err(|e| self.err(*ispan, format!("cannot expand `{name}`: {e}")))?;
                    expanded.push((name.clone(), text));
                }
                self.inline_node(expanded, *ispan)
            }
            other => self.source_node(other),
        };
        match &v[0] {
            Value::File { path, .. } => {
                if !srcs.is_empty() {
                    return Err(self
                        .err(at(1), "a File source is the one file to copy")
                        .help("give `[]` as the sources, or copy from `image.dir(...)`"));
                }
                srcs.push(path.clone());
            }
            _ if srcs.is_empty() => {
                return Err(self
                    .err(at(1), format!("{what}() needs at least one source path"))
                    .help("name paths relative to the source, e.g. `[\".\"]` for all of it"));
            }
            _ => {}
        }
        let raw_dest = self.expand(img, v[2].str(), at(2))?;
        let mut dest = join_path(img.dir(), &raw_dest);
        if (raw_dest.ends_with('/') || raw_dest == "." || raw_dest.ends_with("/."))
            && !dest.ends_with('/')
        {
            dest.push('/');
        }
        if srcs.len() > 1 && !dest.ends_with('/') && !self.opts.lower.lenient {
            return Err(self
                .err(
                    at(2),
                    "when copying several sources, the destination must be a directory",
                )
                .help(format!("end it with a slash: `{raw_dest}/`")));
        }
        let chown = match &v[3] {
            Value::Str(s) => Some(self.expand(img, s, span)?),
            _ => None,
        };
        let chmod = match v[4] {
            Value::Int(m) if m <= 0o7777 => Some(m as u32),
            Value::Int(m) => {
                return Err(self
                    .err(span, format!("invalid chmod {m:o}"))
                    .help("give an octal mode such as `0o644`"));
            }
            _ => None,
        };
        let mut excludes = Vec::new();
        for x in v[5].strs() {
            let x = self.expand(img, &x, span)?;
            if x.is_empty() {
                return Err(self.err(span, "exclude needs a pattern"));
            }
            excludes.push(x);
        }
        let created_by = copy_history(add, &srcs, &dest);
        let op = Op::Copy(CopyOp {
            sources: srcs,
            dest,
            chown,
            chmod,
            // A remote archive is copied as it is, never unpacked, as ADD does.
            extract: add && !from_url,
            excludes,
            parents: v[6].bool(),
            files: Vec::new(),
        });
        self.push_fs(img, op, vec![source], created_by, span);
        Ok(())
    }

    /// A copy's sources, expanded and checked for secret-looking names; for `add()`, the URLs among them
    /// apart (fetched, as ADD does).
    fn copy_sources(
        &mut self,
        img: &Img,
        add: bool,
        v: &[Value],
        at: Span,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let what = if add { "add" } else { "copy" };
        let mut srcs = Vec::new();
        for s in v[1].strs() {
            let mut x = self.expand(img, &s, at)?;
            if x.is_empty() && self.opts.lower.lenient {
                // Compile-only: what only a build argument could settle stays as written.
                x = s.clone();
            }
            if x.is_empty() {
                return Err(self.err(at, format!("{what}() source is empty after expansion")));
            }
            srcs.push(x);
        }
        if !matches!(v[0], Value::Inline { .. }) {
            for x in &srcs {
                if let Some(message) =
                    crate::frontend::lint::secrets::copied_file(&format!("{what}()"), x)
                {
                    // Each source where it is written, when it is written as a plain string.
                    let place = self.locate(at, &format!("\"{x}\""));
                    self.lint(place, "SecretFileCopied", message)?;
                }
            }
        }
        // As ADD does: a source that expands to a URL is fetched (one URL per instruction).
        let mut remote: Vec<String> = Vec::new();
        if add {
            let (urls, locals): (Vec<String>, Vec<String>) = srcs
                .into_iter()
                .partition(|x| x.contains("://") || x.starts_with("git@"));
            srcs = locals;
            remote = urls;
            if !remote.is_empty() && srcs.len() + remote.len() != 1 && !self.opts.lower.lenient {
                return Err(self
                    .err(at, "add() of a URL takes exactly one source")
                    .help("use one add() per URL"));
            }
        }
        Ok((srcs, remote))
    }
}
