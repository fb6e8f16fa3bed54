//! One forward pass over a run of tokens: the state a pass works on and the shared pieces
//! every block uses (RMSNorm, the embedding, the logits readout; the linear maps by weight
//! format are in `super::linear`). The blocks themselves are in the sibling modules.

use super::linear::{interleaves, quant_constants, XLayout};
use super::state::{Scratch, SequenceState};
use super::weights::{Layer, MixerWeights};
use crate::cache::CacheStats;
use crate::error::Result;
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{
    EmbeddingParams, QEmbeddingParams, RmsNormParams, TokenPickParams, TokenSampleParams,
    TopKParams,
};
use crate::gpu::Size;
use crate::gpu::{GpuVec, Recorder};
use crate::model::ModelInner;
use crate::sampling::{Candidate, NextDraw};

pub(crate) fn grid(n: usize) -> (u32, u32) {
    crate::gpu::grid_of(n as u32)
}

/// The state one forward pass works on.
pub(crate) struct Pass<'a> {
    pub m: &'a ModelInner,
    pub s: &'a Scratch,
    /// The session's per-layer sequence state (KV caches, recurrent states).
    pub state: &'a SequenceState,
    pub rec: Recorder<'a>,
    /// Tokens in this pass.
    pub n: usize,
    /// Position of the first token.
    pub pos0: usize,
    /// A decode step: its one token runs through the mat-vec kernels (and their
    /// interleaved or 8+8-bit input rows), the split attention and the fused decode
    /// kernels. Otherwise a prefill pass, which runs the mat-mat kernels, the tiled
    /// attention and the tiled expert kernels whatever its length (one token included):
    /// every kernel of a prefill pass computes each token's row with the same sums in the
    /// same order whichever other tokens share the pass, so that a prompt's states and
    /// logits do not depend on how it was split into passes (the prompt cache relies on
    /// it). Only the logits row at the end of a pass is always a vector row.
    pub decode: bool,
    pub stats: CacheStats,
    /// (token, expert) routing choices made so far.
    pub experts_routed: u64,
    /// Route through the GPU slot table instead of reading the routing back (decode of a
    /// model whose cache is one page); see [`Pass::moe_resident`].
    pub resident: bool,
    /// MoE layers recorded since the last submit (resident passes submit in chunks).
    pub since_submit: usize,
    /// MoE layers in the resident pass's current chunk: 1, then doubling
    /// ([`RESIDENT_FIRST_CHUNK`]).
    pub submit_chunk: usize,
    /// When the session records routing: per MoE layer run so far, (layer, the chosen ids
    /// of every token, ids per token); the first `top_k` of a token's are its routed
    /// experts.
    pub routing: Option<Vec<(usize, Vec<u32>, usize)>>,
    /// A routing trace the pass follows instead of its routers' choices
    /// ([`Session::follow_routing`](crate::Session::follow_routing)), and the trace token
    /// of the pass's first token.
    pub follow: Option<(&'a crate::routing::RoutingTrace, usize)>,
    /// Where the pass writes its last token's logits (`Scratch::logits` or `logits2`).
    pub logits: &'a wgpu::Buffer,
    /// A decode step run ahead of its call: its token is picked on the GPU into
    /// `Scratch::ids`, before the embedding, from the top-k candidates the step before it
    /// left in `Scratch::topk`.
    pub pick_token: Option<TokenPick>,
    /// The RMSNorm the current layer's MoE combine applies for the next one (its input
    /// norm, or the final norm after the last layer), and the layout its readers read,
    /// where the decode step folds it ([`Pass::folded_norm`]): the combine leaves the
    /// norm's input in that layout for the mat-vecs, which apply it
    /// ([`Kernel::MoeCombineNorm`]).
    pub fold_norm: Option<(&'a GpuVec, XLayout)>,
    /// Set while the decode row of this layout (`xq` or `xi`) holds a norm's input left by
    /// [`Kernel::MoeCombineNorm`] rather than a normalized row: the mat-vecs that read it
    /// apply the norm ([`LINEAR_X_NORM`](crate::gpu::params::LINEAR_X_NORM)), the norm's
    /// own dispatch is skipped, and the norm's other rows are stale. Cleared by the next
    /// norm.
    pub unnormed: Option<XLayout>,
}

/// How a step run ahead picks its token from the step before's top-k candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenPick {
    /// Candidates per chunk that step read back.
    pub n_top: u32,
    /// `None`: the best ([`Kernel::TokenPick`], a greedy step); else the sampler's next
    /// draw ([`Kernel::TokenSample`]).
    pub draw: Option<NextDraw>,
}

