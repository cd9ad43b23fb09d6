//! Chat templates against transformers' `apply_chat_template` (tests/fixtures/golden_real_dev.json),
//! the Jinja features HF templates use, tokenizer_config.json variants, and `--messages` files.

use std::path::{Path, PathBuf};

use glint::chat::{load_messages, ChatTemplate, Message};
use glint::error::Error;
use glint::tokenizer::Tokenizer;
use serde_json::Value;

const MODEL_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/qwen2.5-coder-0.5b-instruct"
);
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/golden_real_dev.json"
);

const QWEN2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

/// A scratch file under the temp dir, unique to this process and test.
fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glint-chat-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name.split('-').next_back().unwrap());
    std::fs::write(&path, content).unwrap();
    path
}

fn render(source: &str, messages: &[Message]) -> Result<String, Error> {
    ChatTemplate::new(source, None, None)?.render(messages, false)
}

#[test]
fn qwen25_golden_prompts() {
    let config = Path::new(MODEL_DIR).join("tokenizer_config.json");
    let template = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .expect("chat_template");
    let tok = Tokenizer::from_file(&Path::new(MODEL_DIR).join("tokenizer.json")).unwrap();
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(GOLDEN).unwrap()).unwrap();
    let prompts = golden["prompts"].as_array().unwrap();
    for prompt in prompts {
        let name = prompt["name"].as_str().unwrap();
        let messages: Vec<Message> = serde_json::from_value(prompt["messages"].clone()).unwrap();
        let rendered = template.render(&messages, true).unwrap();
        assert_eq!(rendered, prompt["prompt_text"].as_str().unwrap(), "{name}");
        let ids: Vec<u32> = prompt["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(&rendered).unwrap(), ids, "{name}");
    }
    assert_eq!(prompts.len(), 6);
}

