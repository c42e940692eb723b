//! The Dockerfile syntax tree: instructions as written, with byte spans, before any variable is expanded.

use std::sync::Arc;

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
}

#[derive(Clone, Debug)]
pub struct Instruction {
    /// From the first character of the keyword to the end of the last continuation line (no newline).
    pub span: Span,
    /// The keyword as written (its case preserved) and where it is.
    pub keyword: Word,
    /// `--name[=value]` flags in the order written, before the arguments.
    pub flags: Vec<Flag>,
    pub kind: InstructionKind,
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
}

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
        }
    }
}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name == name)
    }
}
