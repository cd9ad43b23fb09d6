//! Tokenizer against transformers' goldens (tests/fixtures/tokenizer_golden_dev.json): ids, tokens,
//! decode round trips, per-token pieces, streaming, and errors.
//!
//! The GGUF rebuild (`Tokenizer::from_gguf_vocab`) needs the GGUF reader for its vocabulary: it is
//! checked against the same goldens in tests/gguf_tokenizer.rs.

use std::path::Path;

use glint::error::Error;
use glint::tokenizer::Tokenizer;
use serde_json::Value;

const TOKENIZER_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/qwen2.5-coder-0.5b-instruct/tokenizer.json"
);
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizer_golden_dev.json"
);

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(Path::new(TOKENIZER_JSON)).expect("load tokenizer.json")
}

fn cases() -> Vec<Value> {
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(GOLDEN).unwrap()).unwrap();
    golden["cases"].as_array().unwrap().clone()
}

fn ids_of(case: &Value) -> Vec<u32> {
    case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn text_of(case: &Value) -> String {
    let hex = case["text_utf8_hex"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// Every golden case: ids, tokens, decode (with and without special tokens), per-token pieces.
/// Returns how many cases were checked.
fn check_goldens(tok: &Tokenizer) -> usize {
    let cases = cases();
    for case in &cases {
        let text = text_of(case);
        let ids = ids_of(case);
        assert_eq!(tok.encode(&text).unwrap(), ids, "encode {text:?}");
        let tokens: Vec<String> = ids.iter().map(|&id| tok.id_to_token(id).unwrap()).collect();
        let golden_tokens: Vec<&str> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tokens, golden_tokens, "tokens of {text:?}");
        for (token, &id) in golden_tokens.iter().zip(&ids) {
            assert_eq!(tok.token_to_id(token), Some(id), "token_to_id({token:?})");
        }
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "decode skipping specials {text:?}"
        );
        for (&id, piece) in ids
            .iter()
            .zip(case["per_token_decoded"].as_array().unwrap())
        {
            assert_eq!(
                tok.decode(&[id], false).unwrap(),
                piece.as_str().unwrap(),
                "decode [{id}]"
            );
        }
    }
    cases.len()
}

#[test]
fn golden_ids_and_round_trips() {
    assert_eq!(check_goldens(&tokenizer()), 20);
}

#[test]
fn vocabulary_size_and_specials() {
    let tok = tokenizer();
    // This tokenizer.json (made from the GGUF) keeps the [PAD151665].. entries in its BPE vocabulary.
    assert_eq!(tok.n_defined(), 151_936);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(151_643));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(151_644));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(151_645));
    assert_eq!(tok.id_to_token(151_645).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.id_to_token(151_936), None);
    assert!(matches!(
        tok.decode(&[9707, 151_936], false),
        Err(Error::Tokenizer(_))
    ));
}

/// Push `ids` one by one; returns the pieces (the last one from `finish`).
fn stream_pieces(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = tok.stream();
    let mut pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    pieces.push(stream.finish().unwrap());
    pieces
}

#[test]
fn streaming_never_splits_characters() {
    let tok = tokenizer();
    let cases = cases();
    let mut multibyte = 0;
    for case in &cases {
        let ids = ids_of(case);
        let decoded = case["decoded"].as_str().unwrap();
        let pieces = stream_pieces(&tok, &ids);
        assert_eq!(pieces.concat(), decoded, "stream of {decoded:?}");
        if !decoded.contains('\u{FFFD}') {
            assert!(
                pieces.iter().all(|p| !p.contains('\u{FFFD}')),
                "U+FFFD in {pieces:?}"
            );
        }
        // Cases where some token holds part of a character (Chinese, emoji...).
        if case["per_token_decoded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains('\u{FFFD}'))
            && !decoded.contains('\u{FFFD}')
        {
            multibyte += 1;
        }
    }
    assert!(
        multibyte >= 3,
        "expected several cases with split characters, got {multibyte}"
    );

    // The Chinese and emoji strings explicitly.
    for text in ["你好，世界！今天天气很好。", "😀😃😄 👍🏽 🇺🇸🇯🇵 ❤️"]
    {
        let case = cases
            .iter()
            .find(|c| text_of(c) == text)
            .expect("golden case");
        let pieces = stream_pieces(&tok, &ids_of(case));
        assert_eq!(pieces.concat(), text);
        assert!(
            pieces.iter().all(|p| !p.contains('\u{FFFD}')),
            "U+FFFD in {pieces:?}"
        );
    }
}

#[test]
fn streaming_flushes_incomplete_bytes_and_resets() {
    let tok = tokenizer();
    let text = "👨\u{200d}👩 family";
    let ids = tok.encode(text).unwrap();
    // Cut the ids right after a token that ends inside a character.
    let cut = (1..=ids.len())
        .find(|&n| tok.decode(&ids[..n], false).unwrap().ends_with('\u{FFFD}'))
        .expect("a token that splits a character");
    let mut stream = tok.stream();
    let mut pieces: Vec<String> = ids[..cut]
        .iter()
        .map(|&id| stream.push(id).unwrap())
        .collect();
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    // finish() releases the held-back bytes, as decode() shows them.
    let tail = stream.finish().unwrap();
    assert!(tail.ends_with('\u{FFFD}'), "{tail:?}");
    pieces.push(tail);
    assert_eq!(pieces.concat(), tok.decode(&ids[..cut], false).unwrap());
    // After finish the decoder starts afresh.
    let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(pieces.concat() + &stream.finish().unwrap(), text);
}

#[test]
fn missing_file_names_the_path() {
    let path = Path::new("/nonexistent/dir/tokenizer.json");
    let err = Tokenizer::from_file(path).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path: p, .. } if p == path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/nonexistent/dir/tokenizer.json"),
        "{err}"
    );
}

#[test]
fn malformed_json_names_the_path() {
    let origin = Path::new("some/model/tokenizer.json");
    for json in [&b"{ not json"[..], b"{\"model\": 3}", b""] {
        let err = Tokenizer::from_bytes(json, origin).unwrap_err();
        assert!(
            matches!(&err, Error::Format { path, .. } if path == origin),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("some/model/tokenizer.json"),
            "{err}"
        );
    }
}

#[test]
fn gguf_vocab_errors() {
    let tokens: Vec<String> = ["a", "b", "ab"].iter().map(|s| s.to_string()).collect();
    let err =
        Tokenizer::from_gguf_vocab(&tokens, &[1, 1, 1], &["a b".into()], "falcon").unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer(m) if m.contains("tokenizer.ggml.pre")),
        "{err}"
    );
    let err = Tokenizer::from_gguf_vocab(&tokens, &[1, 1], &["a b".into()], "qwen2").unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer(m) if m.contains("token_type")),
        "{err}"
    );
    let err = Tokenizer::from_gguf_vocab(&tokens, &[1, 1, 1], &["ab".into()], "qwen2").unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer(m) if m.contains("merges[0]")),
        "{err}"
    );
    let err =
        Tokenizer::from_gguf_vocab(&tokens, &[1, 1, 1], &["a c".into()], "qwen2").unwrap_err();
    assert!(matches!(&err, Error::Tokenizer(_)), "{err}");
    let tok = Tokenizer::from_gguf_vocab(&tokens, &[1, 1, 1], &["a b".into()], "qwen2").unwrap();
    assert_eq!(tok.encode("ab").unwrap(), [2]);
    assert_eq!(tok.n_defined(), 3);
}
