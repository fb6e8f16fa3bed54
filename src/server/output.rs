//! Splitting a reply into reasoning, content and tool calls as it streams: `<think>...</think>`
//! becomes `reasoning_content`, each Qwen-style `<tool_call>{"name": ..., "arguments":
//! ...}</tool_call>` a tool call. Tags split across tokens are held back until they are
//! whole; text that only looks like the start of a tag is let through once it is not.

use serde_json::Value;

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_OPEN: &str = "<tool_call>";
const TOOL_CLOSE: &str = "</tool_call>";

/// A tool call the reply must make (`tool_choice: "required"`, or a named function):
/// enforced without a grammar, as local servers commonly do, by ending the prompt with the
/// opening of a call in the Qwen family's format (the format [`OutputParser`] reads), which
/// the model then continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForcedCall {
    /// Some call (`"required"`): the prompt ends with `<tool_call>\n`.
    Any,
    /// A call of this function: the prompt ends with
    /// `<tool_call>\n{"name": "NAME", "arguments": `.
    Named(String),
}

impl ForcedCall {
    /// The text of the call that the prompt ends with, after `<tool_call>`.
    pub fn body_start(&self) -> String {
        match self {
            ForcedCall::Any => "\n".into(),
            ForcedCall::Named(name) => {
                let quoted = serde_json::to_string(name).unwrap_or_else(|_| format!("{name:?}"));
                format!("\n{{\"name\": {quoted}, \"arguments\": ")
            }
        }
    }

    /// What to append to a rendered chat prompt (which ends with the assistant's
    /// generation prompt) so that the reply starts inside the call. A prompt that ends
    /// inside a `<think>` block the template opened (reasoning models) gets that block
    /// closed empty first, as Qwen's templates render a turn without reasoning
    /// (`<think>\n\n</think>\n\n`): a forced call is made without reasoning.
    pub fn prompt_suffix(&self, prompt: &str) -> String {
        let close = if !prompt.trim_end().ends_with(THINK_OPEN) {
            ""
        } else if prompt.ends_with('\n') {
            "\n</think>\n\n"
        } else {
            "\n\n</think>\n\n"
        };
        format!("{close}{TOOL_OPEN}{}", self.body_start())
    }
}

/// A tool call found in the output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// A piece of the reply, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Reasoning(String),
    Content(String),
    Tool(ToolCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing but whitespace yet: a `<think>` may open.
    Start,
    Reasoning,
    Content,
    /// Inside `<tool_call>`: buffered until it closes.
    Tool,
}

/// The streaming splitter.
#[derive(Debug)]
pub(crate) struct OutputParser {
    mode: Mode,
    buf: String,
    tools: bool,
    /// Content seen so far is only whitespace (leading whitespace is dropped).
    content_started: bool,
}

impl OutputParser {
    /// `in_reasoning`: the prompt opened a `<think>` block (the model's reply starts
    /// inside it). `tools`: parse tool calls (tools were offered).
    pub fn new(in_reasoning: bool, tools: bool) -> Self {
        OutputParser {
            mode: if in_reasoning {
                Mode::Reasoning
            } else {
                Mode::Start
            },
            buf: String::new(),
            tools,
            content_started: false,
        }
    }

    /// A parser of a reply that continues the opening of a forced tool call (the
    /// prompt ended with `<tool_call>` and `body_start`, [`ForcedCall::prompt_suffix`]):
    /// the reply's text is read as the rest of that call, then as content (and more calls)
    /// as usual.
    pub fn in_tool_call(body_start: &str) -> Self {
        OutputParser {
            mode: Mode::Tool,
            buf: body_start.to_string(),
            tools: true,
            content_started: false,
        }
    }

