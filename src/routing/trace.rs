//! [`RoutingTrace`] and its [`TraceHeader`]: the experts each token chose in each MoE layer,
//! and writing them as a trace file (reading: `read.rs`).

use std::io::Write;
use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// The first word of a trace file; the format version follows it.
pub const TRACE_MAGIC: &str = "moestream-routing-trace";

/// The trace format version this crate writes and reads.
pub const TRACE_VERSION: u32 = 1;

/// Most decoder layers a trace may describe.
pub const MAX_TRACE_LAYERS: usize = 4096;

/// Most experts per layer a trace may describe (ids are stored in 16 bits).
pub const MAX_TRACE_EXPERTS: usize = 65536;

/// Most experts a token may choose per layer.
pub const MAX_TRACE_TOP_K: usize = 256;

/// Longest `model_type` in a trace header.
const MAX_MODEL_TYPE: usize = 256;

/// What a trace's expert ids refer to: the model type, its decoder and MoE layers, and how
/// many experts each MoE layer has and chooses per token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    model_type: String,
    num_layers: usize,
    moe_layers: Vec<usize>,
    num_experts: usize,
    top_k: usize,
}

impl TraceHeader {
    /// A header for a model of `num_layers` decoder layers whose `moe_layers` (strictly
    /// increasing, each below `num_layers`) have `num_experts` experts (at most
    /// [`MAX_TRACE_EXPERTS`]) of which a token chooses `top_k` (1 to
    /// [`MAX_TRACE_TOP_K`], at most `num_experts`). `model_type` is informational (a
    /// `config.json` spelling such as `qwen3_moe`; one word of at most 256 characters).
    /// An [`Error::InvalidArgument`] says what is out of range.
    pub fn new(
        model_type: impl Into<String>,
        num_layers: usize,
        moe_layers: Vec<usize>,
        num_experts: usize,
        top_k: usize,
    ) -> Result<Self> {
        let h = TraceHeader {
            model_type: model_type.into(),
            num_layers,
            moe_layers,
            num_experts,
            top_k,
        };
        h.check().map_err(Error::InvalidArgument)?;
        Ok(h)
    }

    /// The header of a trace of `cfg`'s routing: its model type, layers, experts and
    /// `num_experts_per_tok` (a shared expert is not a routing choice and is not traced).
    pub fn for_model(cfg: &ModelConfig) -> Result<Self> {
        TraceHeader::new(
            cfg.model_type.clone(),
            cfg.num_hidden_layers,
            cfg.moe_layers(),
            cfg.num_experts,
            cfg.num_experts_per_tok,
        )
    }

    /// Checks the fields; the reason names the first one out of range.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let t = &self.model_type;
        if t.is_empty()
            || t.len() > MAX_MODEL_TYPE
            || t.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "model_type {t:?} must be one word of 1 to {MAX_MODEL_TYPE} characters"
            ));
        }
        if !(1..=MAX_TRACE_LAYERS).contains(&self.num_layers) {
            return Err(format!(
                "num_layers {} is not in 1..={MAX_TRACE_LAYERS}",
                self.num_layers
            ));
        }
        if self.moe_layers.is_empty() {
            return Err("moe_layers is empty".into());
        }
        for w in self.moe_layers.windows(2) {
            if w[1] <= w[0] {
                return Err(format!(
                    "moe_layers must be strictly increasing ({} after {})",
                    w[1], w[0]
                ));
            }
        }
        if let Some(&last) = self.moe_layers.last() {
            if last >= self.num_layers {
                return Err(format!(
                    "MoE layer {last} is not below num_layers {}",
                    self.num_layers
                ));
            }
        }
        if !(1..=MAX_TRACE_EXPERTS).contains(&self.num_experts) {
            return Err(format!(
                "num_experts {} is not in 1..={MAX_TRACE_EXPERTS}",
                self.num_experts
            ));
        }
        if self.top_k == 0 || self.top_k > MAX_TRACE_TOP_K.min(self.num_experts) {
            return Err(format!(
                "top_k {} is not in 1..={} (at most num_experts {} and {MAX_TRACE_TOP_K})",
                self.top_k,
                MAX_TRACE_TOP_K.min(self.num_experts),
                self.num_experts
            ));
        }
        Ok(())
    }

    /// The model type the trace was recorded on (or made for).
    pub fn model_type(&self) -> &str {
        &self.model_type
    }

    /// Decoder layers of the model.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// The decoder layers with routed experts, in order.
    pub fn moe_layers(&self) -> &[usize] {
        &self.moe_layers
    }

    /// Routed experts per MoE layer.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    /// Experts a token chooses per MoE layer.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Expert ids per token: `top_k` for each MoE layer.
    pub(crate) fn per_token(&self) -> usize {
        self.moe_layers.len() * self.top_k
    }
}

