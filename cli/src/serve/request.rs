//! The request side of OpenAI's wire format, free of the HTTP server: a body parsed into the fields
//! glint honours (malformed JSON and wrong-typed fields named by their JSON path), checked (what cannot
//! be honoured refused clearly), and the error it gets otherwise (OpenAI's error body and its status).
//! The handlers of routes.rs call [`chat_request`] and [`completion_request`]; the `server_request`
//! fuzz target (fuzz/) includes this file as it is and feeds them arbitrary bodies.

use glint::chat::Message;
use glint::engine::MAX_TOP_LOGPROBS;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// An error answer: OpenAI's body `{"error": {"message", "type", "param", "code"}}` and its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }
    /// 400 about one request field.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, message)
        }
    }
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            s if s < 500 => "invalid_request_error",
            503 => "unavailable_error",
            _ => "server_error",
        }
    }
    /// The body, also sent as the `data:` of a stream that fails after it started.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// Parse a request body as `T`: malformed JSON and fields of the wrong type are a 400 that names the
/// field (unknown fields are ignored; null counts as absent).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Data => {
                let msg = inner.to_string();
                // A missing field is reported at its parent; name the field itself.
                let missing = msg
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                    .map(str::to_string);
                let param = match missing {
                    Some(f) if path == "." => f,
                    Some(f) => format!("{path}.{f}"),
                    None => path,
                };
                ApiError::field(&param, format!("invalid value for '{param}': {msg}"))
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {inner}"),
            )
            .code("invalid_json"),
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
        .code("invalid_json")
    })?;
    Ok(v)
}

/// `"stop"`: one string or a list.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// The fields chat completions and completions share (each endpoint parses its own on top).
#[derive(Deserialize, Debug, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    pub best_of: Option<u64>,
    pub echo: Option<bool>,
    /// llama-server's: the answer's token ids in `choices[0].tokens` (not streamed).
    pub return_tokens: Option<bool>,
}

/// A message's content: text, or a list of parts of which only text parts are understood.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug)]
pub struct ChatFields {
    pub messages: Vec<ChatMessage>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
}

/// `"prompt"` of /v1/completions: a text, a list of one text, or token ids.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Deserialize, Debug)]
pub struct CompletionFields {
    pub prompt: Prompt,
    /// Legacy completions: how many alternatives per token (0 = the chosen token's alone).
    pub logprobs: Option<u64>,
}

impl ChatFields {
    /// The messages for the chat template: text parts joined, `developer` read as `system`.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::field(
                "messages",
                "'messages' is empty: at least one message is needed",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut t = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(x)) => t.push_str(x),
                                _ => {
                                    return Err(ApiError::field(
                                        &format!("messages[{i}].content[{j}]"),
                                        format!(
                                        "content parts of type '{}' are not supported (text only)",
                                        p.kind
                                    ),
                                    ))
                                }
                            }
                        }
                        t
                    }
                };
                let role = match m.role.as_str() {
                    "developer" => "system".to_string(),
                    "system" | "user" | "assistant" | "tool" => m.role.clone(),
                    other => {
                        return Err(ApiError::field(
                            &format!("messages[{i}].role"),
                            format!(
                            "unknown role '{other}' (system, developer, user, assistant or tool)"
                        ),
                        ))
                    }
                };
                Ok(Message { role, content })
            })
            .collect()
    }

    /// None, or Some(n alternatives) when `logprobs` is true.
    pub fn top_logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(ApiError::field(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs': true",
            )),
            (true, n) => check_top(n.unwrap_or(0), "top_logprobs").map(Some),
        }
    }
}

pub fn check_top(n: u64, param: &str) -> Result<usize, ApiError> {
    if n > MAX_TOP_LOGPROBS as u64 {
        return Err(ApiError::field(
            param,
            format!("'{param}' = {n}, expected 0 to {MAX_TOP_LOGPROBS}"),
        ));
    }
    Ok(n as usize)
}

