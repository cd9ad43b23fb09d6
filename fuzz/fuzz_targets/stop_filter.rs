//! The stop-string filter (glint::stop::StopFilter) against its specification (fuzz/src/lib.rs:
//! check_stop_filter): the input as text, split by NUL; the first part holds the stop strings
//! (separated by \x01), the others are the generated pieces in order. The filter never shows a stop
//! string or any text after one, reports the stop at the piece that completes it, and otherwise
//! shows everything.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let stops: Vec<String> = parts
        .next()
        .unwrap_or_default()
        .split('\u{1}')
        .map(str::to_owned)
        .collect();
    let pieces: Vec<String> = parts.map(str::to_owned).collect();
    glint_fuzz::check_stop_filter(&stops, &pieces);
});
