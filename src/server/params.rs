//! Requests checked and turned into what a generation needs: the prompt's token ids and
//! the [`GenerateOptions`]. Every bad value is a 400 naming its field.

use std::time::Instant;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::errors::ApiError;
use super::openai::{ChatRequest, CompletionRequest, SamplingFields, Stop};
use super::output::ForcedCall;
use super::reply::{Kind, ReplySpec};
use super::state::App;
use super::worker::Job;
use crate::chat::ChatOptions;
use crate::generation::GenerateOptions;
use crate::sampling::{MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_PENALTY};

/// Most stop strings a request may give.
const MAX_STOPS: usize = 16;

/// Legacy completions' default `max_tokens` (OpenAI's).
const COMPLETIONS_MAX_TOKENS: usize = 16;

type Checked<T> = Result<T, ApiError>;

fn bad<T>(param: &str, message: String) -> Checked<T> {
    Err(ApiError::invalid(message, Some(param)))
}

/// The sampling fields over the server's defaults; `max_tokens` is resolved later.
fn options(app: &App, f: &SamplingFields) -> Checked<GenerateOptions> {
    let mut s = app.sampling.clone();
    if let Some(t) = f.temperature {
        if !(0.0..=2.0).contains(&t) {
            return bad(
                "temperature",
                format!("temperature must be in [0, 2], found {t}"),
            );
        }
        s.temperature = t as f32;
    }
    if let Some(p) = f.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return bad("top_p", format!("top_p must be in (0, 1], found {p}"));
        }
        s.top_p = p as f32;
    }
    if let Some(k) = f.top_k {
        if k < -1 {
            return bad(
                "top_k",
                format!("top_k must be -1 or 0 (off) or positive, found {k}"),
            );
        }
        s.top_k = usize::try_from(k).unwrap_or(0);
    }
    if let Some(p) = f.min_p {
        if !(0.0..=1.0).contains(&p) {
            return bad("min_p", format!("min_p must be in [0, 1], found {p}"));
        }
        s.min_p = p as f32;
    }
    for (name, v, slot) in [
        (
            "presence_penalty",
            f.presence_penalty,
            &mut s.presence_penalty,
        ),
        (
            "frequency_penalty",
            f.frequency_penalty,
            &mut s.frequency_penalty,
        ),
    ] {
        if let Some(v) = v {
            if v.abs() > f64::from(MAX_PENALTY) {
                return bad(
                    name,
                    format!("{name} must be in [-{MAX_PENALTY}, {MAX_PENALTY}], found {v}"),
                );
            }
            *slot = v as f32;
        }
    }
    if let Some(r) = f.repetition_penalty {
        if !(r > 0.0 && r <= 10.0) {
            return bad(
                "repetition_penalty",
                format!("repetition_penalty must be in (0, 10], found {r}"),
            );
        }
        s.repetition_penalty = r as f32;
    }
    if let Some(bias) = &f.logit_bias {
        let vocab = app.model.config().vocab_size;
        for (k, &v) in bias {
            let id = match k.trim().parse::<u32>() {
                Ok(id) if (id as usize) < vocab => id,
                _ => {
                    return bad(
                        "logit_bias",
                        format!(
                        "logit_bias key {k:?} is not a token id below the vocabulary size {vocab}"
                    ),
                    )
                }
            };
            if v.abs() > f64::from(MAX_LOGIT_BIAS) {
                return bad(
                    "logit_bias",
                    format!("logit_bias values must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], found {v}"),
                );
            }
            s.logit_bias.insert(id, v as f32);
        }
    }
    if let Some(seed) = &f.seed {
        s.seed = match (seed.as_u64(), seed.as_i64()) {
            (Some(u), _) => Some(u),
            (None, Some(i)) => Some(i as u64),
            _ => return bad("seed", format!("seed must be an integer, found {seed}")),
        };
    }
    if let Some(n) = f.n {
        if n != 1 {
            return bad("n", format!("only n = 1 is supported, found {n}"));
        }
    }
    let stop = match &f.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS {
        return bad(
            "stop",
            format!("at most {MAX_STOPS} stop strings, found {}", stop.len()),
        );
    }
    let options = GenerateOptions {
        sampling: s,
        stop,
        eos_token_ids: app.eos_token_ids.clone(),
        ignore_eos: f.ignore_eos.unwrap_or(false),
        ..GenerateOptions::default()
    };
    options
        .sampling
        .validate_for_vocab(app.model.config().vocab_size)
        .map_err(|e| ApiError::invalid(e.to_string(), None))?;
    Ok(options)
}

