//! kiln's own secret checks on a Dockerfile, over the rules' language-neutral cores in
//! `frontend::lint::secrets`: secret-looking files copied into a layer (`SecretFileCopied`), secret files
//! read by a RUN that does not mount them (`SecretReadWithoutMount`), a mounted secret written to a file
//! the same RUN leaves behind (`SecretCopiedToFile`), and secret-looking build-arg, ARG and ENV values
//! (`SecretInBuildArg`).

use std::sync::Arc;

use super::{Linter, Options, words};
use crate::diag::{Located, SourceFile, Span};
use crate::frontend::dockerfile::syntax::ast::{
    Command, Dockerfile, Instruction, InstructionKind, Word,
};
pub use crate::frontend::lint::secrets::{
    RunFinding, SecretMount, copied_file, join, run_findings, value_message,
};
use crate::frontend::lint::secrets::{secret_value, unquote};

/// `SecretFileCopied`: a COPY/ADD source (or wildcard pattern) whose base name looks like a secret.
pub(super) fn copy(l: &mut Linter, i: usize, ins: &Instruction, sources: &[(&Word, String)]) {
    let kw = ins.kind.name();
    for (w, value) in sources {
        if let Some(message) = copied_file(kw, value) {
            l.emit("SecretFileCopied", Some(i), w.span, message);
        }
    }
}

/// Parses mount option lists: the secret mounts, and the targets of tmpfs mounts.
fn mounts(values: &[String], cwd: &str) -> (Vec<SecretMount>, Vec<String>) {
    let mut secrets = Vec::new();
    let mut tmpfs = Vec::new();
    for v in values {
        let Ok(fields) = crate::options::parse(v) else {
            continue;
        };
        let get = |keys: &[&str]| {
            fields
                .iter()
                .rev()
                .find(|f| keys.contains(&f.key.to_ascii_lowercase().as_str()))
                .and_then(|f| f.value.clone())
        };
        let target = get(&["target", "dst", "destination"]).filter(|t| !t.is_empty());
        match get(&["type"])
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "secret" => {
                let env = get(&["env"]).filter(|e| !e.is_empty());
                let mut id = get(&["id"]).unwrap_or_default();
                if id.is_empty()
                    && let Some(t) = &target
                {
                    id = t.rsplit('/').next().unwrap_or("").to_string();
                }
                let target = match (target, &env) {
                    (Some(t), _) => Some(join(cwd, &t)),
                    (None, Some(_)) => None,
                    (None, None) => Some(format!("/run/secrets/{id}")),
                };
                secrets.push(SecretMount { id, target, env });
            }
            "tmpfs" => tmpfs.extend(target.map(|t| join(cwd, &t))),
            _ => {}
        }
    }
    (secrets, tmpfs)
}

/// The explicit targets of every secret mount in the file (mount lists as written).
pub(super) fn file_targets(df: &Dockerfile) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ins in &df.instructions {
        if !matches!(ins.kind, InstructionKind::Run(_)) {
            continue;
        }
        let values: Vec<String> = ins
            .flags
            .iter()
            .filter(|f| f.name == "mount")
            .filter_map(|f| f.value.clone())
            .filter(|v| v.contains("target=") || v.contains("dst=") || v.contains("destination="))
            .collect();
        for m in mounts(&values, "/").0 {
            if let Some(t) = m.target
                && !out.contains(&t)
            {
                out.push(t);
            }
        }
    }
    out
}

/// The text a RUN hands to its shell: the command and any heredoc bodies.
fn run_text(ins: &Instruction, cmd: &Command) -> String {
    let mut text = match cmd {
        Command::Shell(w) => w.text.clone(),
        Command::Exec { args, .. } => args.join(" "),
    };
    for h in &ins.heredocs {
        text.push('\n');
        text.push_str(&h.text());
    }
    text
}

/// The span of `needle` inside the instruction's source, or the instruction's first line.
fn locate(l: &Linter, ins: &Instruction, needle: &str) -> Span {
    let text: &str = &l.file.text;
    let src = &text[ins.span.start..ins.span.end];
    match src.find(needle) {
        Some(at) if !needle.is_empty() => {
            Span::new(ins.span.start + at, ins.span.start + at + needle.len())
        }
        _ => ins.keyword.span,
    }
}

/// `SecretReadWithoutMount` and `SecretCopiedToFile` for one RUN (mount lists already expanded).
pub(super) fn run(
    l: &mut Linter,
    i: usize,
    ins: &Instruction,
    cmd: &Command,
    mount_values: &[String],
    cwd: &str,
    file_targets: &[String],
) {
    let text = run_text(ins, cmd);
    let (secrets, tmpfs) = mounts(mount_values, cwd);
    for f in run_findings(&text, &secrets, &tmpfs, cwd, file_targets) {
        let span = locate(l, ins, &f.needle);
        l.emit(f.rule, Some(i), span, f.message);
    }
}

/// `SecretInBuildArg` for an ARG default or ENV value written in the Dockerfile.
pub(super) fn value(l: &mut Linter, i: usize, kind: &str, key: &str, word: Option<&Word>) {
    let Some(w) = word else { return };
    if let Some(message) = value_message(kind, key, unquote(&w.text)) {
        l.emit("SecretInBuildArg", Some(i), w.span, message);
    }
}

/// `SecretInBuildArg` for `--build-arg`s: a secret-looking value, or a secret-looking name that
/// `SecretsUsedInArgOrEnv` has not already reported. The value is never shown.
pub(super) fn build_args(l: &mut Linter, opts: &Options) {
    for a in &opts.build_args {
        if a.key == "BUILDKIT_DOCKERFILE_CHECK" {
            continue;
        }
        let value = secret_value(&a.value);
        let name = words::secret_name(&a.key) && !l.secret_keys.contains(&a.key);
        let why = match (value, name) {
            (Some(what), _) => format!("its value looks like {what}"),
            (None, true) => "its name says it holds a secret".to_string(),
            (None, false) => continue,
        };
        let prefix = "--build-arg ";
        let file = Arc::new(SourceFile {
            name: "command line".into(),
            text: format!("{prefix}{}=…", a.key).into(),
        });
        let at = Located::new(&file, Span::new(prefix.len(), prefix.len() + a.key.len()));
        l.emit_at(
            "SecretInBuildArg",
            None,
            at,
            format!(
                "build argument `{}` is passed on the command line and {why}; build args are kept in \
                 the image's history: pass it with `--secret` and use `RUN --mount=type=secret`",
                a.key
            ),
        );
    }
}
