//! Text through the real Qwen2.5 tokenizer, rebuilt once from the GGUF's `tokenizer.ggml.*` metadata
//! (models/, scripts/fetch-model.sh): any text encodes to ids the tokenizer defines, and decodes back
//! to the same text up to NFC (the tokenizer normalizes its input to NFC, as transformers' does). The
//! input read as little-endian u32 ids decodes when all are defined, and is an error otherwise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenizers::normalizers::NFC;
use tokenizers::{NormalizedString, Normalizer};

fn nfc(s: &str) -> String {
    let mut n = NormalizedString::from(s);
    NFC.normalize(&mut n).expect("NFC");
    n.get().to_owned()
}

fuzz_target!(|data: &[u8]| {
    let tok = glint_fuzz::qwen_tokenizer();
    let n = tok.n_defined();
    if let Ok(text) = std::str::from_utf8(data) {
        let ids = tok.encode(text).expect("any text encodes");
        assert!(ids.iter().all(|&id| (id as usize) < n), "{ids:?}");
        let back = tok.decode(&ids, false).expect("encoded ids decode");
        assert_eq!(nfc(&back), nfc(text), "ids {ids:?}");
        let _ = tok.decode(&ids, true).expect("encoded ids decode");
    }
    let ids: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % (n as u32 + 64))
        .collect();
    let all_defined = ids.iter().all(|&id| (id as usize) < n);
    assert_eq!(tok.decode(&ids, false).is_ok(), all_defined, "{ids:?}");
});
