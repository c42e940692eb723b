//! Dockerfile syntax: the raw AST, the parser that builds it, and the shell-word lexer.

pub mod ast;
pub mod parse;
pub mod shell;

pub use parse::parse;
