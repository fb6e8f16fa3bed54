//! Text <-> token ids: the [`TextTokenizer`] trait, the Hugging Face `tokenizer.json`
//! backend ([`HfTokenizer`], cargo feature `tokenizers`), and [`Tokenizer`], which bundles a
//! backend with the special tokens and chat templates of a checkpoint folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::chat::{ChatOptions, ChatTemplates};
use crate::error::{Error, Result};

/// What moestream needs from a tokenizer. Implement it to bring your own (and build a
/// [`Tokenizer`] with [`Tokenizer::new`]); with the default cargo feature `tokenizers`,
/// [`HfTokenizer`] implements it for `tokenizer.json` files.
pub trait TextTokenizer: Send + Sync {
    /// Token ids of `text`. Special-token strings in the text (e.g. `<|im_start|>`) become
    /// their ids. With `add_special_tokens`, the tokenizer's post-processor adds what it adds
    /// to a whole input (e.g. a BOS token), as `tokenizer.encode(text)` does in
    /// transformers; chat templates are encoded without (they write those tokens
    /// themselves).
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>>;

    /// Text of `ids`. Byte sequences that are not (yet) valid UTF-8 decode to U+FFFD, as
    /// in transformers; [`IncrementalDecoder`] relies on that.
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String>;

    /// The id of a token string (e.g. `"<|im_end|>"`), if it is in the vocabulary.
    fn token_to_id(&self, token: &str) -> Option<u32>;
}

/// A `tokenizer.json` tokenizer, through the Hugging Face `tokenizers` crate.
#[cfg(feature = "tokenizers")]
#[derive(Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

#[cfg(feature = "tokenizers")]
impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish()
    }
}

#[cfg(feature = "tokenizers")]
impl HfTokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Tokenizer { reason, .. } => Error::Tokenizer {
                path: Some(path.to_path_buf()),
                reason,
            },
            e => e,
        })
    }

    /// Parses `tokenizer.json` contents. Its `padding` and `truncation` settings are
    /// dropped, as transformers' `encode` drops them unless asked to pad or truncate (a
    /// file could otherwise make every encode pad to a length it merely claims).
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let bad = |e: tokenizers::Error| Error::Tokenizer {
            path: None,
            reason: format!("cannot load tokenizer.json: {e}"),
        };
        // `tokenizers` panics on some malformed files (its `decoder` deserializer calls
        // `.expect("Helper")` on a syntax error inside the object): an error here too.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(json)).map_err(
            |panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("malformed file");
                Error::Tokenizer {
                    path: None,
                    reason: format!("cannot load tokenizer.json: {what}"),
                }
            },
        )?;
        let mut inner = parsed.map_err(bad)?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(bad)?;
        Ok(HfTokenizer { inner })
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(feature = "tokenizers")]
impl TextTokenizer for HfTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer {
                path: None,
                reason: format!("encoding failed: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer {
                path: None,
                reason: format!("decoding failed: {e}"),
            })
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The named special tokens transformers passes to chat templates (`bos_token`,
/// `eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`, `mask_token`, and the
/// entries of an `extra_special_tokens` object), read from `tokenizer_config.json`, where
/// each is a string or an `{"content": ...}` object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpecialTokens {
    /// `(name, token)` pairs in file order, e.g. `("eos_token", "<|im_end|>")`.
    pub named: Vec<(String, String)>,
}

const NAMED_SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

impl SpecialTokens {
    /// Reads the named special tokens from a parsed `tokenizer_config.json`.
    pub fn from_tokenizer_config(config: &Value) -> Self {
        let mut named = Vec::new();
        for key in NAMED_SPECIAL_TOKENS {
            if let Some(s) = config.get(key).and_then(token_content) {
                named.push((key.to_string(), s));
            }
        }
        if let Some(extra) = config
            .get("extra_special_tokens")
            .and_then(Value::as_object)
        {
            for (key, v) in extra {
                if let Some(s) = token_content(v) {
                    if !named.iter().any(|(k, _)| k == key) {
                        named.push((key.clone(), s));
                    }
                }
            }
        }
        SpecialTokens { named }
    }

    /// The token string of a named special token (`"bos_token"`, `"eos_token"`, ...).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) a named special token.
    pub fn set(&mut self, name: impl Into<String>, token: impl Into<String>) {
        let (name, token) = (name.into(), token.into());
        match self.named.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = token,
            None => self.named.push((name, token)),
        }
    }
}