#[test]
fn qwen25_without_generation_prompt() {
    let config = Path::new(MODEL_DIR).join("tokenizer_config.json");
    let template = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap();
    let out = template
        .render(
            &[
                msg("system", "S"),
                msg("user", "Hi"),
                msg("assistant", "Hello"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n");
}

#[test]
fn qwen2_chatml_template() {
    let template = ChatTemplate::new(QWEN2_TEMPLATE, None, Some("<|im_end|>".into())).unwrap();
    assert_eq!(
        template.render(&[msg("user", "Hi")], true).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        template
            .render(&[msg("system", "Be brief."), msg("user", "Hi")], false)
            .unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn trim_and_lstrip_blocks() {
    let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
    assert_eq!(
        render(source, &[msg("user", "a"), msg("user", "b")]).unwrap(),
        "[a]\n[b]\n"
    );
}

#[test]
fn python_string_methods() {
    let source = "{{ messages[0].content.strip() }}|{{ messages[0].content.strip().startswith('He') }}|{{ messages[0].content.split(',')[1] }}|{{ messages[0].content.lstrip().upper() }}";
    assert_eq!(
        render(source, &[msg("user", "  Hello, world ")]).unwrap(),
        "Hello, world|True| world |HELLO, WORLD "
    );
}

#[test]
fn special_tokens_and_undefined_variables() {
    let source = "{{ bos_token }}{% if tools %}T{% endif %}{% if tools is none %}N{% endif %}{{ eos_token }}";
    let template = ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into())).unwrap();
    assert_eq!(template.render(&[], false).unwrap(), "<s>N</s>");
    // Tokens that are not set are undefined, which prints as nothing.
    assert_eq!(render(source, &[]).unwrap(), "N");
}

#[test]
fn raise_exception_is_a_template_error() {
    let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok";
    assert_eq!(render(source, &[msg("user", "x")]).unwrap(), "ok");
    let err = render(source, &[msg("assistant", "x")]).unwrap_err();
    assert!(
        matches!(&err, Error::Template(m) if m.contains("Conversation must start with a user message")),
        "{err}"
    );
}

#[test]
fn tojson_writes_like_python_json_dumps() {
    let source = r#"{{ {"a": 1, "b": [1.5, "é\n", 1e-5, 2.0], "c": none, "d": true} | tojson }}"#;
    assert_eq!(
        render(source, &[]).unwrap(),
        r#"{"a": 1, "b": [1.5, "é\n", 1e-05, 2.0], "c": null, "d": true}"#
    );
    let source = r#"{{ {"a": 1, "b": [1, {}], "c": []} | tojson(indent=2) }}"#;
    assert_eq!(
        render(source, &[]).unwrap(),
        "{\n  \"a\": 1,\n  \"b\": [\n    1,\n    {}\n  ],\n  \"c\": []\n}"
    );
    assert_eq!(
        render("{{ 'é😀<>' | tojson(ensure_ascii=true) }}", &[]).unwrap(),
        r#""\u00e9\ud83d\ude00<>""#
    );
    assert!(matches!(
        render("{{ 1 | tojson(bogus=1) }}", &[]),
        Err(Error::Template(_))
    ));
}

#[test]
fn strftime_now_renders_a_date() {
    let out = render("{{ strftime_now('%Y-%m-%d') }}", &[]).unwrap();
    assert_eq!(out.len(), 10, "{out}");
    assert!(out.starts_with("20"), "{out}");
    assert!(matches!(
        render("{{ strftime_now('%Q') }}", &[]),
        Err(Error::Template(_))
    ));
}

#[test]
fn syntax_error_is_a_template_error() {
    for source in [
        "{% for m in messages %}{{ m.content }}",
        "{{ messages[0] ",
        "{% if %}x{% endif %}",
    ] {
        let err = ChatTemplate::new(source, None, None).unwrap_err();
        assert!(matches!(err, Error::Template(_)), "{source}: {err:?}");
    }
}

#[test]
fn tokenizer_config_variants() {
    // List form with a "default" entry and {content} special tokens.
    let config = serde_json::json!({
        "bos_token": {"content": "<s>", "lstrip": false},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
        ]
    });
    let path = temp_file("list-tokenizer_config.json", &config.to_string());
    let template = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert_eq!(
        template.render(&[msg("user", "x")], false).unwrap(),
        "<s>x</s>"
    );

    // No template at all.
    let path = temp_file(
        "none-tokenizer_config.json",
        r#"{"bos_token": null, "eos_token": "</s>"}"#,
    );
    assert!(ChatTemplate::from_tokenizer_config(&path)
        .unwrap()
        .is_none());

    // No "chat_template" key, but a chat_template.jinja beside the file (transformers >= 4.43).
    let path = temp_file("jinja-tokenizer_config.json", r#"{"eos_token": "</s>"}"#);
    std::fs::write(
        path.with_file_name("chat_template.jinja"),
        "[{{ messages[0].content }}]{{ eos_token }}",
    )
    .unwrap();
    let template = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert_eq!(
        template.render(&[msg("user", "x")], false).unwrap(),
        "[x]</s>"
    );

    // Errors name the file.
    let path = temp_file(
        "syntax-tokenizer_config.json",
        r#"{"chat_template": "{% if %}"}"#,
    );
    let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Template(m) if m.contains(path.to_str().unwrap())),
        "{err:?}"
    );
    let bad = [
        (
            "nodefault-tokenizer_config.json",
            r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#,
        ),
        ("badtype-tokenizer_config.json", r#"{"chat_template": 3}"#),
        (
            "badtoken-tokenizer_config.json",
            r#"{"chat_template": "x", "eos_token": 7}"#,
        ),
        ("notjson-tokenizer_config.json", "{"),
        ("array-tokenizer_config.json", "[]"),
    ];
    for (name, content) in bad {
        let path = temp_file(name, content);
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
        assert!(
            matches!(&err, Error::Format { path: p, .. } if *p == path),
            "{name}: {err:?}"
        );
    }
    let missing = Path::new("/nonexistent/tokenizer_config.json");
    assert!(
        matches!(ChatTemplate::from_tokenizer_config(missing), Err(Error::Io { path, .. }) if path == missing)
    );
}

#[test]
fn messages_file() {
    let path = temp_file(
        "ok-messages.json",
        r#"[{"role": "system", "content": "S"}, {"role": "user", "content": "Hi", "name": "bob"}]"#,
    );
    assert_eq!(
        load_messages(&path).unwrap(),
        [msg("system", "S"), msg("user", "Hi")]
    );

    let path = temp_file(
        "badentry-messages.json",
        r#"[{"role": "user", "content": "Hi"}, {"role": "user"}]"#,
    );
    let err = load_messages(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Format { path: p, msg } if *p == path && msg.contains("message 1")),
        "{err:?}"
    );
    assert!(err.to_string().contains("badentry-messages.json"), "{err}");

    for (name, content) in [
        ("object-messages.json", r#"{"role": "user"}"#),
        ("notjson-messages.json", "["),
    ] {
        let path = temp_file(name, content);
        assert!(
            matches!(load_messages(&path), Err(Error::Format { path: p, .. }) if p == path),
            "{name}"
        );
    }
    let missing = Path::new("/nonexistent/messages.json");
    assert!(matches!(load_messages(missing), Err(Error::Io { path, .. }) if path == missing));
}
