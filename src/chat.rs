//! Chat templates: Hugging Face Jinja templates rendered with `minijinja` the way
//! transformers' `apply_chat_template` renders them.
//!
//! What transformers does, and this module copies:
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the template
//!   dropped, loop controls (`{% break %}`, `{% continue %}`) on;
//! - variables: `messages`, `tools`, `documents`, `add_generation_prompt`, the named
//!   special tokens of `tokenizer_config.json` (`bos_token`, `eos_token`, ...) and any
//!   extra keyword arguments (e.g. `enable_thinking`), which override special tokens;
//! - functions `raise_exception(message)` (fails the render) and `strftime_now(format)`
//!   (here in UTC), a `tojson` filter that is Python's `json.dumps(x, ensure_ascii=False,
//!   indent=..., separators=..., sort_keys=...)` (no HTML escaping), and the
//!   `{% generation %}` block (rendered as its body);
//! - message keys whose value is null are dropped; a message's reasoning
//!   (`reasoning_content`, `thinking` or `reasoning`) is visible under both
//!   `reasoning_content` and `thinking`;
//! - values print as Python prints them (`True`, `None`, `{'a': 1}`), and Python string
//!   and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, ...) work
//!   (`minijinja-contrib`'s `pycompat`).
//!
//! Templates come from model folders, so a render is bounded: at most `TEMPLATE_FUEL`
//! template instructions (a template that loops for ever fails in well under a second) and at
//! most `MAX_RENDER_BYTES` of output (printed values and `tojson` included); either
//! limit gives an `Error::Template`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value as JValue, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokenizer::{read_json_if_exists, read_tokenizer_config, SpecialTokens};

/// One message of a conversation. Any serializable map works as a message too (e.g. a
/// `serde_json::Value`); this is the common case plus free-form extra fields
/// (`reasoning_content`, `tool_calls`, `name`, ...), serialized after `role` and `content`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The text.
    pub content: String,
    /// Further fields the template may read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// The message with one more field (e.g. `("reasoning_content", json!("..."))`).
    pub fn with(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }
}

/// Options of one render, the arguments of transformers' `apply_chat_template` besides the
/// messages.
///
/// Values given with [`tools`](Self::tools), [`documents`](Self::documents) and
/// [`kwarg`](Self::kwarg) keep the key order their `Serialize` impl emits (a
/// `serde_json::Value` object emits sorted keys unless your build enables serde_json's
/// `preserve_order`); the `*_json` variants keep the order of the JSON text, as Python does.
/// `tojson` output depends on that order.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    add_generation_prompt: bool,
    template: Option<String>,
    tools: Option<JValue>,
    documents: Option<JValue>,
    kwargs: Vec<(String, JValue)>,
}

impl Default for ChatOptions {
    /// With the generation prompt (the prompt for the assistant's next message), the
    /// model's default template, no tools, no documents, no extra variables.
    fn default() -> Self {
        ChatOptions {
            add_generation_prompt: true,
            template: None,
            tools: None,
            documents: None,
            kwargs: Vec::new(),
        }
    }
}

impl ChatOptions {
    /// Same as `default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to end with the prompt for the assistant's next message (default: yes).
    pub fn with_generation_prompt(mut self, on: bool) -> Self {
        self.add_generation_prompt = on;
        self
    }

    /// The name of one of the model's named templates (e.g. `"tool_use"`), or a template
    /// source, as transformers' `chat_template` argument.
    pub fn template(mut self, name_or_source: impl Into<String>) -> Self {
        self.template = Some(name_or_source.into());
        self
    }

    /// Tool schemas (a list of JSON objects).
    pub fn tools<T: Serialize + ?Sized>(mut self, tools: &T) -> Self {
        self.tools = Some(JValue::from(Serde(tools)));
        self
    }

    /// Tool schemas from JSON text (a list), keeping its key order.
    pub fn tools_json(mut self, json: &str) -> Result<Self> {
        self.tools = Some(parse_json_value(json, "tools")?);
        Ok(self)
    }

    /// Documents for retrieval-augmented templates (a list of JSON objects).
    pub fn documents<T: Serialize + ?Sized>(mut self, documents: &T) -> Self {
        self.documents = Some(JValue::from(Serde(documents)));
        self
    }

