//! Chat templates rendered with arbitrary messages: the Qwen2.5 and SmolLM2 GGUFs' templates and the
//! Qwen2.5 tokenizer_config.json fixture's (compiled once). Byte 0 picks the template (% 3),
//! `add_generation_prompt` (bit 2) and how the rest is read (bit 3): as a `--messages` JSON file
//! (glint::chat::parse_messages), or as messages split by NUL, each "role\x01content" (a message
//! without \x01 is a user message). A render is `Ok` or `Err`, and every user message's content
//! appears verbatim in a rendered prompt (all three templates print it as it is).
#![no_main]

use std::path::Path;

use glint::chat::{parse_messages, Message};
use libfuzzer_sys::fuzz_target;

fn split_messages(text: &str) -> Vec<Message> {
    text.split('\0')
        .map(|m| match m.split_once('\u{1}') {
            Some((role, content)) => Message {
                role: role.into(),
                content: content.into(),
            },
            None => Message {
                role: "user".into(),
                content: m.into(),
            },
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let templates = glint_fuzz::chat_templates();
    let template = &templates[mode as usize % templates.len()];
    let add_generation_prompt = mode & 4 != 0;
    let text = String::from_utf8_lossy(rest);
    let messages = if mode & 8 != 0 {
        match parse_messages(&text, Path::new("messages.json")) {
            Ok(m) => m,
            Err(_) => return,
        }
    } else {
        split_messages(&text)
    };
    let Ok(prompt) = template.render(&messages, add_generation_prompt) else {
        return;
    };
    for m in messages.iter().filter(|m| m.role == "user") {
        assert!(
            prompt.contains(&m.content),
            "user content {:?} missing from {prompt:?}",
            m.content
        );
    }
});