/// A resident pass submits its first this many MoE layers, then chunks twice as long as
/// the last (1, 2, 4, 8, ... layers), so the GPU starts after one layer's recording and the
/// step pays for few submits. Recording a layer takes the host about half as long as the
/// GPU takes to run it (wgpu's `CommandEncoder::finish` is most of it), so the host stays
/// ahead. Measured on an H200 (`cargo bench --bench decode -- --resident-only`,
/// Qwen3-30B-A3B 4-bit, 48 layers): a submit every 1 / 2 / 4 / 8 / 16 layers 168 / 188 /
/// 198 / 205 / 204 tok/s, one per token 158; in four alternating runs each, every 4 layers
/// 198.5 tok/s (greedy with a top-1 readback 202.5, all logits 186.1), doubling chunks
/// from 1 layer 201.2 (211.9, 195.3). The host's recording time varies from run to run
/// (1.7-3.1 ms per token), and with it these numbers.
pub(crate) const RESIDENT_FIRST_CHUNK: usize = 1;

impl<'a> Pass<'a> {
    /// One decoder layer, as its plan says: the token mixer, then the feed-forward block;
    /// `next` is the layer after it (`None` for the last).
    pub fn layer(&mut self, l: usize, layer: &'a Layer, next: Option<&'a Layer>) -> Result<()> {
        match &layer.mixer {
            MixerWeights::Attention(a) => self.attention(l, &layer.input_norm, a)?,
            MixerWeights::LinearAttention(a) => self.linear_attention(l, &layer.input_norm, a)?,
            MixerWeights::Mla(a) => self.mla(l, &layer.input_norm, a)?,
        }
        self.fold_norm = self.folded_norm(next);
        let r = self.ffn(l, layer);
        self.fold_norm = None;
        r
    }

    /// RMSNorm of `rows` rows of `len` values of x (from `x_offset`) into y; a decode
    /// step's row of a multiple of 32 values is also written interleaved into `xi`
    /// ([`interleaves`]) and, unless the model keeps f32 activations, in 8+8-bit blocks
    /// into `xq`.
    pub(crate) fn rmsnorm(
        &mut self,
        x: &wgpu::Buffer,
        w: &GpuVec,
        y: &wgpu::Buffer,
        rows: usize,
        len: usize,
        x_offset: usize,
    ) {
        let eps = self.m.cfg.rms_norm_eps;
        let vector = self.decode && rows == 1;
        self.rmsnorm_at(x, w, y, rows, len, x_offset, eps, vector);
    }