    /// An extra template variable (e.g. `("enable_thinking", &false)`).
    pub fn kwarg<T: Serialize + ?Sized>(mut self, name: impl Into<String>, value: &T) -> Self {
        self.set_kwarg(name.into(), JValue::from(Serde(value)));
        self
    }

    /// Extra template variables from a JSON object's text, keeping its key order.
    pub fn kwargs_json(mut self, json: &str) -> Result<Self> {
        let v = parse_json_value(json, "template kwargs")?;
        if v.kind() != ValueKind::Map {
            return Err(Error::InvalidArgument(
                "template kwargs must be a JSON object".into(),
            ));
        }
        for (k, val) in map_entries(&v).map_err(|e| Error::InvalidArgument(e.to_string()))? {
            self.set_kwarg(k, val);
        }
        Ok(self)
    }

    fn set_kwarg(&mut self, name: String, value: JValue) {
        match self.kwargs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.kwargs.push((name, value)),
        }
    }

    /// Whether the render ends with the generation prompt.
    pub fn adds_generation_prompt(&self) -> bool {
        self.add_generation_prompt
    }

    /// Whether tools were given (transformers then prefers a template named `tool_use`).
    pub fn has_tools(&self) -> bool {
        self.tools.is_some()
    }
}

fn parse_json_value(json: &str, what: &str) -> Result<JValue> {
    serde_json::from_str::<JValue>(json)
        .map_err(|e| Error::InvalidArgument(format!("{what}: not valid JSON: {e}")))
}

/// One chat template: its Jinja source, compiled on first use.
#[derive(Clone)]
pub struct ChatTemplate {
    source: Arc<str>,
    label: Arc<str>,
    compiled: Arc<OnceLock<std::result::Result<Environment<'static>, String>>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("label", &self.label)
            .field("source_len", &self.source.len())
            .finish()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Most template instructions one render may execute (minijinja's fuel). Real chat
/// templates take 50 to a few hundred per message; a loop without end runs out in about
/// a third of a second instead of hanging.
const TEMPLATE_FUEL: u64 = 10_000_000;

/// Most bytes one render may output: far beyond any prompt, small enough that a template
/// printing a huge value fails instead of exhausting memory.
const MAX_RENDER_BYTES: usize = 32 << 20;

/// Largest template source compiled (real chat templates take a few KiB to a few tens).
const MAX_TEMPLATE_BYTES: usize = 256 << 10;

/// Stack for compiling a template, per byte of its source (on top of 4 MiB).
/// minijinja's parser and code generator recurse once per level of an expression, and
/// operator chains (`1 + 1 + ...`, `- - - 1`, `not not ...`, `x.y.y...`) nest a level per
/// operator without its recursion limit: a release build needs up to ~430 bytes of stack
/// per byte of such a source, which would overflow (and abort) an ordinary thread.
const COMPILE_STACK_PER_BYTE: usize = 1024;

/// [`build_env`] on a thread whose stack grows with the source (see
/// [`COMPILE_STACK_PER_BYTE`]); only the pages a compile touches are committed.
fn compile(source: &Arc<str>) -> std::result::Result<Environment<'static>, String> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(format!(
            "the template is {} bytes; this version compiles templates of at most \
             {MAX_TEMPLATE_BYTES} bytes",
            source.len()
        ));
    }
    let src = Arc::clone(source);
    std::thread::Builder::new()
        .name("moestream-template".into())
        .stack_size((4 << 20) + COMPILE_STACK_PER_BYTE * source.len())
        .spawn(move || build_env(&src))
        .map_err(|e| format!("cannot start a thread to compile the template: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the template compiler panicked".into()))
}

/// The reason given when a render exceeds [`MAX_RENDER_BYTES`].
fn too_large() -> String {
    format!("the rendered prompt would exceed {MAX_RENDER_BYTES} bytes")
}