    /// Takes new text; returns what can be told now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.mode {
                Mode::Start => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK_OPEN) {
                        self.buf = rest.to_string();
                        self.mode = Mode::Reasoning;
                    } else if THINK_OPEN.starts_with(t) {
                        return out; // maybe a `<think>` still coming
                    } else {
                        self.mode = Mode::Content;
                    }
                }
                Mode::Reasoning => match self.buf.find(THINK_CLOSE) {
                    Some(i) => {
                        let r = self.buf[..i].to_string();
                        self.buf.drain(..i + THINK_CLOSE.len());
                        push_text(&mut out, Piece::Reasoning(r));
                        self.mode = Mode::Content;
                    }
                    None => {
                        let r = take_safe(&mut self.buf, &[THINK_CLOSE]);
                        push_text(&mut out, Piece::Reasoning(r));
                        return out;
                    }
                },
                Mode::Content => {
                    let found = if self.tools {
                        self.buf.find(TOOL_OPEN)
                    } else {
                        None
                    };
                    match found {
                        Some(i) => {
                            let c = self.buf[..i].to_string();
                            self.buf.drain(..i + TOOL_OPEN.len());
                            self.content(&mut out, c);
                            self.mode = Mode::Tool;
                        }
                        None => {
                            let c = if self.tools {
                                take_safe(&mut self.buf, &[TOOL_OPEN])
                            } else {
                                std::mem::take(&mut self.buf)
                            };
                            self.content(&mut out, c);
                            return out;
                        }
                    }
                }
                Mode::Tool => match self.buf.find(TOOL_CLOSE) {
                    Some(i) => {
                        let body = self.buf[..i].to_string();
                        self.buf.drain(..i + TOOL_CLOSE.len());
                        match parse_tool_call(&body) {
                            Some(call) => out.push(Piece::Tool(call)),
                            // Not a call after all: keep it as text.
                            None => {
                                self.content(&mut out, format!("{TOOL_OPEN}{body}{TOOL_CLOSE}"))
                            }
                        }
                        self.mode = Mode::Content;
                    }
                    None => return out,
                },
            }
        }
    }

    /// The end of the reply: whatever was held back.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        match self.mode {
            Mode::Reasoning => push_text(&mut out, Piece::Reasoning(rest)),
            Mode::Start | Mode::Content => self.content(&mut out, rest),
            Mode::Tool => match parse_tool_call(&rest) {
                // A call cut short of its closing tag but complete JSON.
                Some(call) => out.push(Piece::Tool(call)),
                None => self.content(&mut out, format!("{TOOL_OPEN}{rest}")),
            },
        }
        self.mode = Mode::Content;
        out
    }

    fn content(&mut self, out: &mut Vec<Piece>, text: String) {
        let text = if self.content_started {
            text
        } else {
            text.trim_start().to_string()
        };
        if !text.is_empty() {
            self.content_started = true;
            push_text(out, Piece::Content(text));
        }
    }
}

/// Appends a text piece unless empty, merged into the previous one of its kind.
fn push_text(out: &mut Vec<Piece>, p: Piece) {
    match (out.last_mut(), p) {
        (_, Piece::Reasoning(s)) | (_, Piece::Content(s)) if s.is_empty() => {}
        (Some(Piece::Reasoning(a)), Piece::Reasoning(b)) => a.push_str(&b),
        (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
        (_, p) => out.push(p),
    }
}

/// Takes the text of `buf` that cannot be the start of one of `tags`, leaving a tail that
/// might be.
fn take_safe(buf: &mut String, tags: &[&str]) -> String {
    let keep = tags
        .iter()
        .filter_map(|tag| {
            (1..tag.len())
                .rev()
                .filter(|&k| tag.is_char_boundary(k))
                .find(|&k| buf.ends_with(&tag[..k]))
        })
        .max()
        .unwrap_or(0);
    let cut = buf.len() - keep;
    let out = buf[..cut].to_string();
    buf.drain(..cut);
    out
}

/// `{"name": "...", "arguments": {...}}` (arguments an object or a JSON string).
fn parse_tool_call(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// A whole reply split at once.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Parsed {
    pub reasoning: Option<String>,
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

impl Parsed {
    /// Gathers pieces.
    pub fn add(&mut self, pieces: Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Reasoning(s) => self.reasoning.get_or_insert_with(String::new).push_str(&s),
                Piece::Content(s) => self.content.get_or_insert_with(String::new).push_str(&s),
                Piece::Tool(t) => self.tool_calls.push(t),
            }
        }
    }

    /// With surrounding whitespace trimmed from the texts (empty ones become `None`; the
    /// content is `Some("")` when there is nothing else, as OpenAI sends it).
    pub fn trimmed(mut self) -> Self {
        let trim = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        self.reasoning = trim(self.reasoning);
        self.content = trim(self.content);
        if self.content.is_none() && self.tool_calls.is_empty() {
            self.content = Some(String::new());
        }
        self
    }
}

/// Splits a whole reply.
#[cfg(test)]
pub(crate) fn parse_all(text: &str, in_reasoning: bool, tools: bool) -> Parsed {
    parse_with(OutputParser::new(in_reasoning, tools), text)
}

