//! Any bytes as a Dockerfile: parsing (raw and typed), the AST dump and compile-only lowering must
//! return a value or a `Diagnostic`, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = kiln::diag::SourceFile::new("Dockerfile", text);
    if let Ok(raw) = kiln::frontend::dockerfile::syntax::raw::parse(file.clone()) {
        let _ = kiln::frontend::dockerfile::syntax::dump(&raw);
    }
    let opts = kiln::frontend::LowerOptions {
        lenient: true,
        ..Default::default()
    };
    if let Ok(compiled) = kiln::compile(kiln::Source::Dockerfile(file), &opts) {
        let graph = kiln::plan(&compiled.program);
        let _ = graph.render_json();
    }
});