/// The render's output, refusing to grow past [`MAX_RENDER_BYTES`].
#[derive(Default)]
struct CappedOutput {
    buf: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + bytes.len() > MAX_RENDER_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other(too_large()));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// A template from its Jinja source. It is compiled on first use (or by
    /// [`check`](Self::check)), so a template that does not parse only fails the renders.
    pub fn new(source: impl Into<String>) -> Self {
        Self::labelled(source.into(), "chat template".into())
    }

    fn labelled(source: String, label: String) -> Self {
        ChatTemplate {
            source: source.into(),
            label: label.into(),
            compiled: Arc::new(OnceLock::new()),
        }
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from (file and name), as used in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Compiles the template; an error says why it does not parse.
    pub fn check(&self) -> Result<()> {
        self.env().map(|_| ())
    }

    fn env(&self) -> Result<&Environment<'static>> {
        self.compiled
            .get_or_init(|| compile(&self.source))
            .as_ref()
            .map_err(|reason| Error::Template {
                template: self.label.to_string(),
                reason: reason.clone(),
            })
    }

    /// Renders `messages` (any serializable maps) with `options`; `special` are the named
    /// special tokens the template sees.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        options: &ChatOptions,
        special: &SpecialTokens,
    ) -> Result<String> {
        let messages = messages.iter().map(|m| JValue::from(Serde(m))).collect();
        self.render_values(messages, options, special)
    }

    /// Renders messages given as JSON text (a list of objects), keeping the key order of
    /// the text as Python would (it shows in `tojson` output).
    pub fn render_json(
        &self,
        messages_json: &str,
        options: &ChatOptions,
        special: &SpecialTokens,
    ) -> Result<String> {
        self.render_values(parse_messages_json(messages_json)?, options, special)
    }

    fn render_values(
        &self,
        messages: Vec<JValue>,
        options: &ChatOptions,
        special: &SpecialTokens,
    ) -> Result<String> {
        let env = self.env()?;
        let tmpl = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.error(&e))?;
        let messages = messages
            .iter()
            .map(prepare_message)
            .collect::<Result<Vec<JValue>>>()?;
        let mut ctx: BTreeMap<String, JValue> = BTreeMap::new();
        for (k, v) in &special.named {
            ctx.insert(k.clone(), JValue::from(v.as_str()));
        }
        for (k, v) in &options.kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), JValue::from(messages));
        ctx.insert(
            "tools".into(),
            options.tools.clone().unwrap_or(JValue::from(())),
        );
        ctx.insert(
            "documents".into(),
            options.documents.clone().unwrap_or(JValue::from(())),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            JValue::from(options.add_generation_prompt),
        );
        let mut out = CappedOutput::default();
        let rendered = tmpl.render_captured_to(ctx, &mut out).map(drop);
        match rendered {
            Ok(()) => String::from_utf8(out.buf).map_err(|_| Error::Template {
                template: self.label.to_string(),
                reason: "the template rendered invalid UTF-8".into(),
            }),
            Err(_) if out.overflowed => Err(Error::Template {
                template: self.label.to_string(),
                reason: too_large(),
            }),
            Err(e) => Err(self.error(&e)),
        }
    }

    fn error(&self, e: &minijinja::Error) -> Error {
        let raised = std::error::Error::source(e).and_then(|s| s.downcast_ref::<Raised>());
        let reason = if let Some(Raised(message)) = raised {
            message.clone()
        } else if e.kind() == ErrorKind::OutOfFuel {
            format!("the template ran too long (more than {TEMPLATE_FUEL} instructions): {e}")
        } else {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                let _ = write!(s, ": {inner}");
                src = inner.source();
            }
            s
        };
        Error::Template {
            template: self.label.to_string(),
            reason,
        }
    }
}

/// A JSON list of messages, key order kept.
pub(crate) fn parse_messages_json(json: &str) -> Result<Vec<JValue>> {
    let v = parse_json_value(json, "messages")?;
    if v.kind() != ValueKind::Seq {
        return Err(Error::InvalidArgument(
            "messages must be a JSON list of objects".into(),
        ));
    }
    v.try_iter()
        .map(|it| it.collect())
        .map_err(|e| Error::InvalidArgument(format!("messages: {e}")))
}

