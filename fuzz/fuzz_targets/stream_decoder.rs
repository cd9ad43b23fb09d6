//! Generated ids streamed through glint::tokenizer::StreamDecoder (the real Qwen2.5 tokenizer from
//! the GGUF) and then the stop-string filter, as `glint run` streams text. Input: byte 0 is the
//! number of stop strings (% 4), then two bytes per stop (start and length in characters of the
//! decoded text, so that stops do occur), then little-endian u32 ids: with the top bit set, a
//! single-byte token (id & 0xff: the pieces of multi-byte characters), else id % (vocab + 8), so
//! that some ids are undefined. The streamed pieces are at every step a prefix of the text of all
//! ids (a piece never ends inside a character), together they are exactly that text, an undefined id
//! is an error, and the stop filter over the pieces keeps its promises (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tok = glint_fuzz::qwen_tokenizer();
    let n = tok.n_defined() as u32;
    let Some((&n_stops, rest)) = data.split_first() else {
        return;
    };
    let n_stops = (n_stops % 4) as usize;
    if rest.len() < 2 * n_stops {
        return;
    }
    let (stop_spec, id_bytes) = rest.split_at(2 * n_stops);
    let mut ids = Vec::new();
    let mut undefined = None;
    for c in id_bytes.chunks_exact(4) {
        let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let id = if v & 0x8000_0000 != 0 {
            v & 0xff
        } else {
            v % (n + 8)
        };
        if id >= n {
            undefined = Some(id);
            break;
        }
        ids.push(id);
    }
    let full = tok.decode(&ids, false).expect("defined ids decode");

    let mut stream = tok.stream();
    let mut pieces = Vec::new();
    let mut shown = String::new();
    for &id in &ids {
        let piece = stream.push(id).expect("defined ids stream");
        shown.push_str(&piece);
        assert!(
            full.starts_with(&shown),
            "streamed {shown:?} is not a prefix of {full:?} (ids {ids:?})"
        );
        pieces.push(piece);
    }
    let last = stream.finish().expect("finish");
    shown.push_str(&last);
    pieces.push(last);
    assert_eq!(shown, full, "ids {ids:?}");
    if let Some(bad) = undefined {
        assert!(stream.push(bad).is_err(), "undefined id {bad} streamed");
    }

    let chars: Vec<char> = full.chars().collect();
    if chars.is_empty() {
        return;
    }
    let stops: Vec<String> = stop_spec
        .chunks_exact(2)
        .map(|s| {
            let start = s[0] as usize % chars.len();
            let len = 1 + s[1] as usize % 6;
            chars[start..(start + len).min(chars.len())]
                .iter()
                .collect()
        })
        .collect();
    glint_fuzz::check_stop_filter(&stops, &pieces);
});
