//! Any bytes as a `.build` file: parsing and type checking must return a value or a `Diagnostic`, never
//! panic; and whatever parses must format to text that parses again and formats to itself
//! (`fmt(parse(fmt(x))) == fmt(x)`).
#![no_main]

use kiln::diag::SourceFile;
use kiln::frontend::buildfile::syntax::{fmt, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(module) = parse(&SourceFile::new("fuzz.build", text)) else {
        return;
    };
    // Imports are not loaded here, so a file with one stops at "import not loaded"; that is fine.
    let _ = kiln::frontend::buildfile::check::check(&module, &[]);
    let once = fmt::module(&module);
    let again = match parse(&SourceFile::new("fuzz.build", once.as_str())) {
        Ok(m) => m,
        Err(d) => panic!("the formatted text does not parse: {d}\n--- formatted\n{once}"),
    };
    let twice = fmt::module(&again);
    assert_eq!(once, twice, "formatting is not idempotent");
});