/// A special token in `tokenizer_config.json`: a string, or an object with `content`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The text side of a model: a [`TextTokenizer`] backend, the special tokens chat templates
/// see, and the chat templates. Cheap to clone.
///
/// ```no_run
/// # fn main() -> moestream::Result<()> {
/// use moestream::{chat::ChatOptions, ChatMessage, Tokenizer};
/// let tok = Tokenizer::from_dir("path/to/Qwen3-30B-A3B")?;
/// let ids = tok.encode("Hello world", false)?;
/// let prompt = tok.encode_chat(&[ChatMessage::user("Hi!")], &ChatOptions::default())?;
/// println!("{ids:?} {prompt:?} {}", tok.decode(&ids, false)?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tokenizer {
    backend: Arc<dyn TextTokenizer>,
    special: SpecialTokens,
    templates: ChatTemplates,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("special", &self.special)
            .field("templates", &self.templates)
            .finish()
    }
}

impl Tokenizer {
    /// A tokenizer from your own backend, with no special tokens and no chat template (add
    /// them with [`with_special_tokens`](Self::with_special_tokens) and
    /// [`with_chat_templates`](Self::with_chat_templates)).
    pub fn new(backend: Arc<dyn TextTokenizer>) -> Self {
        Tokenizer {
            backend,
            special: SpecialTokens::default(),
            templates: ChatTemplates::default(),
        }
    }

    /// Loads the text side of a checkpoint folder as transformers' `AutoTokenizer` does:
    /// `tokenizer.json`, the special tokens of `tokenizer_config.json`, and the chat
    /// templates (`chat_template.jinja` and `additional_chat_templates/*.jinja`, which take
    /// priority, else `tokenizer_config.json`'s `chat_template`, a string or a list of
    /// named templates; see [`ChatTemplates::from_dir`]).
    #[cfg(feature = "tokenizers")]
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let file = dir.join("tokenizer.json");
        if !file.exists() {
            return Err(Error::Tokenizer {
                path: Some(file),
                reason: "not found (moestream reads Hugging Face tokenizer.json files)".into(),
            });
        }
        let backend = HfTokenizer::from_file(&file)?;
        Self::from_dir_with(dir, Arc::new(backend))
    }

    /// Like [`from_dir`](Self::from_dir), with your own backend: special tokens and chat
    /// templates are read from `dir`, `tokenizer.json` is not.
    pub fn from_dir_with(dir: impl AsRef<Path>, backend: Arc<dyn TextTokenizer>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_tokenizer_config(dir)?;
        let special = config
            .as_ref()
            .map(SpecialTokens::from_tokenizer_config)
            .unwrap_or_default();
        let templates = ChatTemplates::from_dir_and_config(dir, config.as_ref())?;
        Ok(Tokenizer {
            backend,
            special,
            templates,
        })
    }

    /// Replaces the special tokens chat templates see.
    pub fn with_special_tokens(mut self, special: SpecialTokens) -> Self {
        self.special = special;
        self
    }

    /// Replaces the chat templates.
    pub fn with_chat_templates(mut self, templates: ChatTemplates) -> Self {
        self.templates = templates;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn TextTokenizer> {
        &self.backend
    }

    /// The named special tokens (from `tokenizer_config.json`).
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The chat templates (possibly none).
    pub fn chat_templates(&self) -> &ChatTemplates {
        &self.templates
    }

    /// Token ids of `text`; see [`TextTokenizer::encode`].
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.backend.encode(text, add_special_tokens)
    }

    /// Text of `ids`; see [`TextTokenizer::decode`].
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.backend.decode(ids, skip_special_tokens)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.backend.token_to_id(token)
    }

    /// The id of the `eos_token` of `tokenizer_config.json`, if any.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.special
            .get("eos_token")
            .and_then(|t| self.backend.token_to_id(t))
    }

    /// The id of the `bos_token` of `tokenizer_config.json`, if any.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.special
            .get("bos_token")
            .and_then(|t| self.backend.token_to_id(t))
    }

    /// Renders a conversation with the chat template, as transformers'
    /// `apply_chat_template(messages, tokenize=False, ...)` does. Messages are any
    /// serializable maps, e.g. [`ChatMessage`](crate::ChatMessage)s or `serde_json::Value`s.
    pub fn render_chat<M: Serialize>(
        &self,
        messages: &[M],
        options: &ChatOptions,
    ) -> Result<String> {
        self.templates.render(messages, options, &self.special)
    }

    /// Like [`render_chat`](Self::render_chat), with the messages as JSON text (a list of
    /// objects); keys keep the text's order, as in Python (a `serde_json::Value` sorts
    /// them unless serde_json's `preserve_order` feature is on).
    pub fn render_chat_json(&self, messages_json: &str, options: &ChatOptions) -> Result<String> {
        self.templates
            .render_json(messages_json, options, &self.special)
    }

    /// Like [`encode_chat`](Self::encode_chat), with the messages as JSON text.
    pub fn encode_chat_json(&self, messages_json: &str, options: &ChatOptions) -> Result<Vec<u32>> {
        let text = self.render_chat_json(messages_json, options)?;
        self.encode(&text, false)
    }

    /// The prompt ids of a conversation: the rendered template, encoded without adding
    /// special tokens, exactly as transformers' `apply_chat_template(messages,
    /// add_generation_prompt=..., tokenize=True)`.
    pub fn encode_chat<M: Serialize>(
        &self,
        messages: &[M],
        options: &ChatOptions,
    ) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, options)?;
        self.encode(&text, false)
    }
}

