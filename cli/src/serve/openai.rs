//! OpenAI's wire format, the answer side: the error body as an HTTP response, usage, and the logprobs
//! objects of chat completions and completions (requests: request.rs).

use super::request::ApiError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use glint::engine::Logprobs;
use glint::scheduler::Usage;
use glint::tokenizer::Tokenizer;
use serde_json::{json, Value};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// One token's bytes and its text (invalid UTF-8, a piece of a character, shown as U+FFFD).
fn piece(tok: Option<&Tokenizer>, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.and_then(|t| t.token_bytes(id).ok()).unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// A chat `logprobs.content` entry.
pub fn chat_logprob(tok: Option<&Tokenizer>, id: u32, lp: &Logprobs) -> Value {
    let (token, bytes) = piece(tok, id);
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|&(i, l)| {
            let (t, b) = piece(tok, i);
            json!({"token": t, "logprob": l, "bytes": b})
        })
        .collect();
    json!({"token": token, "logprob": lp.chosen, "bytes": bytes, "top_logprobs": top})
}

/// Legacy completions logprobs of a run of tokens, `text_offset` counted from `offset0`.
pub fn completion_logprobs(
    tok: Option<&Tokenizer>,
    entries: &[(u32, Logprobs)],
    offset0: usize,
) -> Value {
    let mut tokens = vec![];
    let mut lps = vec![];
    let mut tops = vec![];
    let mut offsets = vec![];
    let mut offset = offset0;
    for (id, lp) in entries {
        let (t, _) = piece(tok, *id);
        offsets.push(offset);
        offset += t.len();
        tokens.push(t);
        lps.push(lp.chosen);
        // Keyed by text: where two alternatives read alike, the likelier one is kept.
        let mut top = serde_json::Map::new();
        for &(i, l) in &lp.top {
            top.entry(piece(tok, i).0).or_insert(json!(l));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}
