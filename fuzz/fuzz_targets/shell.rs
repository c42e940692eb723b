//! Docker's shell-word lexer on any input, with either escape character: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = |name: &str| (name.len() % 3 != 0).then(|| format!("v-{name}"));
    for escape in ['\\', '`'] {
        let _ = kiln::frontend::shell::expand_word(text, escape, &lookup);
        let _ = kiln::frontend::shell::expand_words(text, escape, &lookup);
    }
});
