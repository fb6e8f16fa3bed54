//! Reading trace files: every malformation is an [`Error::RoutingTrace`] naming the line
//! (and the token and layer where it is in one), lines are read with a length limit, and
//! nothing is allocated from a number in the file before the header is validated.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use super::trace::{
    RoutingTrace, TraceHeader, MAX_TRACE_EXPERTS, MAX_TRACE_LAYERS, TRACE_MAGIC, TRACE_VERSION,
};
use crate::error::{Error, Result};

/// Longest header line, in bytes.
const MAX_HEADER_LINE: usize = 64 << 10;

impl RoutingTrace {
    /// Reads a trace file (the format is in the [module docs](crate::routing)). A malformed
    /// file is an [`Error::RoutingTrace`] naming the line, and where it applies the token
    /// and the layer; a file that cannot be read is an [`Error::Io`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        RoutingTrace::from_reader(std::io::BufReader::new(file), path)
    }

    /// Reads a trace in the trace file format from `reader`; `source` names it in errors.
    pub fn from_reader(reader: impl BufRead, source: impl AsRef<Path>) -> Result<Self> {
        let mut r = Lines {
            reader,
            path: source.as_ref().to_path_buf(),
            line: 0,
            buf: Vec::new(),
        };
        let header = read_header(&mut r)?;
        let seen_len = header.num_experts();
        let token_line = header.per_token() * 8 + header.moe_layers().len() * 4 + 1024;
        let mut trace = RoutingTrace::new(header);
        let mut ids: Vec<u16> = Vec::with_capacity(trace.header().per_token());
        // Per expert, the last (token, layer) that chose it (1-based; 0 never).
        let mut seen = vec![0u64; seen_len];
        let path = r.path.clone();
        while let Some((line, text)) = r.next(token_line)? {
            if skip(text) {
                continue;
            }
            let token = trace.len();
            let at = |layer: Option<usize>, reason: String| Error::RoutingTrace {
                path: path.clone(),
                line: Some(line),
                token: Some(token),
                layer,
                reason,
            };
            let h = trace.header();
            let groups: Vec<&str> = text.split('|').collect();
            if groups.len() != h.moe_layers().len() {
                return Err(at(
                    None,
                    format!(
                        "{} layers of experts (separated by '|'), expected {} (one per MoE layer)",
                        groups.len(),
                        h.moe_layers().len()
                    ),
                ));
            }
            ids.clear();
            for (i, (group, &layer)) in groups.iter().zip(h.moe_layers()).enumerate() {
                let stamp = (token * h.moe_layers().len() + i) as u64 + 1;
                let before = ids.len();
                for word in group.split_ascii_whitespace() {
                    if ids.len() - before == h.top_k() {
                        return Err(at(
                            Some(layer),
                            format!("more than top_k {} experts", h.top_k()),
                        ));
                    }
                    let id: u32 = word
                        .parse()
                        .map_err(|_| at(Some(layer), format!("{word:?} is not an expert id")))?;
                    let Some(last) = seen.get_mut(id as usize) else {
                        return Err(at(
                            Some(layer),
                            format!(
                                "expert id {id} is not below num_experts {}",
                                h.num_experts()
                            ),
                        ));
                    };
                    if *last == stamp {
                        return Err(at(Some(layer), format!("expert {id} is chosen twice")));
                    }
                    *last = stamp;
                    // Below num_experts, at most MAX_TRACE_EXPERTS: fits 16 bits.
                    ids.push(id as u16);
                }
                if ids.len() - before != h.top_k() {
                    return Err(at(
                        Some(layer),
                        format!(
                            "{} experts, expected top_k {}",
                            ids.len() - before,
                            h.top_k()
                        ),
                    ));
                }
            }
            trace.push_unchecked(&ids);
        }
        Ok(trace)
    }
}

/// Blank and comment lines.
fn skip(text: &str) -> bool {
    let t = text.trim();
    t.is_empty() || t.starts_with('#')
}