/// The routing of a sequence of tokens: for each token, for each MoE layer, the experts it
/// chose (distinct, in the router's rank order when recorded from a model).
///
/// Record one from a model with [`Session::record_routing`](crate::Session::record_routing),
/// make one with stated statistics with [`RoutingTrace::generate`], keep it as a text file
/// ([`write`](Self::write), [`read`](Self::read); the format is in the
/// [module docs](crate::routing)), and replay it through a cache policy
/// ([`simulate()`](crate::routing::simulate())) or through a model's expert cache and storage
/// ([`Model::replay_routing`](crate::Model::replay_routing)).
///
/// ```
/// # fn main() -> moestream::Result<()> {
/// use moestream::routing::{RoutingTrace, TraceHeader};
/// // 2 decoder layers, both MoE, 8 experts, top-2.
/// let header = TraceHeader::new("mixtral", 2, vec![0, 1], 8, 2)?;
/// let mut trace = RoutingTrace::new(header);
/// trace.push_token(&[3, 5, 1, 0])?; // layer 0 chose 3 and 5, layer 1 chose 1 and 0
/// trace.push_token(&[3, 7, 1, 2])?;
/// assert_eq!(trace.len(), 2);
/// assert_eq!(trace.experts(1, 0), Some(&[3u16, 7][..]));
///
/// let mut file = Vec::new();
/// trace.write_to(&mut file)?;
/// let back = RoutingTrace::from_reader(&file[..], "in memory")?;
/// assert_eq!(back, trace);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTrace {
    header: TraceHeader,
    /// Token-major, then MoE layer, then choice.
    ids: Vec<u16>,
}

impl RoutingTrace {
    /// An empty trace of `header`'s shape.
    pub fn new(header: TraceHeader) -> Self {
        RoutingTrace {
            header,
            ids: Vec::new(),
        }
    }

    /// What the expert ids refer to.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Tokens in the trace.
    pub fn len(&self) -> usize {
        self.ids.len() / self.header.per_token().max(1)
    }

    /// Whether the trace holds no token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends a token's routing: `top_k` expert ids for each MoE layer in order
    /// (`moe_layers().len() * top_k` in all), distinct within a layer and below
    /// `num_experts`. An [`Error::InvalidArgument`] names the layer otherwise, and the
    /// trace is unchanged.
    pub fn push_token(&mut self, experts: &[u32]) -> Result<()> {
        check_token(&self.header, experts).map_err(|(layer, reason)| {
            Error::InvalidArgument(format!("routing of layer {layer}: {reason}"))
        })?;
        self.ids.extend(experts.iter().map(|&e| e as u16));
        Ok(())
    }

    /// The experts token `token` chose in decoder layer `layer`, or `None` when the trace
    /// has no such token or `layer` is not a MoE layer.
    pub fn experts(&self, token: usize, layer: usize) -> Option<&[u16]> {
        let h = &self.header;
        let i = h.moe_layers.binary_search(&layer).ok()?;
        let start = (token * h.moe_layers.len() + i) * h.top_k;
        self.ids.get(start..start + h.top_k)
    }

    /// Every id of token `token`, MoE layer by MoE layer.
    pub(crate) fn token(&self, token: usize) -> &[u16] {
        let n = self.header.per_token();
        &self.ids[token * n..(token + 1) * n]
    }

    /// Keeps the first `tokens` tokens.
    pub(crate) fn truncate(&mut self, tokens: usize) {
        self.ids.truncate(tokens * self.header.per_token());
    }

    /// Appends ids already checked (a generator's).
    pub(crate) fn push_unchecked(&mut self, experts: &[u16]) {
        self.ids.extend_from_slice(experts);
    }