/// A message as the template sees it: a map without null values, reasoning aliased.
fn prepare_message(v: &JValue) -> Result<JValue> {
    if v.kind() != ValueKind::Map {
        return Err(Error::InvalidArgument(format!(
            "a chat message must be a map with `role` and `content`, found {}",
            v.kind()
        )));
    }
    let mut entries: Vec<(String, JValue)> = map_entries(v)
        .map_err(|e| Error::InvalidArgument(format!("chat message: {e}")))?
        .into_iter()
        .filter(|(_, v)| !v.is_none() && !v.is_undefined())
        .collect();
    const REASONING: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
    let reasoning = REASONING.iter().find_map(|k| {
        entries
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    });
    if let Some(r) = reasoning {
        // Python: {"thinking": r, **message, "reasoning_content": r}
        match entries.iter_mut().find(|(k, _)| k == "thinking") {
            Some(slot) => slot.1 = r.clone(),
            None => entries.insert(0, ("thinking".into(), r.clone())),
        }
        match entries.iter_mut().find(|(k, _)| k == "reasoning_content") {
            Some(slot) => slot.1 = r,
            None => entries.push(("reasoning_content".into(), r)),
        }
    }
    Ok(JValue::from_pairs(entries))
}

/// The entries of a map value, in order, keys as strings.
fn map_entries(v: &JValue) -> std::result::Result<Vec<(String, JValue)>, minijinja::Error> {
    let mut out = Vec::new();
    for key in v.try_iter()? {
        let val = v.get_item(&key)?;
        let k = match key.as_str() {
            Some(s) => s.to_string(),
            None => key.to_string(),
        };
        out.push((k, val));
    }
    Ok(out)
}

/// The chat templates of a model: none, one, or several named ones.
#[derive(Debug, Clone, Default)]
pub struct ChatTemplates {
    /// `(name, template)`; a single template is named `default` and flagged `single`.
    templates: Vec<(String, ChatTemplate)>,
    single: bool,
}

impl ChatTemplates {
    /// One template.
    pub fn single(template: ChatTemplate) -> Self {
        ChatTemplates {
            templates: vec![("default".into(), template)],
            single: true,
        }
    }

    /// Named templates (e.g. `default` and `tool_use`).
    pub fn named(templates: impl IntoIterator<Item = (String, ChatTemplate)>) -> Self {
        ChatTemplates {
            templates: templates.into_iter().collect(),
            single: false,
        }
    }