/// Lines of at most a given length.
struct Lines<R> {
    reader: R,
    path: PathBuf,
    /// The line last read, from 1.
    line: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn error(&self, reason: impl Into<String>) -> Error {
        Error::RoutingTrace {
            path: self.path.clone(),
            line: (self.line > 0).then_some(self.line),
            token: None,
            layer: None,
            reason: reason.into(),
        }
    }

    /// The next line's number and text without its line end, or `None` at the end of the
    /// file; longer than `cap` bytes is an error.
    fn next(&mut self, cap: usize) -> Result<Option<(usize, &str)>> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(cap as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if self.buf.len() > cap {
            return Err(self.error(format!("line is longer than {cap} bytes")));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        match std::str::from_utf8(&self.buf) {
            Ok(s) => Ok(Some((self.line, s))),
            Err(_) => Err(self.error("line is not UTF-8 text")),
        }
    }
}

/// The magic line, then `key value` lines up to `tokens`.
fn read_header<R: BufRead>(r: &mut Lines<R>) -> Result<TraceHeader> {
    let first = match r.next(MAX_HEADER_LINE)? {
        Some((_, t)) => t.trim().to_string(),
        None => return Err(r.error("the file is empty")),
    };
    let mut words = first.split_ascii_whitespace();
    if words.next() != Some(TRACE_MAGIC) {
        return Err(r.error(format!(
            "not a routing trace: the first line must be \"{TRACE_MAGIC} {TRACE_VERSION}\""
        )));
    }
    match (words.next().map(str::parse::<u32>), words.next()) {
        (Some(Ok(TRACE_VERSION)), None) => {}
        (Some(Ok(v)), None) => {
            return Err(r.error(format!(
                "format version {v} is not supported (this moestream reads version {TRACE_VERSION})"
            )))
        }
        _ => {
            return Err(r.error(format!(
                "the first line must be \"{TRACE_MAGIC} {TRACE_VERSION}\""
            )))
        }
    }
    let mut model_type: Option<String> = None;
    let mut numbers: [Option<usize>; 3] = [None; 3]; // num_layers, num_experts, top_k
    let mut moe_layers: Option<Vec<usize>> = None;
    loop {
        let Some((_, text)) = r.next(MAX_HEADER_LINE)? else {
            return Err(r.error("the header ends without a \"tokens\" line"));
        };
        if skip(text) {
            continue;
        }
        let text = text.trim().to_string();
        if text == "tokens" {
            break;
        }
        let (key, value) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let value = value.trim();
        let duplicate = || r.error(format!("{key} is given twice"));
        match key {
            "model_type" => {
                if model_type.replace(value.to_string()).is_some() {
                    return Err(duplicate());
                }
            }
            "num_layers" | "num_experts" | "top_k" => {
                let i = ["num_layers", "num_experts", "top_k"]
                    .iter()
                    .position(|&k| k == key)
                    .unwrap_or(0);
                let n: usize = value
                    .parse()
                    .map_err(|_| r.error(format!("{key} {value:?} is not a whole number")))?;
                if numbers[i].replace(n).is_some() {
                    return Err(duplicate());
                }
            }
            "moe_layers" => {
                let list = parse_layers(value).map_err(|reason| r.error(reason))?;
                if moe_layers.replace(list).is_some() {
                    return Err(duplicate());
                }
            }
            _ => {
                return Err(r.error(format!(
                    "unknown header key {key:?} (expected model_type, num_layers, moe_layers, num_experts, top_k, then \"tokens\")"
                )))
            }
        }
    }
    let missing = |what: &str| r.error(format!("the header has no {what}"));
    let header = TraceHeader::new(
        model_type.ok_or_else(|| missing("model_type"))?,
        numbers[0].ok_or_else(|| missing("num_layers"))?,
        moe_layers.ok_or_else(|| missing("moe_layers"))?,
        numbers[1].ok_or_else(|| missing("num_experts"))?,
        numbers[2].ok_or_else(|| missing("top_k"))?,
    )
    .map_err(|e| match e {
        Error::InvalidArgument(reason) => r.error(reason),
        other => other,
    })?;
    debug_assert!(header.num_experts() <= MAX_TRACE_EXPERTS);
    Ok(header)
}

/// `0-3,5,7-9` as layers, each below [`MAX_TRACE_LAYERS`] before any range is expanded.
fn parse_layers(value: &str) -> std::result::Result<Vec<usize>, String> {
    let mut out: Vec<usize> = Vec::new();
    let number = |s: &str| -> std::result::Result<usize, String> {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("moe_layers: {s:?} is not a layer number"))?;
        if n >= MAX_TRACE_LAYERS {
            return Err(format!(
                "moe_layers: layer {n} is not below {MAX_TRACE_LAYERS}"
            ));
        }
        Ok(n)
    };
    for part in value.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if a > b {
            return Err(format!("moe_layers: range {a}-{b} runs backwards"));
        }
        if out.last().is_some_and(|&l| a <= l) {
            return Err(format!(
                "moe_layers must be strictly increasing ({a} after {})",
                out.last().copied().unwrap_or(0)
            ));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "moestream-routing-trace 1\nmodel_type m\nnum_layers 3\nmoe_layers 0,2\nnum_experts 4\ntop_k 2\ntokens\n";

    fn read(text: &str) -> Result<RoutingTrace> {
        RoutingTrace::from_reader(text.as_bytes(), "t.trace")
    }

    fn err(text: &str) -> (Option<usize>, Option<usize>, Option<usize>, String) {
        match read(text) {
            Err(Error::RoutingTrace {
                line,
                token,
                layer,
                reason,
                path,
            }) => {
                assert_eq!(path, PathBuf::from("t.trace"));
                (line, token, layer, reason)
            }
            other => panic!("expected a routing trace error, got {other:?}"),
        }
    }

    #[test]
    fn reads_header_tokens_comments_and_crlf() {
        let t = read(&format!("{HEAD}# a comment\n0 1 | 3 2\r\n\n  2 3|0 1  \n")).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.header().moe_layers(), &[0, 2]);
        assert_eq!(t.experts(1, 0), Some(&[2u16, 3][..]));
        assert_eq!(t.experts(1, 2), Some(&[0u16, 1][..]));
        // Header keys in any order; a header without tokens is an empty trace.
        let t = read("moestream-routing-trace 1\ntop_k 1\nnum_experts 2\nmoe_layers 0-1\nnum_layers 2\nmodel_type x\ntokens\n").unwrap();
        assert!(t.is_empty());
        assert_eq!(t.header().moe_layers(), &[0, 1]);
    }