/// `max_tokens` (or `max_completion_tokens`) checked, capped by the room the prompt
/// leaves; `default` when not given (`None`: all the room).
fn max_tokens(
    app: &App,
    given: Option<(i64, &str)>,
    default: Option<usize>,
    prompt_len: usize,
    prompt_param: &str,
) -> Checked<usize> {
    if prompt_len >= app.max_context {
        return Err(ApiError::invalid_code(
            format!(
                "This model's maximum context length is {} tokens, and the prompt has {prompt_len}: no room for a reply. Shorten the prompt.",
                app.max_context
            ),
            Some(prompt_param),
            "context_length_exceeded",
        ));
    }
    let room = app.max_context - prompt_len;
    let n = match given {
        Some((n, param)) if n < 1 => {
            return bad(param, format!("{param} must be at least 1, found {n}"))
        }
        Some((n, _)) => usize::try_from(n).unwrap_or(usize::MAX),
        None => default.unwrap_or(room),
    };
    Ok(n.min(room))
}

fn stream_flags(f: &SamplingFields) -> (bool, bool) {
    let stream = f.stream.unwrap_or(false);
    let usage = f
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    (stream, usage)
}

/// A chat request: messages rendered through the chat template with its tools.
pub(crate) fn chat(
    app: &App,
    req: ChatRequest,
    f: SamplingFields,
    arrived: Instant,
) -> Checked<(Job, ReplySpec)> {
    let mut options = options(app, &f)?;
    if let Some(rf) = &req.response_format {
        let kind = rf.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return bad(
                "response_format",
                "only response_format {\"type\": \"text\"} is supported".into(),
            );
        }
    }
    if req.messages.is_empty() {
        return bad("messages", "messages must not be empty".into());
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Checked<Vec<Value>>>()?;
    let (chat, tools, forced) = chat_options(&req)?;
    options.chat = chat;
    options.logprobs = match (req.logprobs, req.top_logprobs) {
        (Some(true), n) => Some(top_logprobs(n.unwrap_or(0), "top_logprobs")?),
        (_, Some(_)) => {
            return bad(
                "top_logprobs",
                "top_logprobs needs logprobs set to true".into(),
            )
        }
        _ => None,
    };
    let mut text = app.tokenizer.render_chat(&messages, &options.chat)?;
    let in_reasoning = text.trim_end().ends_with("<think>");
    // A forced tool call: the prompt goes on with the call's opening, the reply from there.
    let tool_call = forced.map(|f| {
        text.push_str(&f.prompt_suffix(&text));
        f.body_start()
    });
    let prompt = app.tokenizer.encode(&text, false)?;
    if prompt.is_empty() {
        return bad(
            "messages",
            "the chat template rendered an empty prompt".into(),
        );
    }
    let given = req
        .max_completion_tokens
        .map(|n| (n, "max_completion_tokens"))
        .or(f.max_tokens.map(|n| (n, "max_tokens")));
    options.max_tokens = max_tokens(app, given, None, prompt.len(), "messages")?;
    let (stream, include_usage) = stream_flags(&f);
    let spec = ReplySpec::new(
        app,
        Kind::Chat {
            in_reasoning: in_reasoning && tool_call.is_none(),
            tools,
            tool_call,
        },
        stream,
        include_usage,
        options.logprobs,
    );
    Ok((
        Job {
            prompt,
            options,
            arrived,
        },
        spec,
    ))
}