/// `tokenizer_config.json` parsed, or `None` if the folder has none.
pub(crate) fn read_tokenizer_config(dir: &Path) -> Result<Option<Value>> {
    read_json_if_exists(&dir.join("tokenizer_config.json"), |path, reason| {
        Error::Tokenizer {
            path: Some(path),
            reason,
        }
    })
}

/// A JSON file parsed, or `None` if it does not exist.
pub(crate) fn read_json_if_exists(
    path: &Path,
    err: impl Fn(PathBuf, String) -> Error,
) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| err(path.to_path_buf(), format!("not valid JSON: {e}")))
}

/// Turns token ids into text as they are generated, never emitting a partial character.
///
/// Each [`push`](Self::push) decodes a short window of recent tokens and returns the text
/// the new token completes: nothing while the window's text ends in an incomplete UTF-8
/// sequence (decoded as U+FFFD), everything once it is complete. Decoding a window with one
/// token of left context keeps tokenizers that strip a leading space (SentencePiece) right.
/// [`finish`](Self::finish) returns whatever is left.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDecoder {
    /// Tokens of context kept from the prompt.
    const CONTEXT: usize = 5;

    /// A decoder whose output continues after `context` (e.g. the tail of the prompt; only
    /// its last few tokens are kept, and none of its text is emitted).
    pub fn new(context: &[u32], skip_special_tokens: bool) -> Self {
        let start = context.len().saturating_sub(Self::CONTEXT);
        let ids = context[start..].to_vec();
        let n = ids.len();
        IncrementalDecoder {
            ids,
            prefix_offset: 0,
            read_offset: n,
            skip_special_tokens,
        }
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &dyn TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            // Normally the window's old text is a prefix of its new text. If the decoder
            // rewrote it (rare), the part past the old text's length is the best guess.
            let delta = full
                .strip_prefix(prefix.as_str())
                .or_else(|| full.get(prefix.len()..));
            if let Some(delta) = delta {
                let delta = delta.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                self.compact();
                return Ok(delta);
            }
        }
        Ok(String::new())
    }

    /// The text not emitted yet (an incomplete character comes out as U+FFFD); the decoder is
    /// left empty.
    pub fn finish(&mut self, tokenizer: &dyn TextTokenizer) -> Result<String> {
        if self.read_offset >= self.ids.len() {
            return Ok(String::new());
        }
        let prefix = tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        let common = common_prefix_len(&prefix, &full);
        Ok(full[common..].to_string())
    }

    /// Drops ids before the decoding window.
    fn compact(&mut self) {
        if self.prefix_offset > 64 {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
    }
}

/// Length in bytes of the longest common prefix of `a` and `b`, at a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    let mut n = 0;
    for ((i, ca), cb) in a.char_indices().zip(b.chars()) {
        if ca != cb {
            return i;
        }
        n = i + ca.len_utf8();
    }
    n
}