    /// Reads the templates of a checkpoint folder as transformers does: if
    /// `chat_template.jinja` or `additional_chat_templates/*.jinja` exist, they are the
    /// templates (the first is named `default`, the others by file name); otherwise
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of `{"name",
    /// "template"}`); otherwise, beyond what transformers' tokenizers read,
    /// `chat_template.json`'s `chat_template` (processor format). No template at all is
    /// not an error (the set is empty).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_tokenizer_config(dir)?;
        Self::from_dir_and_config(dir, config.as_ref())
    }

    pub(crate) fn from_dir_and_config(dir: &Path, config: Option<&Value>) -> Result<Self> {
        let mut files = Vec::new();
        let main = dir.join("chat_template.jinja");
        if let Some(src) = read_text_if_exists(&main)? {
            files.push((
                "default".to_string(),
                ChatTemplate::labelled(src, main.display().to_string()),
            ));
        }
        let extra_dir = dir.join("additional_chat_templates");
        if extra_dir.is_dir() {
            let mut extra: Vec<_> = std::fs::read_dir(&extra_dir)
                .map_err(|e| Error::io(&extra_dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("jinja"))
                .collect();
            extra.sort();
            for path in extra {
                let Some(name) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_string)
                else {
                    continue;
                };
                let src = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                files.push((
                    name,
                    ChatTemplate::labelled(src, path.display().to_string()),
                ));
            }
        }
        if !files.is_empty() {
            if files.len() == 1 && files[0].0 == "default" {
                return Ok(Self::single(files.remove(0).1));
            }
            return Ok(Self::named(files));
        }
        let config_path = dir.join("tokenizer_config.json");
        if let Some(t) = config.and_then(|c| c.get("chat_template")) {
            return Self::from_json(t, &config_path.display().to_string()).map_err(|reason| {
                Error::Tokenizer {
                    path: Some(config_path.clone()),
                    reason,
                }
            });
        }
        let processor = dir.join("chat_template.json");
        let bad = |path, reason| Error::Tokenizer {
            path: Some(path),
            reason,
        };
        if let Some(v) = read_json_if_exists(&processor, bad)? {
            if let Some(t) = v.get("chat_template") {
                return Self::from_json(t, &processor.display().to_string()).map_err(|reason| {
                    Error::Tokenizer {
                        path: Some(processor.clone()),
                        reason,
                    }
                });
            }
        }
        Ok(Self::default())
    }

    /// A `chat_template` JSON value: a string, a list of `{"name", "template"}`, or null.
    fn from_json(v: &Value, label: &str) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(Self::default()),
            Value::String(s) => Ok(Self::single(ChatTemplate::labelled(
                s.clone(),
                label.to_string(),
            ))),
            Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    let name = item.get("name").and_then(Value::as_str);
                    let src = item.get("template").and_then(Value::as_str);
                    let (Some(name), Some(src)) = (name, src) else {
                        return Err(
                            "`chat_template` list entries must be {\"name\": ..., \"template\": ...}"
                                .into(),
                        );
                    };
                    out.push((
                        name.to_string(),
                        ChatTemplate::labelled(src.to_string(), format!("{label} ({name:?})")),
                    ));
                }
                Ok(Self::named(out))
            }
            Value::Object(map) => Ok(Self::named(map.iter().filter_map(|(name, src)| {
                src.as_str().map(|s| {
                    (
                        name.clone(),
                        ChatTemplate::labelled(s.to_string(), format!("{label} ({name:?})")),
                    )
                })
            }))),
            other => Err(format!(
                "`chat_template` must be a string or a list of named templates, found {other}"
            )),
        }
    }

    /// Whether there is no template.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The template names (`default` for a single template).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(|(n, _)| n.as_str())
    }

    /// The template with this name.
    pub fn get(&self, name: &str) -> Option<&ChatTemplate> {
        self.templates
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    /// The template transformers would use: `requested` if it names one of several named
    /// templates, else `requested` itself as a template source; without `requested`, the
    /// single template, or of named ones `tool_use` when there are tools, else `default`.
    pub fn select(&self, requested: Option<&str>, has_tools: bool) -> Result<ChatTemplate> {
        if let Some(r) = requested {
            if !self.single {
                if let Some(t) = self.get(r) {
                    return Ok(t.clone());
                }
            }
            return Ok(ChatTemplate::new(r));
        }
        if self.templates.is_empty() {
            return Err(Error::Template {
                template: "chat template".into(),
                reason: "the tokenizer has no chat template (no chat_template.jinja, and no \
                         `chat_template` in tokenizer_config.json)"
                    .into(),
            });
        }
        if self.single {
            return Ok(self.templates[0].1.clone());
        }
        if has_tools {
            if let Some(t) = self.get("tool_use") {
                return Ok(t.clone());
            }
        }
        self.get("default").cloned().ok_or_else(|| Error::Template {
            template: "chat template".into(),
            reason: format!(
                "the model has several chat templates and none is named \"default\"; pick one \
                 by name: {}",
                self.names().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// Like [`render`](Self::render), with messages as JSON text (key order kept).
    pub fn render_json(
        &self,
        messages_json: &str,
        options: &ChatOptions,
        special: &SpecialTokens,
    ) -> Result<String> {
        self.select(options.template.as_deref(), options.has_tools())?
            .render_json(messages_json, options, special)
    }

    /// Renders with the template [`select`](Self::select)ed by `options`.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        options: &ChatOptions,
        special: &SpecialTokens,
    ) -> Result<String> {
        self.select(options.template.as_deref(), options.has_tools())?
            .render(messages, options, special)
    }
}

fn read_text_if_exists(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

// ---------------------------------------------------------------------------------------
// The environment

fn build_env(source: &str) -> std::result::Result<Environment<'static>, String> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| e.to_string())?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, state, value| {
        if matches!(
            value.kind(),
            ValueKind::None
                | ValueKind::Bool
                | ValueKind::Number
                | ValueKind::Seq
                | ValueKind::Iterable
                | ValueKind::Map
        ) && !value.is_safe()
        {
            let mut s = String::new();
            py_str(&mut s, value);
            if s.len() > MAX_RENDER_BYTES {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    too_large(),
                ));
            }
            out.write_str(&s)
                .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "write failed"))
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    let source = drop_line_continuations(&rewrite_generation_tags(source));
    env.add_template_owned(TEMPLATE_NAME, source).map_err(|e| {
        let mut s = e.to_string();
        if let Some(d) = e.detail() {
            if !s.contains(d) {
                let _ = write!(s, ": {d}");
            }
        }
        s
    })?;
    Ok(env)
}

