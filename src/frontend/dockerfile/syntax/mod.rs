//! Dockerfile syntax: BuildKit's raw parse tree and its dump, the typed AST built from it, parser
//! directives, heredocs, exec-form JSON, Go-style quoting, and the shell-word lexer.

pub mod ast;
pub mod directive;
pub mod heredoc;
pub mod json;
pub mod parse;
pub use crate::frontend::quote;
pub mod raw;

pub use parse::parse;
pub use raw::dump;
