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
use std::sync::{Arc, OnceLock};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value as JValue, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokenizer::SpecialTokens;

mod env;
mod python;
mod strftime;
mod templates;

use env::*;
use python::*;
use strftime::*;
pub use templates::ChatTemplates;

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