/// Splits a whole reply with `p` (a new parser).
pub(crate) fn parse_with(mut p: OutputParser, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    parsed.add(p.push(text));
    parsed.add(p.finish());
    parsed.trimmed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments: args.into(),
        }
    }

    #[test]
    fn reasoning_content_and_tool_calls() {
        let text = "<think>\nLet me look.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"now\", \"arguments\": \"{}\"}</tool_call>";
        let p = parse_all(text, false, true);
        assert_eq!(p.reasoning.as_deref(), Some("Let me look."));
        assert_eq!(p.content.as_deref(), Some("Checking."));
        assert_eq!(
            p.tool_calls,
            vec![
                call("get_weather", "{\"city\":\"Paris\"}"),
                call("now", "{}")
            ]
        );
    }

    #[test]
    fn without_tools_tags_stay_text() {
        let text = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
        let p = parse_all(text, false, false);
        assert_eq!(p.content.as_deref(), Some(text));
        assert!(p.tool_calls.is_empty());
    }

    #[test]
    fn a_prompt_that_opened_think() {
        let p = parse_all("thinking...</think>answer", true, false);
        assert_eq!(p.reasoning.as_deref(), Some("thinking..."));
        assert_eq!(p.content.as_deref(), Some("answer"));
        // Cut off while thinking: all reasoning, empty content.
        let p = parse_all("still thinking", true, false);
        assert_eq!(p.reasoning.as_deref(), Some("still thinking"));
        assert_eq!(p.content.as_deref(), Some(""));
    }

    #[test]
    fn bad_tool_json_stays_text() {
        let text = "<tool_call>not json</tool_call>";
        let p = parse_all(text, false, true);
        assert_eq!(p.content.as_deref(), Some(text));
        assert!(p.tool_calls.is_empty());
    }

    /// Fed one character at a time, the pieces join to what the whole text gives, and no
    /// tag leaks into a text piece.
    #[test]
    fn streaming_equals_whole() {
        let text = "<think>a < b</think>\n\nx <tool <tool_call>{\"name\": \"f\", \"arguments\": {\"k\": 1}}</tool_call> y <thi";
        let whole = parse_all(text, false, true);
        let mut p = OutputParser::new(false, true);
        let mut parsed = Parsed::default();
        for c in text.chars() {
            let pieces = p.push(&c.to_string());
            for piece in &pieces {
                if let Piece::Content(s) | Piece::Reasoning(s) = piece {
                    assert!(!s.contains("<tool_call>") && !s.contains("</think>"), "{s}");
                }
            }
            parsed.add(pieces);
        }
        parsed.add(p.finish());
        assert_eq!(parsed.trimmed(), whole);
        assert_eq!(whole.reasoning.as_deref(), Some("a < b"));
        assert_eq!(whole.content.as_deref(), Some("x <tool  y <thi"));
        assert_eq!(whole.tool_calls, vec![call("f", "{\"k\":1}")]);
    }

    /// The prompt ends with a forced call's opening (after the template's generation
    /// prompt; a `<think>` it opened is closed empty first), and a reply that continues
    /// it well is a call, whole and streamed; one that does not stays text.
    #[test]
    fn a_forced_tool_call_continues_the_prompt() {
        let any = ForcedCall::Any;
        let named = ForcedCall::Named("get_weather".into());
        let gen = "<|im_start|>assistant\n";
        assert_eq!(any.prompt_suffix(gen), "<tool_call>\n");
        assert_eq!(
            named.prompt_suffix(gen),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
        );
        assert_eq!(
            any.prompt_suffix("<|im_start|>assistant\n<think>\n"),
            "\n</think>\n\n<tool_call>\n"
        );
        assert_eq!(
            any.prompt_suffix("<|im_start|>assistant\n<think>"),
            "\n\n</think>\n\n<tool_call>\n"
        );
        // A closed think block (thinking turned off) stays as it is.
        assert_eq!(
            any.prompt_suffix("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
            "<tool_call>\n"
        );
        // Names are JSON strings.
        assert_eq!(
            ForcedCall::Named("a\"b".into()).body_start(),
            "\n{\"name\": \"a\\\"b\", \"arguments\": "
        );

        let cases = [
            (
                &any,
                "{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
                call("get_time", "{}"),
            ),
            (
                &named,
                "{\"city\": \"Paris\"}}\n</tool_call>",
                call("get_weather", "{\"city\":\"Paris\"}"),
            ),
            // Cut short of the closing tag, but whole JSON.
            (
                &named,
                "{\"city\": \"Rome\"}}",
                call("get_weather", "{\"city\":\"Rome\"}"),
            ),
        ];
        for (forced, reply, want) in cases {
            let whole = parse_with(OutputParser::in_tool_call(&forced.body_start()), reply);
            assert_eq!(whole.tool_calls, vec![want.clone()], "{reply}");
            assert_eq!(whole.content, None, "{reply}");
            let mut p = OutputParser::in_tool_call(&forced.body_start());
            let mut parsed = Parsed::default();
            for c in reply.chars() {
                parsed.add(p.push(&c.to_string()));
            }
            parsed.add(p.finish());
            assert_eq!(parsed.trimmed(), whole, "{reply}");
        }
        // A second call after the forced one, then text.
        let p = parse_with(
            OutputParser::in_tool_call(&any.body_start()),
            "{\"name\": \"a\"}</tool_call>\n<tool_call>{\"name\": \"b\"}</tool_call> done",
        );
        assert_eq!(p.tool_calls, vec![call("a", "{}"), call("b", "{}")]);
        assert_eq!(p.content.as_deref(), Some("done"));
        // Not JSON: the opening and the reply come back as text.
        let p = parse_with(OutputParser::in_tool_call(&any.body_start()), "bako bimu");
        assert!(p.tool_calls.is_empty());
        assert_eq!(p.content.as_deref(), Some("<tool_call>\nbako bimu"));
    }

    #[test]
    fn plain_text_passes_through_at_once() {
        let mut p = OutputParser::new(false, true);
        assert_eq!(p.push("Hello"), vec![Piece::Content("Hello".into())]);
        assert_eq!(p.push(" world <"), vec![Piece::Content(" world ".into())]);
        assert_eq!(p.push("b"), vec![Piece::Content("<b".into())]);
    }
}
