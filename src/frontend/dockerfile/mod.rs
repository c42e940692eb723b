//! The Dockerfile front end: text to AST (`syntax`), the structural rules lowering relies on (`check`),
//! BuildKit's build checks and kiln's secret checks (`lints`), and lowering to the IR (`lower`).

pub mod check;
pub mod lints;
pub mod lower;
pub mod syntax;
