//! The softmax-attention block: q/k/v projections, per-head norm and RoPE into the KV
//! cache, attention (split over key ranges for decode, tiled for prefill), o_proj.

use super::linear::XLayout;
use super::pass::{grid, Pass};
use super::weights::{Attention, Qkv};
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{
    AttentionMergeParams, AttentionParams, AttentionSplitParams, HeadNormRopeParams,
    SigmoidGateParams,
};
use crate::gpu::GpuVec;

impl Pass<'_> {
    /// `h = x + o_proj(attention(input_norm(x)))`, writing this pass's keys and values into
    /// the KV cache of layer `l`.
    pub(crate) fn attention(
        &mut self,
        l: usize,
        input_norm: &crate::gpu::GpuVec,
        a: &Attention,
    ) -> crate::error::Result<()> {
        let cfg = &self.m.cfg;
        let s = self.s;
        let spec = &a.spec;
        let (h, hd, nh, nkv) = (cfg.hidden_size, spec.head_dim, spec.heads, spec.kv_heads);
        let n = self.n;
        self.input_norm(input_norm);
        // q, k, v as [n, q_dim + 2 kv_dim] rows of `qkv` (one mat-vec) or in `q`, `k`, `v`:
        // their buffers, the token strides of q and of k/v, and their offsets in a token row.
        let (qd, kvd) = (nh * hd, nkv * hd);
        // With an output gate q_proj yields `[q | gate]` per head: q rows twice as wide.
        let q_head_stride = if spec.output_gate { 2 * hd } else { hd };
        let q_rows = nh * q_head_stride;
        let (qb, kb, vb, q_stride, kv_stride, offs) = match &a.qkv {
            Qkv::Fused { w, bias } => {
                self.linear(w, self.input(w, h), &s.qkv, bias.as_ref(), None);
                let row = q_rows + 2 * kvd;
                (&s.qkv, &s.qkv, &s.qkv, row, row, [0, q_rows, q_rows + kvd])
            }
            Qkv::Separate {
                q,
                k,
                v,
                q_bias,
                k_bias,
                v_bias,
            } => {
                self.linear(q, self.input(q, h), &s.q, q_bias.as_ref(), None);
                self.linear(k, self.input(k, h), &s.k, k_bias.as_ref(), None);
                self.linear(v, self.input(v, h), &s.v, v_bias.as_ref(), None);
                (&s.q, &s.k, &s.v, q_rows, kvd, [0, 0, 0])
            }
        };
        // q_norm + RoPE into `qr`; k_norm + RoPE straight into the layer's K cache at the
        // current position, with v copied into the V cache by the same dispatch.
        let half = (spec.rotary_dim / 2) as u32;
        let (kc, vc, ring) = self.state.kv(l)?;
        // A ring-buffer cache (a sliding window) holds the keys this pass reads from
        // position `shift` on: the attention kernels see positions less `shift`.
        let shift = ring.map_or(0, |r| r.shift(self.pos0));
        let pos = self.pos0 - shift;
        let kv_off = pos * nkv * hd;
        let eps = cfg.rms_norm_eps;
        // The KV cache's elements (f32 or f16): the dtype of the kernels that touch it.
        let kv_dtype = self.m.kv_cache_dtype;
        let [q_off, k_off, v_off] = offs.map(|o| o as u32);
        // The query and key heads in one dispatch when they sit in the rows of one buffer
        // (a fused q/k/v projection), else one dispatch each: (x, stride, query heads,
        // key heads) per dispatch.
        let parts = if std::ptr::eq(qb, kb) {
            vec![(qb, q_stride, nh, nkv)]
        } else {
            vec![(qb, q_stride, nh, 0), (kb, kv_stride, 0, nkv)]
        };
        for (x, stride, q_heads, k_heads) in parts {
            let p = HeadNormRopeParams {
                n_tokens: n as u32,
                head_dim: hd as u32,
                rotary_half: half,
                pos0: self.pos0 as u32,
                eps,
                x_stride: stride as u32,
                q_heads: q_heads as u32,
                q_offset: q_off,
                k_heads: k_heads as u32,
                k_offset: k_off,
                k_out: kv_off as u32,
                copy_v: u32::from(k_heads > 0),
                v_offset: v_off,
                sin_offset: s.rope_sin,
                q_head_stride: q_head_stride as u32,
                norm: u32::from(spec.qk_norm),
                ring: ring.map_or(0, |r| (r.cap * nkv * hd) as u32),
                whole: u32::from(spec.qk_norm_whole),
                clip: spec.clip_qkv.unwrap_or(0.0),
                ..Default::default()
            };
            let dummy = &self.m.gpu.dummy;
            self.rec.dispatch(
                Kernel::HeadNormRope,
                Some(kv_dtype),
                p.words(),
                &[
                    x.into(),
                    a.q_norm.as_ref().map_or(dummy.into(), GpuVec::bind),
                    a.k_norm.as_ref().map_or(dummy.into(), GpuVec::bind),
                    (&s.rope).into(),
                    (&s.qr).into(),
                    kc.into(),
                    vb.into(),
                    vc.into(),
                ],
                ((q_heads + k_heads) as u32, n as u32),
            );
        }
        // As transformers: `head_dim ** -0.5` in double precision, rounded to f32.
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        // (A prefill pass of one token takes the prefill kernels too: `Pass::decode`.)
        let split = self.decode && hd % 4 == 0;
        // The merge of a decode step writes its output interleaved for a quantized o_proj.
        // (The output gate multiplies the natural layout in place.)
        let o_layout = if split
            && !spec.output_gate
            && matches!(
                a.o.format,
                WeightFormat::Affine(_) | WeightFormat::Mxfp4 | WeightFormat::Fp8Block
            )
            && qd % 32 == 0
        {
            XLayout::Interleaved
        } else {
            XLayout::Natural
        };
        if split {
            // Decode: many workgroups over short key ranges, then one merge per head
            // (the split kernel reads heads as vec4s).
            // A sliding window's keys start past 0.
            let n_keys = pos + 1;
            let key0 = spec.sliding_window.map_or(0, |w| n_keys.saturating_sub(w));
            let (chunk, splits) = kernels::attention_splits((n_keys - key0) as u32, nh as u32);
            let p = AttentionSplitParams {
                pos0: pos as u32,
                n_heads: nh as u32,
                n_kv_heads: nkv as u32,
                head_dim: hd as u32,
                scale,
                chunk,
                n_splits: splits,
                key0: key0 as u32,
            };
            self.rec.dispatch(
                Kernel::AttentionSplit,
                Some(kv_dtype),
                p.words(),
                &[(&s.qr).into(), kc.into(), vc.into(), (&s.attn_part).into()],
                (nh as u32, splits),
            );
            // The output gate, if any, applied by the merge.
            let p = AttentionMergeParams {
                n_heads: nh as u32,
                head_dim: hd as u32,
                n_splits: splits,
                flags: if o_layout == XLayout::Interleaved {
                    AttentionMergeParams::INTERLEAVED
                } else {
                    0
                } | if spec.output_gate {
                    AttentionMergeParams::GATED
                } else {
                    0
                } | if a.sinks.is_some() {
                    AttentionMergeParams::SINKS
                } else {
                    0
                },
                g_offset: q_off + hd as u32,
                g_head_stride: q_head_stride as u32,
                ..Default::default()
            };
            self.rec.dispatch(
                Kernel::AttentionMerge,
                None,
                p.words(),
                &[
                    (&s.attn_part).into(),
                    (&s.attn).into(),
                    qb.into(),
                    a.sinks
                        .as_ref()
                        .map_or((&self.m.gpu.dummy).into(), GpuVec::bind),
                ],
                kernels::attention_merge_groups(nh as u32, hd as u32),
            );
        } else {
            // Prefill: 16 queries per workgroup (heads read as vec4s); else one per query.
            // Whichever queries share a workgroup, a query's tiles of keys start at a
            // multiple of 64 (key 0, or a sliding window's start rounded down; a ring's
            // shift is a multiple of 64 too) and the keys outside its window add exact
            // zeros, so its result does not depend on the pass (`Pass::decode`).
            let (kernel, groups) = if hd % 4 == 0 {
                (
                    Kernel::AttentionTiled,
                    kernels::attention_tiled_groups(nh as u32, n as u32),
                )
            } else {
                (Kernel::Attention, (nh as u32, n as u32))
            };
            let p = AttentionParams {
                n_tokens: n as u32,
                pos0: pos as u32,
                n_heads: nh as u32,
                n_kv_heads: nkv as u32,
                head_dim: hd as u32,
                scale,
                window: spec.sliding_window.map_or(0, |w| w as u32),
                sinks: u32::from(a.sinks.is_some()),
            };
            self.rec.dispatch(
                kernel,
                kernel.uses_kv_cache().then_some(kv_dtype),
                p.words(),
                &[
                    (&s.qr).into(),
                    kc.into(),
                    vc.into(),
                    (&s.attn).into(),
                    a.sinks
                        .as_ref()
                        .map_or((&self.m.gpu.dummy).into(), GpuVec::bind),
                ],
                groups,
            );
        }
        if spec.output_gate && !split {
            let p = SigmoidGateParams {
                n: n as u32,
                width: qd as u32,
                head_dim: hd as u32,
                g_stride: q_stride as u32,
                g_offset: (q_off as usize + hd) as u32,
                g_head_stride: q_head_stride as u32,
                ..Default::default()
            };
            self.rec.dispatch(
                Kernel::SigmoidGate,
                None,
                p.words(),
                &[qb.into(), (&s.attn).into()],
                grid((n * qd).div_ceil(64)),
            );
        }
        self.linear(
            &a.o,
            (&s.attn, o_layout),
            &s.h,
            a.o_bias.as_ref(),
            Some(&s.x),
        );
        Ok(())
    }
}
