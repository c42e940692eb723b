//! Reading a Dockerfile: a path, or `-` for stdin.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::diag::{Diagnostic, Result, SourceFile};

/// Reads the Dockerfile at `path` (`-`: standard input) into a `SourceFile` named by the path.
pub fn read_dockerfile(path: &Path) -> Result<Arc<SourceFile>> {
    let text = if path == Path::new("-") {
        crate::inputs::taint();
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        crate::inputs::file(path);
        std::fs::read_to_string(path)
    }
    .map_err(|e| {
        Diagnostic::input(format!("cannot read Dockerfile {}: {e}", path.display()))
            .help("name it with `-f PATH`, or put a `Dockerfile` in the context directory")
    })?;
    Ok(SourceFile::new(path.display().to_string(), text))
}