    #[test]
    fn bad_tokens_name_line_token_and_layer() {
        for (body, want_layer, what) in [
            ("0 1 | 3 4\n", Some(2), "not below num_experts 4"),
            ("0 0 | 3 2\n", Some(0), "chosen twice"),
            ("0 1 | 3\n", Some(2), "1 experts, expected top_k 2"),
            ("0 1 2 | 3 1\n", Some(0), "more than top_k 2"),
            ("0 1\n", None, "1 layers of experts"),
            ("0 1 | 3 2 | 1 2\n", None, "3 layers"),
            ("0 x | 3 2\n", Some(0), "\"x\" is not an expert id"),
            ("0 -1 | 3 2\n", Some(0), "not an expert id"),
            (
                "0 99999999999999999999 | 3 2\n",
                Some(0),
                "not an expert id",
            ),
        ] {
            let (line, token, layer, reason) = err(&format!("{HEAD}1 0 | 2 3\n{body}"));
            assert_eq!(line, Some(9), "{body}: {reason}");
            assert_eq!(token, Some(1), "{body}");
            assert_eq!(layer, want_layer, "{body}: {reason}");
            assert!(reason.contains(what), "{body}: {reason}");
        }
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        for (text, line, what) in [
            ("", None, "empty"),
            ("hello\n", Some(1), "not a routing trace"),
            ("moestream-routing-trace 2\n", Some(1), "version 2"),
            ("moestream-routing-trace one\n", Some(1), "first line"),
            ("moestream-routing-trace 1\nmodel_type m\n", Some(2), "without a \"tokens\" line"),
            ("moestream-routing-trace 1\ncolour blue\n", Some(2), "unknown header key"),
            ("moestream-routing-trace 1\ntop_k 2\ntop_k 2\n", Some(3), "twice"),
            ("moestream-routing-trace 1\ntop_k -2\n", Some(2), "whole number"),
            ("moestream-routing-trace 1\nmoe_layers 0-99999999\n", Some(2), "not below 4096"),
            ("moestream-routing-trace 1\nmoe_layers 3-1\n", Some(2), "backwards"),
            ("moestream-routing-trace 1\nmoe_layers 1,1\n", Some(2), "increasing"),
            ("moestream-routing-trace 1\ntokens\n", Some(2), "no model_type"),
            (
                "moestream-routing-trace 1\nmodel_type m\nnum_layers 2\nmoe_layers 0-2\nnum_experts 4\ntop_k 2\ntokens\n",
                Some(7),
                "not below num_layers",
            ),
            (
                "moestream-routing-trace 1\nmodel_type m\nnum_layers 2\nmoe_layers 0\nnum_experts 18446744073709551615\ntop_k 2\ntokens\n",
                Some(7),
                "num_experts",
            ),
        ] {
            let (l, token, layer, reason) = err(text);
            assert_eq!((l, token, layer), (line, None, None), "{text}: {reason}");
            assert!(reason.contains(what), "{text}: {reason}");
        }
    }

