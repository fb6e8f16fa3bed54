//! The template environment: transformers' Jinja settings, `raise_exception`,
//! `strftime_now`, the `{% generation %}` tag and the source rewrites it needs.

use super::*;

pub(super) fn build_env(source: &str) -> std::result::Result<Environment<'static>, String> {
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
pub(super) struct Raised(pub(super) String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

pub(super) fn raise_exception(message: String) -> std::result::Result<JValue, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' assistant-mask extension)
/// become `{% if true %}` / `{% endif %}`, keeping whitespace control.
pub(super) fn rewrite_generation_tags(src: &str) -> String {
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
pub(super) fn drop_line_continuations(src: &str) -> String {
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
