//! A GGUF's tokenizer metadata (`tokenizer.ggml.tokens`, `.token_type`, `.merges`, `.pre`, `.model`)
//! rebuilt into a tokenizer, and its chat template: construction gives `Ok` or `Err`; a tokenizer
//! built encodes text into ids it defines, and decodes any of its ids; a template renders.
#![no_main]

use std::path::Path;

use glint::chat::Message;
use glint::gguf::Gguf;
use glint::gguf_loader::GgufModel;
use libfuzzer_sys::fuzz_target;

/// Texts encoded with every tokenizer built: ASCII, multi-byte characters, special-token text.
const TEXTS: [&str; 3] = [
    "Hello, world! 123",
    "naïve 世界 🙂\n\n",
    "<|im_start|>user\nhi<|im_end|>",
];

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data, Path::new("fuzz.gguf")) else {
        return;
    };
    let Ok(model) = GgufModel::from_gguf(g) else {
        return;
    };
    let tok = model.tokenizer().ok().flatten();
    if let Some(t) = &tok {
        let n = t.n_defined();
        for text in TEXTS {
            if let Ok(ids) = t.encode(text) {
                assert!(ids.iter().all(|&id| (id as usize) < n), "{ids:?} vs {n}");
                let _ = t.decode(&ids, false);
                let _ = t.decode(&ids, true);
            }
        }
        let all: Vec<u32> = (0..n.min(4096) as u32).collect();
        t.decode(&all, false).expect("defined ids decode");
        let mut stream = t.stream();
        for &id in all.iter().take(64) {
            stream.push(id).expect("defined ids stream");
        }
        let _ = stream.finish();
    }
    if let Ok(Some(template)) = model.chat_template(tok.as_ref()) {
        let messages = [
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
        ];
        let _ = template.render(&messages, true);
    }
});