/// The error `raise_exception(message)` raises.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> std::result::Result<JValue, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' assistant-mask extension)
/// become `{% if true %}` / `{% endif %}`, keeping whitespace control.
fn rewrite_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        // The close after the open (in `{%}` the two overlap).
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let _ = write!(out, "{{%{lead} {r} {trail}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Jinja (like Python) drops a backslash-newline inside a string literal (a line
/// continuation, which e.g. Mistral's templates use); minijinja keeps both. Removes them
/// from string literals inside tags; text outside tags is left alone.
fn drop_line_continuations(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    let mut close: Option<&str> = None;
    let mut quote: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        match (close, quote) {
            (None, _) => {
                if let Some(end) = ["{{", "{%"]
                    .iter()
                    .find(|open| rest.starts_with(**open))
                    .map(|open| if *open == "{{" { "}}" } else { "%}" })
                {
                    close = Some(end);
                    out.push_str(&rest[..2]);
                    rest = &rest[2..];
                    continue;
                }
                if rest.starts_with("{#") {
                    let end = rest.find("#}").map_or(rest.len(), |i| i + 2);
                    out.push_str(&rest[..end]);
                    rest = &rest[end..];
                    continue;
                }
            }
            (Some(_), Some(q)) => {
                if c == '\\' {
                    if let Some(after) = rest[1..]
                        .strip_prefix("\r\n")
                        .or_else(|| rest[1..].strip_prefix('\n'))
                    {
                        rest = after;
                        continue;
                    }
                    // Any other escape: copy it whole so an escaped quote stays inside.
                    let len = 1 + rest[1..].chars().next().map_or(0, char::len_utf8);
                    out.push_str(&rest[..len]);
                    rest = &rest[len..];
                    continue;
                }
                if c == q {
                    quote = None;
                }
            }
            (Some(end), None) => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                } else if rest.starts_with(end) {
                    close = None;
                    out.push_str(end);
                    rest = &rest[end.len()..];
                    continue;
                }
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

// ---------------------------------------------------------------------------------------
// Python printing: str() and repr()

fn py_str(out: &mut String, v: &JValue) {
    match v.kind() {
        ValueKind::String => out.push_str(v.as_str().unwrap_or_default()),
        ValueKind::Undefined => {}
        _ => py_repr(out, v),
    }
}

fn py_repr(out: &mut String, v: &JValue) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => py_number(out, v, false),
        ValueKind::String => py_repr_str(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = v.try_iter() {
                for (i, item) in items.enumerate() {
                    if out.len() > MAX_RENDER_BYTES {
                        // The caller refuses the text; a lazily repeated sequence can be
                        // far longer than memory.
                        break;
                    }
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(entries) = map_entries_raw(v) {
                for (i, (k, val)) in entries.iter().enumerate() {
                    if out.len() > MAX_RENDER_BYTES {
                        break;
                    }
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(out, k);
                    out.push_str(": ");
                    py_repr(out, val);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

fn map_entries_raw(v: &JValue) -> std::result::Result<Vec<(JValue, JValue)>, minijinja::Error> {
    let mut out = Vec::new();
    for key in v.try_iter()? {
        let val = v.get_item(&key)?;
        out.push((key, val));
    }
    Ok(out)
}

fn py_repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_printable(c) => {
                let n = c as u32;
                let _ = if n < 0x100 {
                    write!(out, "\\x{n:02x}")
                } else if n < 0x10000 {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character, approximately: controls, separators other
/// than the ASCII space, and common format characters are not printable.
fn py_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !(c.is_control()
        || matches!(c as u32,
            0xA0 | 0xAD | 0x1680 | 0x2000..=0x200F | 0x2028..=0x202F | 0x205F..=0x2064
            | 0x3000 | 0xFEFF | 0xE000..=0xF8FF))
}

/// A number as Python prints it (`repr`); `json` spells non-finite floats as JSON does.
fn py_number(out: &mut String, v: &JValue, json: bool) {
    if v.is_integer() {
        let _ = write!(out, "{v}");
        return;
    }
    match f64::try_from(v.clone()) {
        Ok(f) => py_float(out, f, json),
        Err(_) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation below 1e-4 and
/// from 1e16 on.
fn py_float(out: &mut String, f: f64, json: bool) {
    if f.is_nan() {
        out.push_str(if json { "NaN" } else { "nan" });
        return;
    }
    if f.is_infinite() {
        out.push_str(match (json, f > 0.0) {
            (true, true) => "Infinity",
            (true, false) => "-Infinity",
            (false, true) => "inf",
            (false, false) => "-inf",
        });
        return;
    }
    let e = format!("{f:e}"); // e.g. "-1.2345e-5", "1e16"
    let (mantissa, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else if exp + 1 >= n {
            out.push_str(&digits);
            for _ in 0..(exp + 1 - n) {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            let split = (exp + 1) as usize;
            out.push_str(&digits[..split]);
            out.push('.');
            out.push_str(&digits[split..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
}

// ---------------------------------------------------------------------------------------
// tojson: Python's json.dumps

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(
    value: &JValue,
    positional: &[JValue],
    kwargs: Kwargs,
) -> std::result::Result<JValue, minijinja::Error> {
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > names.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut opts: [Option<JValue>; 4] = Default::default();
    for (i, v) in positional.iter().enumerate() {
        opts[i] = Some(v.clone());
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(v) = kwargs.get::<Option<JValue>>(name)? {
            opts[i] = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = opts;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.kind() == ValueKind::String => {
            Some(v.as_str().unwrap_or_default().to_string())
        }
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "indent must be an integer or a string",
                )
            })?;
            let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
            if n > MAX_RENDER_BYTES {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    too_large(),
                ));
            }
            Some(" ".repeat(n))
        }
    };
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none() && !v.is_undefined()) {
        Some(v) => {
            let parts: Vec<JValue> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "separators must be a pair of strings",
                    ))
                }
            }
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    json_dump(&mut out, value, &style, 0)?;
    Ok(JValue::from_safe_string(out))
}

fn json_dump(
    out: &mut String,
    v: &JValue,
    style: &JsonStyle,
    level: usize,
) -> std::result::Result<(), minijinja::Error> {
    let not_serializable = |kind: ValueKind| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: a value of type {kind} is not JSON serializable"),
        )
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => py_number(out, v, true),
        ValueKind::String => json_str(out, v.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            // Lazily: a repeated sequence (`messages * 100000000`) can be far longer than
            // memory, and the output limit stops it.
            let mut items = v.try_iter()?.peekable();
            if items.peek().is_none() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.enumerate() {
                if out.len() > MAX_RENDER_BYTES {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        too_large(),
                    ));
                }
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, level + 1);
                json_dump(out, &item, style, level + 1)?;
            }
            newline(out, style, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, JValue)> = Vec::new();
            for (k, val) in map_entries_raw(v)? {
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
                    ValueKind::Number => {
                        let mut s = String::new();
                        py_number(&mut s, &k, true);
                        s
                    }
                    kind => return Err(not_serializable(kind)),
                };
                entries.push((key, val));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, val)) in entries.iter().enumerate() {
                if out.len() > MAX_RENDER_BYTES {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        too_large(),
                    ));
                }
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, level + 1);
                json_str(out, k, style.ensure_ascii);
                out.push_str(&style.key_sep);
                json_dump(out, val, style, level + 1)?;
            }
            newline(out, style, level);
            out.push('}');
        }
        kind => return Err(not_serializable(kind)),
    }
    Ok(())
}

