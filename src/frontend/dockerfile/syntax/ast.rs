//! The Dockerfile syntax tree: instructions as written, with byte spans, before any variable is expanded.

use std::sync::Arc;

use super::raw;
use crate::diag::{SourceFile, Span};

/// A parsed Dockerfile. Words are kept raw (quotes and `$VAR` intact) because expansion depends on
/// ARG/ENV scope, which is the lowering stage's business.
#[derive(Clone, Debug)]
pub struct Dockerfile {
    pub file: Arc<SourceFile>,
    /// Parser directives (`# syntax=`, `# escape=`, `# check=`), lower-cased keys.
    pub directives: Vec<(String, String)>,
    /// The escape character in effect (`\` unless `# escape=` says otherwise).
    pub escape: char,
    pub instructions: Vec<Instruction>,
    /// Non-fatal findings of the parser (empty continuation lines).
    pub warnings: Vec<raw::Warning>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// From the first character of the keyword to the end of the instruction's last line (no
    /// newline): continuation lines, comment and blank lines inside them, and heredoc bodies with
    /// their terminator line are included.
    pub span: Span,
    /// The keyword as written (its case preserved) and where it is.
    pub keyword: Word,
    /// `--name[=value]` flags in the order written, before the arguments.
    pub flags: Vec<Flag>,
    pub kind: InstructionKind,
    /// Here-documents this instruction opens (`RUN <<EOF`, `COPY <<A <<B /dst/`), in order. Their
    /// `<<` words stay in the arguments as written; for ONBUILD they sit on the nested instruction.
    pub heredocs: Vec<Heredoc>,
}

/// A here-document: `<<[-]NAME` in the instruction line, then body lines up to a line holding only
/// `NAME` (after leading tabs, with `<<-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter with quotes removed, and the span of the `<<NAME` word.
    pub name: Word,
    /// The file descriptor written before `<<` (`3<<EOF`); 0 when absent.
    pub fd: u64,
    /// False when the delimiter was (partly) quoted (`<<'EOF'`, `<<"EOF"`): the body is literal.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from each body line when the body is used.
    pub chomp: bool,
    /// The raw body (leading tabs kept even with `<<-`; see [`Heredoc::text`]) and its span.
    pub body: Word,
}

impl Heredoc {
    /// The body as it is used: with `<<-`, leading tabs removed from every line.
    pub fn text(&self) -> String {
        if self.chomp {
            super::heredoc::chomp(&self.body.text)
        } else {
            self.body.text.clone()
        }
    }
}

/// A raw word: its text exactly as in the source (after line continuations are joined), and its span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    /// `None` for a bare `--flag`.
    pub value: Option<String>,
    /// The whole `--name=value` text.
    pub span: Span,
    /// Only the value part (empty span right after `=` when the value is empty).
    pub value_span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Word,
    /// Raw value text with quotes intact; `None` for `ARG name` without a default.
    pub value: Option<Word>,
}

/// Shell form keeps the joined text for the shell; exec form is the decoded JSON array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Shell(Word),
    Exec { args: Vec<String>, span: Span },
}

impl Command {
    pub fn span(&self) -> Span {
        match self {
            Command::Shell(w) => w.span,
            Command::Exec { span, .. } => *span,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstructionKind {
    From {
        image: Word,
        /// The name after `AS`.
        alias: Option<Word>,
    },
    /// One or more `name[=default]` declarations.
    Arg(Vec<KeyValue>),
    /// `ENV k=v k2=v2` or the legacy `ENV k v` (then one pair, the value being the rest of the line).
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Workdir(Word),
    User(Word),
    Run(Command),
    Cmd(Command),
    Entrypoint(Command),
    /// `COPY src... dest` (also the JSON form `COPY ["src", "dest"]`); at least one source.
    Copy {
        sources: Vec<Word>,
        dest: Word,
    },
    /// `ADD src... dest`, the same shape as COPY (its extra flags are in `Instruction::flags`).
    Add {
        sources: Vec<Word>,
        dest: Word,
    },
    /// `ONBUILD <instruction>`: the trigger, parsed like a top-level instruction (never FROM,
    /// MAINTAINER or ONBUILD).
    Onbuild(Box<Instruction>),
    /// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval=...] CMD ...`.
    Healthcheck(Healthcheck),
    /// `SHELL ["executable", "arg", ...]` (JSON form only).
    Shell {
        args: Vec<String>,
        span: Span,
    },
    StopSignal(Word),
    /// `EXPOSE 80/tcp 443` (each word raw; ports are checked after expansion).
    Expose(Vec<Word>),
    /// `VOLUME ["/a", "/b"]` or `VOLUME /a /b`.
    Volume(Vec<Word>),
    Maintainer(Word),
}

/// What a HEALTHCHECK does. Its flags (`--interval`, `--timeout`, `--start-period`,
/// `--start-interval`, `--retries`) stay in `Instruction::flags`, raw, for lowering to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check. The span is the `NONE` word.
    None(Span),
    /// `HEALTHCHECK CMD ...`: the check command (shell or exec form).
    Cmd(Command),
}

/// The flags HEALTHCHECK accepts.
pub const HEALTHCHECK_FLAGS: [&str; 5] = [
    "interval",
    "timeout",
    "start-period",
    "start-interval",
    "retries",
];

impl InstructionKind {
    /// The canonical upper-case name, as BuildKit prints it.
    pub fn name(&self) -> &'static str {
        match self {
            InstructionKind::From { .. } => "FROM",
            InstructionKind::Arg(_) => "ARG",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Workdir(_) => "WORKDIR",
            InstructionKind::User(_) => "USER",
            InstructionKind::Run(_) => "RUN",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Entrypoint(_) => "ENTRYPOINT",
            InstructionKind::Copy { .. } => "COPY",
            InstructionKind::Add { .. } => "ADD",
            InstructionKind::Onbuild(_) => "ONBUILD",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::Shell { .. } => "SHELL",
            InstructionKind::StopSignal(_) => "STOPSIGNAL",
            InstructionKind::Expose(_) => "EXPOSE",
            InstructionKind::Volume(_) => "VOLUME",
            InstructionKind::Maintainer(_) => "MAINTAINER",
        }
    }
}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    /// The script a shell-form RUN hands its shell, heredocs included, as BuildKit builds it: a RUN that
    /// is only `<<EOF` runs the heredoc's body; otherwise the bodies follow the command text for the shell
    /// to read.
    pub fn shell_script(&self, command: &Word) -> String {
        if self.heredocs.is_empty() {
            return command.text.clone();
        }
        let line = command.text.trim();
        let only = self.heredocs.len() == 1
            && line.starts_with("<<")
            && !line.contains(char::is_whitespace);
        if only {
            return self.heredocs[0].text();
        }
        let mut text = command.text.clone();
        for h in &self.heredocs {
            text.push('\n');
            text.push_str(&h.body.text);
            text.push_str(&h.name.text);
        }
        text
    }

    /// The instruction's source text on one line (continuations joined, comments dropped).
    pub fn text(&self, file: &SourceFile) -> String {
        let text = file.text.get(self.span.start..self.span.end).unwrap_or("");
        let mut one_line = String::with_capacity(text.len());
        for l in text
            .lines()
            .map(|l| l.trim().trim_end_matches('\\').trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            if !one_line.is_empty() {
                one_line.push(' ');
            }
            one_line.push_str(l);
        }
        one_line
    }
}

pub use crate::frontend::image::builtin_arg;