impl Common {
    /// Refuse what cannot be honoured, clearly.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::field(
                "n",
                "only n = 1 is supported (one choice per request)",
            ));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(ApiError::field("best_of", "only best_of = 1 is supported"));
        }
        if self.echo == Some(true) {
            return Err(ApiError::field("echo", "echo is not supported"));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::field(
                    name,
                    format!(
                        "'{name}' is not supported; use 'repeat_penalty' (llama.cpp's \
                         repetition penalty, 1.0 = off)"
                    ),
                ));
            }
        }
        if self.max_tokens == Some(0) || self.max_completion_tokens == Some(0) {
            let p = if self.max_tokens == Some(0) {
                "max_tokens"
            } else {
                "max_completion_tokens"
            };
            return Err(ApiError::field(
                p,
                format!("'{p}' = 0, expected at least 1"),
            ));
        }
        Ok(())
    }

    pub fn stops(&self) -> Result<Vec<String>, ApiError> {
        let v = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if v.len() > 16 {
            return Err(ApiError::field(
                "stop",
                format!("{} stop strings, expected at most 16", v.len()),
            ));
        }
        Ok(v.into_iter().filter(|s| !s.is_empty()).collect())
    }

    /// max_completion_tokens, else max_tokens.
    pub fn max_tokens(&self) -> Option<usize> {
        self.max_completion_tokens
            .or(self.max_tokens)
            .map(|n| n.min(usize::MAX as u64) as usize)
    }

    /// The model's defaults, with each field the request gives put over them.
    pub fn sampling(
        &self,
        defaults: &glint::sampler::SamplingParams,
        seed: u64,
    ) -> glint::sampler::SamplingParams {
        let mut p = defaults.clone();
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(x) = self.top_p {
            p.top_p = x;
        }
        if let Some(k) = self.top_k {
            p.top_k = k as usize;
        }
        if let Some(x) = self.min_p {
            p.min_p = x;
        }
        if let Some(x) = self.repeat_penalty {
            p.repetition_penalty = x;
        }
        if let Some(n) = self.repeat_last_n {
            p.repeat_last_n = n as usize;
        }
        p.seed = self.seed.map_or(seed, |s| s as u64);
        p
    }
}

/// A chat completions body, checked: the messages for the chat template and what generation needs.
#[derive(Debug)]
pub struct ChatRequest {
    pub common: Common,
    pub messages: Vec<Message>,
    /// Alternatives per token when `logprobs` is true.
    pub top_logprobs: Option<usize>,
    pub stops: Vec<String>,
}

/// A /v1/completions body, checked: one prompt, as text or ids.
#[derive(Debug)]
pub struct CompletionRequest {
    pub common: Common,
    pub prompt: PromptInput,
    pub top_logprobs: Option<usize>,
    pub stops: Vec<String>,
}

/// The one prompt of a completions request.
#[derive(Debug)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

/// Parse and check a chat completions body; `check_model` judges its `model` field (404 when unknown)
/// after the fields parse and before the messages are read, the order the error cases are reported in.
pub fn chat_request(
    body: &[u8],
    check_model: impl FnOnce(Option<&str>) -> Result<(), ApiError>,
) -> Result<ChatRequest, ApiError> {
    let common: Common = parse(body)?;
    let fields: ChatFields = parse(body)?;
    common.check()?;
    check_model(common.model.as_deref())?;
    let messages = fields.messages()?;
    let top_logprobs = fields.top_logprobs()?;
    let stops = common.stops()?;
    Ok(ChatRequest {
        common,
        messages,
        top_logprobs,
        stops,
    })
}

/// Parse and check a /v1/completions body (`check_model` as for [`chat_request`]).
pub fn completion_request(
    body: &[u8],
    check_model: impl FnOnce(Option<&str>) -> Result<(), ApiError>,
) -> Result<CompletionRequest, ApiError> {
    let common: Common = parse(body)?;
    let fields: CompletionFields = parse(body)?;
    common.check()?;
    check_model(common.model.as_deref())?;
    let top_logprobs = fields
        .logprobs
        .map(|n| check_top(n, "logprobs"))
        .transpose()?;
    let prompt = match fields.prompt {
        Prompt::Ids(ids) => PromptInput::Ids(ids),
        Prompt::Text(t) => PromptInput::Text(t),
        Prompt::Texts(mut v) if v.len() == 1 => PromptInput::Text(v.remove(0)),
        Prompt::Texts(v) => {
            return Err(ApiError::field(
                "prompt",
                format!("{} prompts in one request; send one (n = 1)", v.len()),
            ))
        }
    };
    let stops = common.stops()?;
    Ok(CompletionRequest {
        common,
        prompt,
        top_logprobs,
        stops,
    })
}