    /// [`Pass::rmsnorm`] with its own epsilon (DeepSeek-V3's latent norms).
    pub(crate) fn rmsnorm_eps(
        &mut self,
        x: &wgpu::Buffer,
        w: &GpuVec,
        y: &wgpu::Buffer,
        rows: usize,
        len: usize,
        eps: f32,
    ) {
        let vector = self.decode && rows == 1;
        self.rmsnorm_at(x, w, y, rows, len, 0, eps, vector);
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_at(
        &mut self,
        x: &wgpu::Buffer,
        w: &GpuVec,
        y: &wgpu::Buffer,
        rows: usize,
        len: usize,
        x_offset: usize,
        eps: f32,
        vector: bool,
    ) {
        let il = interleaves(vector, len);
        // The 8+8-bit row only for models whose mat-vecs read it (`XLayout::for_bits`).
        let q8 = il && !self.m.f32_activations;
        if vector {
            self.unnormed = None;
        }
        let dummy = &self.m.gpu.dummy;
        let yi = if il { &self.s.xi } else { dummy };
        let yq = if q8 { &self.s.xq } else { dummy };
        let p = RmsNormParams {
            n: len as u32,
            rows: rows as u32,
            eps,
            x_offset: x_offset as u32,
            y_offset: 0,
            flags: if il { RmsNormParams::INTERLEAVED } else { 0 }
                | if q8 { RmsNormParams::Q8 } else { 0 },
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::RmsNorm,
            None,
            p.words(),
            &[x.into(), w.bind(), y.into(), yi.into(), yq.into()],
            grid(rows),
        );
    }

    pub fn embed(&mut self) {
        let h = self.m.cfg.hidden_size;
        let e = &self.m.weights.embed;
        if let Some(pick) = self.pick_token {
            let chunks = kernels::topk_groups(self.m.cfg.vocab_size as u32).0;
            let binds = [(&self.s.topk).into(), (&self.s.ids).into()];
            match pick.draw {
                None => {
                    let p = TokenPickParams {
                        n_chunks: chunks,
                        n_top: pick.n_top,
                        ..Default::default()
                    };
                    self.rec
                        .dispatch(Kernel::TokenPick, None, p.words(), &binds, (1, 1));
                }
                Some(d) => {
                    let p = TokenSampleParams {
                        n_chunks: chunks,
                        n_top: pick.n_top,
                        top_k: d.top_k,
                        chunk: kernels::TOPK_CHUNK,
                        temperature: d.temperature,
                        top_p: d.top_p,
                        min_p: d.min_p,
                        u: d.u,
                    };
                    self.rec
                        .dispatch(Kernel::TokenSample, None, p.words(), &binds, (1, 1));
                }
            }
        }
        for (buf, row0, rows) in &e.chunks {
            let binds = [(&self.s.ids).into(), buf.into(), (&self.s.x).into()];
            let p = EmbeddingParams {
                hidden: h as u32,
                n_tokens: self.n as u32,
                row_start: *row0 as u32,
                row_count: *rows as u32,
            };
            match e.format {
                WeightFormat::Float(dt) => self.rec.dispatch(
                    Kernel::Embedding,
                    Some(dt),
                    p.words(),
                    &binds,
                    grid((h * self.n).div_ceil(64)),
                ),
                WeightFormat::Affine(_) | WeightFormat::Mxfp4 | WeightFormat::Fp8Block => {
                    let parts = e.format.parts(*rows, e.cols);
                    let (code, quant) = quant_constants(e.format);
                    let qp = QEmbeddingParams {
                        hidden: p.hidden,
                        n_tokens: p.n_tokens,
                        row_start: p.row_start,
                        row_count: p.row_count,
                        scales_word: (parts.scales.0 / 4) as u32,
                        biases_word: (parts.biases.0 / 4) as u32,
                        ..Default::default()
                    };
                    self.rec.record(
                        Kernel::QEmbedding,
                        code,
                        quant,
                        0,
                        qp.words(),
                        &binds,
                        Size::Direct(kernels::qembedding_groups(h as u32, self.n as u32)),
                    );
                }
            }
        }
    }

    /// Records the logits of the pass's last token (all of them, or with `top` the best
    /// `top` per chunk of the vocabulary, merged on the host), then the `extra` buffer
    /// ranges, into `staging`, and starts the readback ([`Recorder::read_begin`]); the
    /// first part of what it reads back is for [`decode_readout`].
    pub fn readout_begin(
        &mut self,
        top: Option<usize>,
        extra: &[(&wgpu::Buffer, u64, u64)],
        staging: &wgpu::Buffer,
    ) -> crate::gpu::PendingRead {
        let s = self.s;
        let w = &self.m.weights;
        let h = self.m.cfg.hidden_size;
        let v = self.m.cfg.vocab_size;
        // The last row only, as a vector row in every pass (the same kernels after a
        // prefill pass of any length and after a decode step).
        let eps = self.m.cfg.rms_norm_eps;
        // (Nothing where the last layer's combine folded the final norm in.)
        if self.unnormed.is_none() {
            self.rmsnorm_at(
                &s.x,
                &w.final_norm,
                &s.xn,
                1,
                h,
                (self.n - 1) * h,
                eps,
                true,
            );
        }
        let head = w.lm_head();
        let x = self.input_of(head, true, h);
        let logits = self.logits;
        self.linear_n(head, x, logits, None, None, 1, true, None);
        let mut parts = Vec::with_capacity(extra.len() + 1);
        if let Some(n) = top {
            let groups = kernels::topk_groups(v as u32);
            let p = TopKParams {
                n_vocab: v as u32,
                chunk: kernels::TOPK_CHUNK,
                n_top: n as u32,
                ..Default::default()
            };
            self.rec.dispatch(
                Kernel::TopK,
                None,
                p.words(),
                &[logits.into(), (&s.topk).into()],
                groups,
            );
            parts.push((&s.topk, 0, groups.0 as u64 * n as u64 * 8));
        } else {
            parts.push((logits, 0, (v * 4) as u64));
        }
        parts.extend_from_slice(extra);
        self.rec.read_begin(&parts, staging)
    }
}

/// The logits a pass read back ([`Pass::readout_begin`]'s first part): every logit, or
/// with `top` the best `top` by (logit descending, id ascending).
pub(crate) fn decode_readout(top: Option<usize>, bytes: &[u8]) -> Readout {
    match top {
        None => Readout::Full(bytemuck::pod_collect_to_vec(bytes)),
        Some(n) => {
            let words: Vec<u32> = bytemuck::pod_collect_to_vec(bytes);
            let mut c: Vec<Candidate> = words
                .chunks_exact(2)
                .filter(|p| p[1] != u32::MAX)
                .map(|p| Candidate {
                    id: p[1],
                    logit: f32::from_bits(p[0]),
                })
                .collect();
            c.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
            c.truncate(n);
            Readout::Top(c)
        }
    }
}

/// What a pass reads back of the logits of its last token.
pub(crate) enum Readout {
    /// Every logit.
    Full(Vec<f32>),
    /// The best few, by (logit descending, id ascending).
    Top(Vec<Candidate>),
}
