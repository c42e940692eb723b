//! Secret needles and log scrubbing on any input: the structured-secret parsers, the leak scanner and the
//! scrubber (whole and streamed in chunks) never panic, and a secret is never shown whole.
//! Input: the secret's value, a NUL, then the step output, cut into chunks at each 0x01 byte.
#![no_main]

use std::sync::Arc;

use kiln::secret::{LeakScanner, ScrubStream, Scrubber, SecretValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (secret, output) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let value = SecretValue::new(zeroize::Zeroizing::new(secret.to_vec()));
    let scanner = LeakScanner::new([("s", &value)]);
    let _ = scanner.scan(output);
    let _ = scanner.scan_reader(output);
    let scrubber = Arc::new(Scrubber::new([&value]));
    let whole = scrubber.scrub(output);
    let stream = ScrubStream::new(scrubber);
    let mut shown = Vec::new();
    for chunk in output.split(|&b| b == 1) {
        shown.extend(stream.push(chunk));
    }
    shown.extend(stream.finish());
    let needle = secret.trim_ascii();
    if needle.len() >= LeakScanner::MIN_LEN && !needle.contains(&b'*') {
        for text in [&whole, &shown] {
            assert!(!text.windows(needle.len()).any(|w| w == needle));
        }
    }
});
