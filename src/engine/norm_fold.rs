//! The two RMSNorms of a decode step's MoE layer folded into their neighbours, so that
//! neither runs as a dispatch of its own: the next layer's input norm (or the final norm)
//! into the MoE combine ([`Kernel::MoeCombineNorm`], read with
//! [`LINEAR_X_NORM`](crate::gpu::params::LINEAR_X_NORM)), and the
//! post-attention norm into the router's mat-vec
//! ([`LINEAR_X_RAW_NORM`](crate::gpu::params::LINEAR_X_RAW_NORM)). Which norms fold
//! depends on who reads their rows; docs/architecture.md says why each pays.

use super::linear::{RawNorm, XLayout};
use super::pass::{grid, Pass};
use super::weights::{FfnWeights, GateUp, Layer, MixerWeights, Qkv, Shared};
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{MoeCombineNormParams, MoeCombineParams};
use crate::gpu::{GpuMatrix, GpuVec};

/// Environment variable (`1`) that turns off, for measuring (`benches/ab.sh`), the RMSNorm
/// folded into the MoE combine of a decode step ([`Kernel::MoeCombineNorm`]): every norm
/// then runs as its own dispatch.
pub const NO_NORM_FOLD_ENV: &str = "MOESTREAM_NO_NORM_FOLD";

/// Environment variable (`1`) that turns off, for measuring, the post-attention norm
/// folded into the MoE router's mat-vec ([`Pass::folded_post_norm`]); also off with
/// [`NO_NORM_FOLD_ENV`].
pub const NO_ROUTER_NORM_ENV: &str = "MOESTREAM_NO_ROUTER_NORM";

fn router_norm_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| {
        norm_fold_off() || std::env::var_os(NO_ROUTER_NORM_ENV).is_some_and(|v| v == "1")
    })
}

fn norm_fold_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os(NO_NORM_FOLD_ENV).is_some_and(|v| v == "1"))
}

impl<'a> Pass<'a> {
    /// The norm after a layer (`next`'s input norm, or the final norm) that a decode
    /// step's MoE combine folds in ([`Kernel::MoeCombineNorm`]), and the layout its
    /// readers read: where every matrix that reads the normalized row reads it through the
    /// quantized mat-vec in one layout, 8+8-bit or interleaved, so that nothing needs the
    /// f32 row the norm's own dispatch writes. (Latent attention's input norm also feeds
    /// other kernels: not folded.)
    pub(super) fn folded_norm(&self, next: Option<&'a Layer>) -> Option<(&'a GpuVec, XLayout)> {
        let h = self.m.cfg.hidden_size;
        if !self.decode || self.n != 1 || norm_fold_off() {
            return None;
        }
        let layout = |w: &GpuMatrix| match self.input_of(w, true, h).1 {
            XLayout::Natural => None,
            l => Some(l),
        };
        let w = &self.m.weights;
        // The norm and the matrices that read its row (the first repeated for fewer).
        let (norm, readers): (_, [&GpuMatrix; 3]) = match next {
            None => (&w.final_norm, [w.lm_head(); 3]),
            Some(layer) => match &layer.mixer {
                MixerWeights::Attention(a) => match &a.qkv {
                    Qkv::Fused { w, .. } => (&layer.input_norm, [w; 3]),
                    Qkv::Separate { q, k, v, .. } => (&layer.input_norm, [q, k, v]),
                },
                MixerWeights::LinearAttention(a) => (&layer.input_norm, [&a.proj; 3]),
                MixerWeights::Mla(_) => return None,
            },
        };
        let first = layout(readers[0])?;
        readers
            .iter()
            .all(|&r| layout(r) == Some(first))
            .then_some((norm, first))
    }

    /// The input norm of a layer's token mixer over the pass's rows of `x`: nothing where
    /// the combine before it folded it in ([`Pass::unnormed`]).
    pub(crate) fn input_norm(&mut self, w: &GpuVec) {
        if self.unnormed.is_none() {
            let (s, n, h) = (self.s, self.n, self.m.cfg.hidden_size);
            self.rmsnorm(&s.x, w, &s.xn, n, h, 0);
        }
    }

    /// `x = resid + the routed experts' rows` (weighted, `kk` choices per token) over the
    /// pass's tokens; in a decode step that folds the next norm ([`Pass::fold_norm`]),
    /// also that norm's input for the mat-vecs ([`Kernel::MoeCombineNorm`]).
    pub(crate) fn combine(&mut self, resid: &wgpu::Buffer, kk: usize) {
        let s = self.s;
        let h = self.m.cfg.hidden_size;
        let binds = [
            resid.into(),
            (&s.moe_o).into(),
            (&s.route).into(),
            (&s.x).into(),
        ];
        if let Some((g, layout)) = self.fold_norm {
            let p = MoeCombineNormParams {
                hidden: h as u32,
                top_k: kk as u32,
                flags: if layout == XLayout::Q8 {
                    MoeCombineNormParams::Q8
                } else {
                    0
                },
                ..Default::default()
            };
            let [b0, b1, b2, b3] = binds;
            self.rec.dispatch(
                Kernel::MoeCombineNorm,
                None,
                p.words(),
                &[b0, b1, b2, b3, g.bind(), s.row_in(layout).into()],
                (kernels::moe_combine_norm_groups(h as u32), 1),
            );
            self.unnormed = Some(layout);
            return;
        }
        let p = MoeCombineParams {
            hidden: h as u32,
            n_tokens: self.n as u32,
            top_k: kk as u32,
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::MoeCombine,
            None,
            p.words(),
            &binds,
            grid((h * self.n).div_ceil(64)),
        );
    }

    /// The post-attention norm of `layer` that a decode step folds into its MoE router
    /// ([`LINEAR_X_RAW_NORM`](crate::gpu::params::LINEAR_X_RAW_NORM)): the router
    /// (quantized, one chunk) reads the raw row, applies the norm and writes the
    /// normalized row in the layout every other reader reads (the expert kernels, two
    /// levels later, and a shared expert's or dense block's mat-vecs), where they all read
    /// one layout, 8+8-bit or interleaved. The norm's weight and that layout.
    pub(crate) fn folded_post_norm(&self, l: usize, layer: &'a Layer) -> Option<RawNorm<'a>> {
        let m = self.m;
        let h = m.cfg.hidden_size;
        let FfnWeights::Moe(moe) = &layer.ffn else {
            return None;
        };
        if !self.decode || self.n != 1 || router_norm_off() {
            return None;
        }
        if !matches!(moe.router.format, WeightFormat::Affine(_)) || moe.router.chunks.len() != 1 {
            return None;
        }
        // Experts live in the cache (no cache: no MoE pass to fold into).
        m.cache.as_ref()?;
        let lay = m.store.layout(l)?;
        let layout = self.expert_x_layout(lay.tensors[0].format);
        if layout == XLayout::Natural {
            return None;
        }
        let reads = |w: &GpuMatrix| self.input_of(w, true, h).1 == layout;
        let others = match &moe.shared {
            Some(Shared::Resident(sh)) => {
                sh.gate.as_ref().is_none_or(reads)
                    && match &sh.gate_up {
                        GateUp::Fused(gu) => reads(gu),
                        GateUp::Separate { gate, up } => reads(gate) && reads(up),
                    }
            }
            Some(Shared::Dense(mlp)) => reads(&mlp.gate) && reads(&mlp.up),
            Some(Shared::Cached) | None => true,
        };
        others.then_some((&layer.post_norm, layout))
    }
}