fn newline(out: &mut String, style: &JsonStyle, level: usize) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

/// A JSON string as Python's json module writes it.
fn json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------
// strftime_now

/// `strftime_now(format)`: the current time (UTC) formatted like Python's `strftime`
/// (`%Y %m %d %H %M %S %y %j %B %b %A %a %p %I %e %-d %-m %%`).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&format, secs)
}

pub(crate) fn strftime(format: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86400);
    let tod = unix_secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (tod / 3600, (tod / 60) % 60, tod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let month = MONTHS[(m - 1) as usize];
    let day = DAYS[weekday];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let no_pad = spec == Some('-');
        if no_pad {
            spec = chars.next();
        }
        let num = |out: &mut String, n: i64, width: usize| {
            let _ = if no_pad {
                write!(out, "{n}")
            } else {
                write!(out, "{n:0width$}")
            };
        };
        match spec {
            Some('Y') => num(&mut out, y, 4),
            Some('y') => num(&mut out, y.rem_euclid(100), 2),
            Some('m') => num(&mut out, m, 2),
            Some('d') => num(&mut out, d, 2),
            Some('e') => {
                let _ = write!(out, "{d:2}");
            }
            Some('H') => num(&mut out, hh, 2),
            Some('I') => num(&mut out, (hh + 11) % 12 + 1, 2),
            Some('M') => num(&mut out, mm, 2),
            Some('S') => num(&mut out, ss, 2),
            Some('j') => num(&mut out, yday, 3),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: serde_json::Value) -> String {
        let env = build_env(src).unwrap();
        env.get_template(TEMPLATE_NAME)
            .unwrap()
            .render(JValue::from(Serde(ctx)))
            .unwrap()
    }

    #[test]
    fn python_printing() {
        let out = render(
            "{{ a }}|{{ b }}|{{ c }}|{{ d }}|{{ e }}|{{ f }}",
            serde_json::json!({"a": true, "b": null, "c": {"k": [1, "x'y", false]}, "d": 1.0, "e": 1e20, "f": 0.0001}),
        );
        assert_eq!(out, "True|None|{'k': [1, \"x'y\", False]}|1.0|1e+20|0.0001");
    }

    #[test]
    fn floats_like_python() {
        let cases = [
            (1.5, "1.5"),
            (3.0, "3.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1e-5, "1e-05"),
            (0.00012, "0.00012"),
            (-2.5e-7, "-2.5e-07"),
            (0.1, "0.1"),
        ];
        for (f, want) in cases {
            let mut s = String::new();
            py_float(&mut s, f, false);
            assert_eq!(s, want, "{f}");
        }
    }

    #[test]
    fn tojson_like_python() {
        let ctx = serde_json::json!({"x": {"b": "é<&>\n\u{1}", "a": [1, 2.5, null, true], "e": {}, "l": []}});
        assert_eq!(
            render("{{ x | tojson }}", ctx.clone()),
            r#"{"a": [1, 2.5, null, true], "b": "é<&>\n\u0001", "e": {}, "l": []}"#
        );
        assert_eq!(
            render("{{ x.a | tojson(indent=2) }}", ctx.clone()),
            "[\n  1,\n  2.5,\n  null,\n  true\n]"
        );
        assert_eq!(
            render("{{ x.b | tojson(ensure_ascii=true) }}", ctx.clone()),
            r#""\u00e9<&>\n\u0001""#
        );
        assert_eq!(
            render("{{ x.a | tojson(separators=(',', ':')) }}", ctx),
            "[1,2.5,null,true]"
        );
    }

    #[test]
    fn generation_tags() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}"
        );
        let out = render(
            "{% for m in ms %}{% generation %}{{ m }}{% endgeneration %}{% endfor %}",
            serde_json::json!({"ms": ["a", "b"]}),
        );
        assert_eq!(out, "ab");
    }

    #[test]
    fn line_continuations_in_string_literals() {
        let src = "a\\\n{{ \"x\\\ny\" + 'q\\'\\\n' }}\\\n{# c\\\n #}";
        assert_eq!(
            drop_line_continuations(src),
            "a\\\n{{ \"xy\" + 'q\\'' }}\\\n{# c\\\n #}"
        );
        assert_eq!(render(src, serde_json::json!({})), "a\\\nxyq'\\\n");
    }

    #[test]
    fn dates() {
        // 2024-07-26 13:25:09 UTC, a Friday
        let t = 1_722_000_309;
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %A %j %-d %B %y %I%p", t),
            "26 Jul 2024 13:25:09 Friday 208 26 July 24 01PM"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    }
}
