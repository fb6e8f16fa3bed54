//! Generation events written as OpenAI's responses: whole (`chat.completion`,
//! `text_completion`) or as the chunks of a stream (`chat.completion.chunk`), with
//! reasoning, tool calls, log-probabilities and usage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::output::{parse_with, OutputParser, Piece, ToolCall};
use super::state::App;
use crate::generation::{Completion, FinishReason};
use crate::sampling::TokenLogprob;

/// What kind of reply.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A chat message. `in_reasoning`: the prompt opened a `<think>` block; `tools`:
    /// tool calls are parsed out of the text; `tool_call`: the prompt ends with the opening
    /// of a forced tool call, `<tool_call>` and this text
    /// ([`ForcedCall`](super::output::ForcedCall)), which the reply continues.
    Chat {
        in_reasoning: bool,
        tools: bool,
        tool_call: Option<String>,
    },
    /// A text completion; `echo`: the prompt's text, written first.
    Text { echo: Option<String> },
}

impl Kind {
    /// A new parser of the reply's text.
    fn parser(&self) -> OutputParser {
        match self {
            Kind::Chat {
                tool_call: Some(body),
                ..
            } => OutputParser::in_tool_call(body),
            Kind::Chat {
                in_reasoning,
                tools,
                ..
            } => OutputParser::new(*in_reasoning, *tools),
            Kind::Text { .. } => OutputParser::new(false, false),
        }
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub(crate) struct ReplySpec {
    pub kind: Kind,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: Option<usize>,
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A fresh id: `prefix` and 24 hex digits.
pub(crate) fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = xxhash_rust::xxh3::xxh3_128(&[t.to_le_bytes(), u128::from(n).to_le_bytes()].concat());
    format!("{prefix}{:024x}", h & ((1u128 << 96) - 1))
}

impl ReplySpec {
    pub fn new(
        app: &App,
        kind: Kind,
        stream: bool,
        include_usage: bool,
        logprobs: Option<usize>,
    ) -> Self {
        let prefix = match kind {
            Kind::Chat { .. } => "chatcmpl-",
            Kind::Text { .. } => "cmpl-",
        };
        ReplySpec {
            kind,
            stream,
            include_usage,
            logprobs,
            id: new_id(prefix),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: app.model_id.clone(),
        }
    }
}

/// A log-probability as JSON can carry it (OpenAI writes -9999 for "impossible").
fn lp(x: f32) -> f64 {
    if x.is_finite() {
        f64::from(x)
    } else {
        -9999.0
    }
}

fn finish_reason(reason: &FinishReason, tool_calls: bool) -> &'static str {
    if tool_calls {
        return "tool_calls";
    }
    match reason {
        FinishReason::MaxTokens | FinishReason::ContextFull => "length",
        _ => "stop",
    }
}

fn usage(c: &Completion) -> Value {
    let s = &c.stats;
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": c.tokens.len(),
        "total_tokens": s.prompt_tokens + c.tokens.len(),
        "prompt_tokens_details": {"cached_tokens": s.cached_prompt_tokens},
    })
}

fn tool_call_json(call: &ToolCall, index: Option<usize>) -> Value {
    let mut v = json!({
        "id": new_id("call_"),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    });
    if let (Some(i), Some(obj)) = (index, v.as_object_mut()) {
        obj.insert("index".into(), json!(i));
    }
    v
}

/// Turns a request's events into its answer.
pub(crate) struct Reply {
    app: Arc<App>,
    pub spec: ReplySpec,
    parser: OutputParser,
    tools_sent: usize,
    /// Chat: `logprobs.content` entries; text: per-token arrays.
    chat_logprobs: Vec<Value>,
    text_tokens: Vec<String>,
    text_logprobs: Vec<f64>,
    text_top: Vec<Value>,
    text_offsets: Vec<usize>,
    offset: usize,
}