fn top_logprobs(n: i64, param: &str) -> Checked<usize> {
    match usize::try_from(n) {
        Ok(n) if n <= MAX_LOGPROBS => Ok(n),
        _ => bad(
            param,
            format!("{param} must be in [0, {MAX_LOGPROBS}], found {n}"),
        ),
    }
}

/// One message as the template sees it: `developer` is `system`, a content given as
/// text parts is their text, tool-call arguments given as JSON text are objects (as
/// transformers' templates expect them).
fn message(i: usize, m: &Value) -> Checked<Value> {
    let param = format!("messages[{i}]");
    let Some(obj) = m.as_object() else {
        return bad(&param, format!("{param} must be an object"));
    };
    let mut out: Map<String, Value> = obj.clone();
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("developer") => "system",
        Some(r @ ("system" | "user" | "assistant" | "tool" | "function")) => r,
        Some(r) => return bad(&format!("{param}.role"), format!("unknown role {r:?}")),
        None => return bad(&format!("{param}.role"), format!("{param} has no role")),
    };
    out.insert("role".into(), Value::String(role.into()));
    let content = match obj.get("content") {
        None | Some(Value::Null) => {
            if role == "assistant" {
                Value::Null
            } else {
                return bad(
                    &format!("{param}.content"),
                    format!("{param} has no content"),
                );
            }
        }
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push(t),
                    (kind, _) => {
                        return bad(
                            &format!("{param}.content[{j}]"),
                            format!(
                                "only text content parts are supported, found {}",
                                kind.unwrap_or("a part without a type")
                            ),
                        )
                    }
                }
            }
            Value::String(text.join("\n"))
        }
        Some(_) => {
            return bad(
                &format!("{param}.content"),
                "content must be a string or a list of text parts".into(),
            )
        }
    };
    out.insert("content".into(), content);
    if let Some(Value::Array(calls)) = out.get_mut("tool_calls") {
        for call in calls {
            if let Some(args) = call.pointer_mut("/function/arguments") {
                if let Some(Ok(parsed @ Value::Object(_))) =
                    args.as_str().map(serde_json::from_str::<Value>)
                {
                    *args = parsed;
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The render options: tools as `tool_choice` says, template variables. Returns whether
/// tool calls are parsed out of the reply, and the call the reply must make
/// (`"required"`, a named function).
fn chat_options(req: &ChatRequest) -> Checked<(ChatOptions, bool, Option<ForcedCall>)> {
    let mut chat = ChatOptions::new();
    if let Some(kw) = &req.chat_template_kwargs {
        chat = chat
            .kwargs_json(kw.get())
            .map_err(|e| ApiError::invalid(e.to_string(), Some("chat_template_kwargs")))?;
    }
    let tools: Option<Vec<Box<RawValue>>> = match &req.tools {
        None => None,
        Some(raw) => match serde_json::from_str(raw.get()) {
            Ok(list) => Some(list),
            Err(_) if raw.get().trim() == "null" => None,
            Err(_) => return bad("tools", "tools must be a list of tool objects".into()),
        },
    };
    let mut names = Vec::new();
    for (i, t) in tools.iter().flatten().enumerate() {
        let v: Value = serde_json::from_str(t.get()).unwrap_or(Value::Null);
        let name = v.pointer("/function/name").and_then(Value::as_str);
        match (v.get("type").and_then(Value::as_str), name) {
            (Some("function"), Some(n)) if !n.is_empty() => names.push(n.to_string()),
            _ => {
                return bad(
                    &format!("tools[{i}]"),
                    "a tool must be {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": ...}}".into(),
                )
            }
        }
    }
    let choice = match &req.tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if matches!(s.as_str(), "none" | "auto" | "required") => {
            Some(s.clone())
        }
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(n) if v.get("type").and_then(Value::as_str) == Some("function") => {
                if !names.iter().any(|m| m == n) {
                    return bad("tool_choice", format!("tool_choice names {n:?}, which is not among the tools"));
                }
                Some(format!("function:{n}"))
            }
            _ => {
                return bad(
                    "tool_choice",
                    "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}".into(),
                )
            }
        },
    };
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        if matches!(&choice, Some(c) if c != "none") {
            return bad("tool_choice", "tool_choice needs tools".into());
        }
        return Ok((chat, false, None));
    };
    let chosen: Vec<&str> = match choice.as_deref() {
        Some("none") => return Ok((chat, false, None)),
        Some(c) if c.starts_with("function:") => tools
            .iter()
            .zip(&names)
            .filter(|(_, n)| Some(n.as_str()) == c.strip_prefix("function:"))
            .map(|(t, _)| t.get())
            .collect(),
        _ => tools.iter().map(|t| t.get()).collect(),
    };
    let json = format!("[{}]", chosen.join(", "));
    let chat = chat
        .tools_json(&json)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("tools")))?;
    let forced = match choice.as_deref() {
        Some("required") => Some(ForcedCall::Any),
        Some(c) => c
            .strip_prefix("function:")
            .map(|n| ForcedCall::Named(n.to_string())),
        None => None,
    };
    Ok((chat, true, forced))
}

