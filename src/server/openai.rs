//! The request bodies of OpenAI's API as this server reads them. Each endpoint's body is
//! read twice: into its own struct and into [`SamplingFields`], the fields the two
//! endpoints share (unknown fields are ignored, as OpenAI's clients send extras).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::errors::ApiError;

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Value>,
    /// Kept as the client wrote it: templates print tool schemas in their key order.
    pub tools: Option<Box<RawValue>>,
    pub tool_choice: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    /// vLLM's extension: extra chat-template variables (e.g. `enable_thinking`).
    pub chat_template_kwargs: Option<Box<RawValue>>,
    pub response_format: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Value>,
    /// The number of most likely tokens to report per position (0 to 20).
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<Value>,
    pub best_of: Option<i64>,
}

/// Fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SamplingFields {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub seed: Option<serde_json::Number>,
    pub max_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Parses a JSON body into `T`, naming the field at fault in the error.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || path == "." {
                Err(ApiError::invalid(
                    format!("The request body is not valid JSON for this endpoint: {inner}"),
                    None,
                ))
            } else {
                Err(ApiError::invalid(
                    format!("Invalid value for `{path}`: {inner}"),
                    Some(&path),
                ))
            }
        }
    }
}