impl Reply {
    pub fn new(app: Arc<App>, spec: ReplySpec) -> Self {
        let parser = spec.kind.parser();
        let offset = match &spec.kind {
            Kind::Text { echo: Some(e) } => e.len(),
            _ => 0,
        };
        Reply {
            app,
            spec,
            parser,
            tools_sent: 0,
            chat_logprobs: Vec::new(),
            text_tokens: Vec::new(),
            text_logprobs: Vec::new(),
            text_top: Vec::new(),
            text_offsets: Vec::new(),
            offset,
        }
    }

    fn token_text(&self, id: u32) -> String {
        self.app.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// Records a token's log-probabilities; returns the chunk's `logprobs` value.
    fn logprobs(&mut self, id: u32, logprob: Option<f32>, top: &[TokenLogprob]) -> Value {
        let (Some(_), Some(l)) = (self.spec.logprobs, logprob) else {
            return Value::Null;
        };
        let token = self.token_text(id);
        match self.spec.kind {
            Kind::Chat { .. } => {
                let entry =
                    |t: &str, l: f32| json!({"token": t, "logprob": lp(l), "bytes": t.as_bytes()});
                let mut e = entry(&token, l);
                let alts: Vec<Value> = top
                    .iter()
                    .map(|a| entry(&self.token_text(a.id), a.logprob))
                    .collect();
                if let Some(obj) = e.as_object_mut() {
                    obj.insert("top_logprobs".into(), Value::Array(alts));
                }
                self.chat_logprobs.push(e.clone());
                json!({"content": [e]})
            }
            Kind::Text { .. } => {
                let mut alts = serde_json::Map::new();
                for a in top {
                    alts.entry(self.token_text(a.id))
                        .or_insert(json!(lp(a.logprob)));
                }
                let chunk = json!({
                    "tokens": [token],
                    "token_logprobs": [lp(l)],
                    "top_logprobs": [alts],
                    "text_offset": [self.offset],
                });
                self.text_offsets.push(self.offset);
                self.offset += token.len();
                self.text_tokens.push(token);
                self.text_logprobs.push(lp(l));
                self.text_top.push(Value::Object(alts));
                chunk
            }
        }
    }

    fn chunk(&self, choice: Value) -> Value {
        let object = match self.spec.kind {
            Kind::Chat { .. } => "chat.completion.chunk",
            Kind::Text { .. } => "text_completion",
        };
        json!({
            "id": self.spec.id,
            "object": object,
            "created": self.spec.created,
            "model": self.spec.model,
            "choices": [choice],
        })
    }

    /// The chunks that open a stream.
    pub fn stream_start(&mut self) -> Vec<Value> {
        match &self.spec.kind {
            Kind::Chat { .. } => vec![self.chunk(json!({
                "index": 0, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null,
            }))],
            Kind::Text { echo: Some(e) } => {
                let e = e.clone();
                vec![self
                    .chunk(json!({"index": 0, "text": e, "logprobs": null, "finish_reason": null}))]
            }
            Kind::Text { echo: None } => Vec::new(),
        }
    }

    /// The delta of a chat chunk for pieces of the reply (`None` when there is nothing).
    fn delta(&mut self, pieces: Vec<Piece>) -> Option<Value> {
        let mut content = String::new();
        let mut reasoning = String::new();
        let mut calls = Vec::new();
        for p in pieces {
            match p {
                Piece::Content(s) => content.push_str(&s),
                Piece::Reasoning(s) => reasoning.push_str(&s),
                Piece::Tool(t) => {
                    calls.push(tool_call_json(&t, Some(self.tools_sent)));
                    self.tools_sent += 1;
                }
            }
        }
        let mut d = serde_json::Map::new();
        if !reasoning.is_empty() {
            d.insert("reasoning_content".into(), json!(reasoning));
        }
        if !content.is_empty() {
            d.insert("content".into(), json!(content));
        }
        if !calls.is_empty() {
            d.insert("tool_calls".into(), Value::Array(calls));
        }
        (!d.is_empty()).then_some(Value::Object(d))
    }

    /// A streamed token: its chunk, if it says anything.
    pub fn stream_token(
        &mut self,
        id: u32,
        text: &str,
        logprob: Option<f32>,
        top: &[TokenLogprob],
    ) -> Vec<Value> {
        let logprobs = self.logprobs(id, logprob, top);
        match self.spec.kind {
            Kind::Chat { .. } => {
                let pieces = self.parser.push(text);
                let delta = match (self.delta(pieces), logprobs.is_null()) {
                    (Some(d), _) => d,
                    (None, false) => json!({"content": ""}),
                    (None, true) => return Vec::new(),
                };
                vec![self.chunk(json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": null}))]
            }
            Kind::Text { .. } => {
                if text.is_empty() && logprobs.is_null() {
                    return Vec::new();
                }
                vec![self.chunk(
                    json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": null}),
                )]
            }
        }
    }

    /// The chunks that end a stream: held-back text, the finish reason with usage, and
    /// with `include_usage` OpenAI's usage-only chunk.
    pub fn stream_end(&mut self, c: &Completion) -> Vec<Value> {
        let mut out = Vec::new();
        let usage = usage(c);
        let reason = match self.spec.kind {
            Kind::Chat { .. } => {
                let mut pieces = self.parser.push(&c.text);
                pieces.extend(self.parser.finish());
                if let Some(delta) = self.delta(pieces) {
                    out.push(self.chunk(json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null})));
                }
                finish_reason(&c.reason, self.tools_sent > 0)
            }
            Kind::Text { .. } => {
                if !c.text.is_empty() {
                    out.push(self.chunk(json!({"index": 0, "text": c.text, "logprobs": null, "finish_reason": null})));
                }
                finish_reason(&c.reason, false)
            }
        };
        let last = match self.spec.kind {
            Kind::Chat { .. } => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason})
            }
            Kind::Text { .. } => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason})
            }
        };
        let mut last = self.chunk(last);
        if let Some(obj) = last.as_object_mut() {
            obj.insert("usage".into(), usage.clone());
        }
        out.push(last);
        if self.spec.include_usage {
            let mut u = self.chunk(Value::Null);
            if let Some(obj) = u.as_object_mut() {
                obj.insert("choices".into(), json!([]));
                obj.insert("usage".into(), usage);
            }
            out.push(u);
        }
        out
    }

    /// A token of a whole (not streamed) reply.
    pub fn whole_token(&mut self, id: u32, logprob: Option<f32>, top: &[TokenLogprob]) {
        self.logprobs(id, logprob, top);
    }

    /// The whole reply.
    pub fn whole(&mut self, c: &Completion) -> Value {
        let (object, choice) = match &self.spec.kind {
            kind @ Kind::Chat { .. } => {
                let parsed = parse_with(kind.parser(), &c.output);
                let mut message = serde_json::Map::new();
                message.insert("role".into(), json!("assistant"));
                message.insert("content".into(), json!(parsed.content));
                if let Some(r) = &parsed.reasoning {
                    message.insert("reasoning_content".into(), json!(r));
                }
                if !parsed.tool_calls.is_empty() {
                    let calls: Vec<Value> = parsed
                        .tool_calls
                        .iter()
                        .map(|t| tool_call_json(t, None))
                        .collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                let logprobs = match self.spec.logprobs {
                    Some(_) => json!({"content": self.chat_logprobs}),
                    None => Value::Null,
                };
                (
                    "chat.completion",
                    json!({
                        "index": 0,
                        "message": message,
                        "logprobs": logprobs,
                        "finish_reason": finish_reason(&c.reason, !parsed.tool_calls.is_empty()),
                    }),
                )
            }
            Kind::Text { echo } => {
                let text = format!("{}{}", echo.as_deref().unwrap_or(""), c.output);
                let logprobs = match self.spec.logprobs {
                    Some(_) => json!({
                        "tokens": self.text_tokens,
                        "token_logprobs": self.text_logprobs,
                        "top_logprobs": self.text_top,
                        "text_offset": self.text_offsets,
                    }),
                    None => Value::Null,
                };
                (
                    "text_completion",
                    json!({
                        "index": 0,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": finish_reason(&c.reason, false),
                    }),
                )
            }
        };
        json!({
            "id": self.spec.id,
            "object": object,
            "created": self.spec.created,
            "model": self.spec.model,
            "choices": [choice],
            "usage": usage(c),
        })
    }
}