    /// Writes the trace as a trace file at `path` (created or replaced).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut w = std::io::BufWriter::new(file);
        self.write_to(&mut w).map_err(|e| match e {
            Error::Io { cause, .. } => Error::io(path, cause),
            other => other,
        })?;
        w.flush().map_err(|e| Error::io(path, e))
    }

    /// Writes the trace in the trace file format to `w`.
    pub fn write_to(&self, mut w: impl Write) -> Result<()> {
        let io = |e| Error::io("<routing trace writer>", e);
        let h = &self.header;
        writeln!(w, "{TRACE_MAGIC} {TRACE_VERSION}").map_err(io)?;
        writeln!(w, "model_type {}", h.model_type).map_err(io)?;
        writeln!(w, "num_layers {}", h.num_layers).map_err(io)?;
        writeln!(w, "moe_layers {}", layer_list(&h.moe_layers)).map_err(io)?;
        writeln!(w, "num_experts {}", h.num_experts).map_err(io)?;
        writeln!(w, "top_k {}", h.top_k).map_err(io)?;
        writeln!(w, "tokens").map_err(io)?;
        let mut line = String::new();
        for t in 0..self.len() {
            line.clear();
            for (i, layer) in self.token(t).chunks(h.top_k).enumerate() {
                if i > 0 {
                    line.push_str(" |");
                }
                for (j, id) in layer.iter().enumerate() {
                    if i > 0 || j > 0 {
                        line.push(' ');
                    }
                    line.push_str(&id.to_string());
                }
            }
            line.push('\n');
            w.write_all(line.as_bytes()).map_err(io)?;
        }
        Ok(())
    }
}

/// Checks one token's ids against `h`: the count, the range, distinct within each layer.
/// On failure, the decoder layer at fault (the first MoE layer for a wrong count) and why.
pub(crate) fn check_token(
    h: &TraceHeader,
    experts: &[u32],
) -> std::result::Result<(), (usize, String)> {
    if experts.len() != h.per_token() {
        return Err((
            h.moe_layers[0],
            format!(
                "{} expert ids for a token, expected {} ({} MoE layers x top_k {})",
                experts.len(),
                h.per_token(),
                h.moe_layers.len(),
                h.top_k
            ),
        ));
    }
    for (&layer, ids) in h.moe_layers.iter().zip(experts.chunks(h.top_k)) {
        for (j, &e) in ids.iter().enumerate() {
            if e as usize >= h.num_experts {
                return Err((
                    layer,
                    format!("expert id {e} is not below num_experts {}", h.num_experts),
                ));
            }
            if ids[..j].contains(&e) {
                return Err((layer, format!("expert {e} is chosen twice")));
            }
        }
    }
    Ok(())
}

/// `0-3,5,7-9`: runs of consecutive layers as ranges.
fn layer_list(layers: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", layers[i], layers[j])
        } else {
            layers[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_the_field() {
        let bad = [
            TraceHeader::new("", 2, vec![0], 8, 2),
            TraceHeader::new("two words", 2, vec![0], 8, 2),
            TraceHeader::new("m", 0, vec![], 8, 2),
            TraceHeader::new("m", 2, vec![], 8, 2),
            TraceHeader::new("m", 2, vec![1, 1], 8, 2),
            TraceHeader::new("m", 2, vec![2], 8, 2),
            TraceHeader::new("m", 2, vec![0], 0, 1),
            TraceHeader::new("m", 2, vec![0], 8, 0),
            TraceHeader::new("m", 2, vec![0], 8, 9),
            TraceHeader::new("m", 2, vec![0], MAX_TRACE_EXPERTS + 1, 2),
        ];
        let words = [
            "model_type",
            "model_type",
            "num_layers",
            "moe_layers",
            "increasing",
            "num_layers",
            "num_experts",
            "top_k",
            "top_k",
            "num_experts",
        ];
        for (r, w) in bad.into_iter().zip(words) {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(w), "{e} should mention {w}");
        }
        assert!(TraceHeader::new("qwen3_moe", 48, (0..48).collect(), 128, 8).is_ok());
    }

    #[test]
    fn push_token_checks_count_range_and_repeats() {
        let h = TraceHeader::new("m", 3, vec![0, 2], 4, 2).unwrap();
        let mut t = RoutingTrace::new(h);
        t.push_token(&[0, 1, 3, 2]).unwrap();
        for (bad, what) in [
            (&[0u32, 1, 3][..], "expected 4"),
            (&[0, 1, 3, 4], "layer 2: expert id 4"),
            (&[0, 0, 3, 2], "layer 0: expert 0 is chosen twice"),
        ] {
            let e = t.push_token(bad).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.experts(0, 2), Some(&[3u16, 2][..]));
        assert_eq!(t.experts(0, 1), None);
        assert_eq!(t.experts(1, 0), None);
    }

    #[test]
    fn layer_lists_use_ranges() {
        assert_eq!(layer_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(layer_list(&[1, 3, 4, 5, 9]), "1,3-5,9");
        assert_eq!(layer_list(&[7]), "7");
    }
}
