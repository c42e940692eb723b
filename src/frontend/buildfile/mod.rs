//! The `.build` language's front end: the pest parser, tree and formatter (`syntax`), the type checker in
//! which a secret may only be mounted (`check`), and the evaluator that lowers targets to the IR (`lower`).

pub mod check;
pub mod lower;
pub mod syntax;
