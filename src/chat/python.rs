//! Values printed as Python prints them: `str()`, `repr()` and `json.dumps` (the
//! `tojson` filter).

use super::*;

pub(super) fn py_str(out: &mut String, v: &JValue) {
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
pub(super) fn py_float(out: &mut String, f: f64, json: bool) {
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
pub(super) fn tojson(
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
