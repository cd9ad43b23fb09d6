//! `glint serve`'s request bodies: arbitrary bytes through the server's own parsing and checking
//! (cli/src/serve/request.rs, included as it is), as a chat completions body and as a completions
//! body. Every body is accepted or refused with a 400 (404 for the one unknown model name) whose
//! OpenAI error body has a message; an accepted chat request has messages that the Qwen2.5 chat
//! template renders, at most 20 top logprobs and at most 16 non-empty stop strings, and its sampling
//! parameters and stop filter are built as the handler builds them.
#![no_main]

#[allow(dead_code)]
#[path = "../../cli/src/serve/request.rs"]
mod request;

use glint::sampler::SamplingParams;
use glint::stop::StopFilter;
use libfuzzer_sys::fuzz_target;
use request::{ApiError, Common};

/// The model name the fake server knows; "other-model" is unknown (404).
fn check_model(m: Option<&str>) -> Result<(), ApiError> {
    match m {
        Some("other-model") => Err(ApiError::new(
            http::StatusCode::NOT_FOUND,
            "the model 'other-model' does not exist",
        )),
        _ => Ok(()),
    }
}

fn check_refusal(e: &ApiError, body: &[u8]) {
    let status = e.status.as_u16();
    assert!(
        status == 400 || status == 404,
        "status {status} for {:?}",
        String::from_utf8_lossy(body)
    );
    let b = e.body();
    let msg = b["error"]["message"].as_str().expect("error.message");
    assert!(!msg.is_empty(), "an empty error message");
    assert!(b["error"]["type"].is_string(), "error.type");
    serde_json::to_string(&b).expect("the error body serialises");
}

fn check_common(c: &Common, stops: &[String], top: Option<usize>) {
    assert!(stops.len() <= 16 && stops.iter().all(|s| !s.is_empty()));
    assert!(top.is_none_or(|n| n <= glint::engine::MAX_TOP_LOGPROBS));
    assert!(c.max_tokens().is_none_or(|n| n >= 1));
    let p = c.sampling(&SamplingParams::default(), 1);
    if let Some(s) = c.seed {
        assert_eq!(p.seed, s as u64);
    }
    let _ = StopFilter::new(stops);
}

fuzz_target!(|data: &[u8]| {
    match request::chat_request(data, check_model) {
        Ok(r) => {
            assert!(!r.messages.is_empty());
            check_common(&r.common, &r.stops, r.top_logprobs);
            let t = &glint_fuzz::chat_templates()[0];
            let _ = t.render(&r.messages, true);
        }
        Err(e) => check_refusal(&e, data),
    }
    match request::completion_request(data, check_model) {
        Ok(r) => check_common(&r.common, &r.stops, r.top_logprobs),
        Err(e) => check_refusal(&e, data),
    }
});