    #[test]
    fn long_lines_and_binary_are_refused_without_reading_them_whole() {
        // A 100 MB "line" of digits is refused after the limit, not buffered whole.
        struct Endless(usize);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0);
                buf[..n].fill(b'7');
                self.0 -= n;
                Ok(n)
            }
        }
        let reader = std::io::BufReader::new(HEAD.as_bytes().chain(Endless(100 << 20)));
        match RoutingTrace::from_reader(reader, "big") {
            Err(Error::RoutingTrace { line, reason, .. }) => {
                assert_eq!(line, Some(8));
                assert!(reason.contains("longer than"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let (line, _, _, reason) = err("moestream-routing-trace 1\nmodel_type a\u{1}b\nnum_layers 1\nmoe_layers 0\nnum_experts 2\ntop_k 1\ntokens\n");
        assert_eq!(line, Some(7));
        assert!(reason.contains("model_type"), "{reason}");
        let bytes = [HEAD.as_bytes(), &[0xff, 0xfe, b'\n']].concat();
        match RoutingTrace::from_reader(&bytes[..], "bin") {
            Err(Error::RoutingTrace { line, reason, .. }) => {
                assert_eq!(line, Some(8));
                assert!(reason.contains("UTF-8"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn written_traces_read_back_equal() {
        let h = TraceHeader::new("qwen3_moe", 5, vec![1, 2, 3, 4], 300, 3).unwrap();
        let mut t = RoutingTrace::new(h);
        for i in 0..20u32 {
            let ids: Vec<u32> = (0..12).map(|j| (i * 7 + j * 31) % 300).collect();
            t.push_token(&ids).unwrap();
        }
        let mut out = Vec::new();
        t.write_to(&mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with(
                "moestream-routing-trace 1\nmodel_type qwen3_moe\nnum_layers 5\nmoe_layers 1-4\n"
            ),
            "{text}"
        );
        assert_eq!(RoutingTrace::from_reader(&out[..], "x").unwrap(), t);
    }
}