/// A legacy completions request.
pub(crate) fn completion(
    app: &App,
    req: CompletionRequest,
    f: SamplingFields,
    arrived: Instant,
) -> Checked<(Job, ReplySpec)> {
    let mut options = options(app, &f)?;
    if !matches!(req.suffix, None | Some(Value::Null)) {
        return bad("suffix", "suffix is not supported".into());
    }
    if let Some(b) = req.best_of {
        if b != 1 {
            return bad(
                "best_of",
                format!("only best_of = 1 is supported, found {b}"),
            );
        }
    }
    let vocab = app.model.config().vocab_size;
    let ids = |v: &[Value]| -> Checked<Vec<u32>> {
        v.iter()
            .map(|x| match x.as_u64() {
                Some(id) if (id as usize) < vocab => Ok(id as u32),
                _ => bad(
                    "prompt",
                    format!("prompt token {x} is not a token id below the vocabulary size {vocab}"),
                ),
            })
            .collect()
    };
    let one = |v: &Value| -> Checked<Vec<u32>> {
        match v {
            Value::String(s) => Ok(app.tokenizer.encode(s, true)?),
            Value::Array(a) if a.iter().all(Value::is_number) => ids(a),
            _ => bad(
                "prompt",
                "prompt must be a string, a list of token ids, or a list of one of those".into(),
            ),
        }
    };
    let prompt = match &req.prompt {
        None | Some(Value::Null) => return bad("prompt", "prompt is required".into()),
        Some(Value::Array(a)) if !a.is_empty() && !a.iter().all(Value::is_number) => {
            if a.len() > 1 {
                return bad("prompt", "only one prompt per request is supported".into());
            }
            one(&a[0])?
        }
        Some(v) => one(v)?,
    };
    if prompt.is_empty() {
        return bad("prompt", "the prompt is empty".into());
    }
    let echo = req.echo.unwrap_or(false);
    options.logprobs = match req.logprobs {
        None => None,
        Some(n) => Some(top_logprobs(n, "logprobs")?),
    };
    if echo && options.logprobs.is_some() {
        return bad(
            "echo",
            "echo with logprobs is not supported (no prompt log-probabilities)".into(),
        );
    }
    options.max_tokens = max_tokens(
        app,
        f.max_tokens.map(|n| (n, "max_tokens")),
        Some(COMPLETIONS_MAX_TOKENS),
        prompt.len(),
        "prompt",
    )?;
    let echo_text = if echo {
        Some(app.tokenizer.decode(&prompt, false)?)
    } else {
        None
    };
    let (stream, include_usage) = stream_flags(&f);
    let spec = ReplySpec::new(
        app,
        Kind::Text { echo: echo_text },
        stream,
        include_usage,
        options.logprobs,
    );
    Ok((
        Job {
            prompt,
            options,
            arrived,
        },
        spec,
    ))
}
