//! The softmax-attention block: q/k/v projections, per-head norm and RoPE into the KV
//! cache, attention (split over key ranges for decode, tiled for prefill), o_proj.

use super::pass::{grid, Pass, XLayout};
use super::weights::{Attention, Qkv};
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{
    AttentionMergeParams, AttentionParams, AttentionSplitParams, AttentionSplitRopeParams,
    HeadNormRopeParams, SigmoidGateParams,
};
use crate::gpu::GpuVec;

/// Environment variable that turns the fused decode attention off (`1`): each decode step
/// then runs `head_norm_rope` and `attention_split` as two dispatches, as prefill does, for
/// measuring what the fusion gains (`kernels/attention_split_rope.wgsl`); on by default.
/// Read once per process, when a model is built ([`crate::ModelBuilder::build`]).
pub(crate) const NO_ROPE_FUSION_ENV: &str = "MOESTREAM_NO_ROPE_FUSION";

/// Whether models fold the query/key norm and RoPE into the split decode attention unless
/// told otherwise: yes, but for `MOESTREAM_NO_ROPE_FUSION=1` ([`NO_ROPE_FUSION_ENV`]).
pub(crate) fn rope_fusion_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os(NO_ROPE_FUSION_ENV).is_none_or(|v| v.is_empty() || v == "0")
    })
}

/// Whether decode steps of layer `a` can run `attention_split_rope` (the norm and RoPE
/// folded into the split attention): q, k and v in one projection row (a fused q/k/v
/// matrix), each head normed by itself (not OLMoE's norm over the whole projection, which
/// every workgroup would have to sum), heads of a multiple of 4 dims (the split kernels').
/// Other layers run `head_norm_rope`, then `attention_split`.
pub(crate) fn fusable(a: &Attention) -> bool {
    matches!(a.qkv, Qkv::Fused { .. })
        && !a.spec.qk_norm_whole
        && a.spec.head_dim % 4 == 0
        && a.spec.head_dim <= 256
}

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
        self.rmsnorm(&s.x, input_norm, &s.xn, n, h, 0);
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
        // current position, with v copied into the V cache by the same dispatch (or, in a
        // decode step, all of it by the split attention: `fused` below).
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
        // As transformers: `head_dim ** -0.5` in double precision, rounded to f32.
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        // (A prefill pass of one token takes the prefill kernels too: `Pass::decode`.)
        let split = self.decode && hd % 4 == 0;
        // A decode step's split attention normalizes and rotates the heads itself and
        // writes the current key and value (`attention_split_rope`), where the heads sit in
        // one projection row and each is normed by itself: one dependency level fewer.
        let fused = split && n == 1 && self.m.rope_fusion && fusable(a);
        // Else the query and key heads in one dispatch when they sit in the rows of one
        // buffer (a fused q/k/v projection), else one dispatch each: (x, stride, query
        // heads, key heads) per dispatch.
        let parts = if fused {
            vec![]
        } else if std::ptr::eq(qb, kb) {
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
            if fused {
                let p = AttentionSplitRopeParams {
                    pos0: pos as u32,
                    n_heads: nh as u32,
                    n_kv_heads: nkv as u32,
                    head_dim: hd as u32,
                    scale,
                    chunk,
                    n_splits: splits,
                    key0: key0 as u32,
                    rope_pos: self.pos0 as u32,
                    rotary_half: half,
                    eps,
                    norm: u32::from(spec.qk_norm),
                    q_offset: q_off,
                    k_offset: k_off,
                    v_offset: v_off,
                    q_head_stride: q_head_stride as u32,
                    sin_offset: s.rope_sin,
                    ring: ring.map_or(0, |r| (r.cap * nkv * hd) as u32),
                    clip: spec.clip_qkv.unwrap_or(0.0),
                    ..Default::default()
                };
                let dummy = &self.m.gpu.dummy;
                self.rec.dispatch(
                    Kernel::AttentionSplitRope,
                    Some(kv_dtype),
                    p.words(),
                    &[
                        qb.into(),
                        a.q_norm.as_ref().map_or(dummy.into(), GpuVec::bind),
                        a.k_norm.as_ref().map_or(dummy.into(), GpuVec::bind),
                        (&s.rope).into(),
                        kc.into(),
                        vc.into(),
                        (&s.attn_part).into(),
                    ],
                    (nh as u32, splits),
                );
            } else {
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
            }
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::engine::weights::MixerWeights;
    use crate::format::DType;
    use crate::Model;

    fn fixture(path: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests")).join(path)
    }

    /// The logits of a prefill of `prompt` tokens and of `steps` decode steps after it on a
    /// model with the fused decode attention on or off, and whether a layer takes it; `None`
    /// for an f16 KV cache where the adapter (or the head_dim) has none.
    fn logits(
        dir: &Path,
        fusion: bool,
        kv: DType,
        max_context: usize,
        (prompt, steps): (usize, usize),
    ) -> Option<(Vec<Vec<f32>>, bool)> {
        let mut b = Model::builder(dir).kv_cache_dtype(kv);
        b.rope_fusion = Some(fusion);
        let model = match b.build() {
            Ok(m) => m,
            Err(_) if kv == DType::F16 => return None,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let fusable = model.inner.weights.layers.iter().any(|l| match &l.mixer {
            MixerWeights::Attention(a) => super::fusable(a),
            _ => false,
        });
        let v = model.config().vocab_size as u32;
        let ids: Vec<u32> = (0..(prompt + steps) as u32)
            .map(|i| (i * 37 + 5) % v)
            .collect();
        let mut s = model.session(max_context).expect("a session");
        let mut out = vec![s.prefill(&ids[..prompt]).expect("prefill")];
        for &id in &ids[prompt..] {
            out.push(s.step(id).expect("a decode step"));
        }
        Some((out, fusable))
    }

    /// Decode steps through `attention_split_rope` give the logits of `head_norm_rope` then
    /// `attention_split`, bit for bit: Qwen3-MoE (GQA 2-4, MQA, q/k/v biases, f16 and f32
    /// KV caches), Qwen3.5's gated attention with partial rotary, GLM-4.5's partial rotary
    /// with and without q/k norms, gpt-oss without q/k norms, its sinks and its sliding
    /// window over a ring cache (prefill past the ring's first wrap), Mixtral; OLMoE's
    /// whole-projection norm takes the unfused kernels both ways.
    #[test]
    fn fused_decode_attention_gives_the_unfused_logits() {
        // (fixture, KV cache dtypes, max_context, (prompt, steps), whether it fuses)
        type Case = (&'static str, &'static [DType], usize, (usize, usize), bool);
        let cases: [Case; 11] = [
            (
                "fixtures/tiny_f32",
                &[DType::F32, DType::F16],
                64,
                (5, 8),
                true,
            ),
            (
                "fixtures/tiny_bf16",
                &[DType::F32, DType::F16],
                64,
                (3, 6),
                true,
            ),
            ("fixtures/sharded", &[DType::F32], 64, (4, 5), true),
            ("fixtures/dense_mix", &[DType::F32], 64, (4, 5), true),
            ("fixtures/attn_bias", &[DType::F32], 64, (4, 5), true),
            (
                "fixtures_qwen35/q35_flat_f32",
                &[DType::F32, DType::F16],
                64,
                (4, 6),
                true,
            ),
            (
                "fixtures_glm4_moe/glm_hf_f32",
                &[DType::F32],
                64,
                (4, 5),
                true,
            ),
            (
                "fixtures_glm4_moe/glm_released_bf16",
                &[DType::F32],
                64,
                (4, 5),
                true,
            ),
            (
                "fixtures_gpt_oss/oss_f32",
                &[DType::F32, DType::F16],
                4096,
                (600, 12),
                true,
            ),
            (
                "fixtures_mixtral/mixtral_hf_f32",
                &[DType::F32],
                64,
                (4, 5),
                true,
            ),
            (
                "fixtures_olmoe/olmoe_hf_f32",
                &[DType::F32],
                64,
                (4, 5),
                false,
            ),
        ];
        let mut ran_f16 = false;
        for (name, dtypes, max_context, run, fuses) in cases {
            let dir = fixture(name);
            for &kv in dtypes {
                let Some((unfused, _)) = logits(&dir, false, kv, max_context, run) else {
                    continue;
                };
                ran_f16 |= kv == DType::F16;
                let Some((fused, fusable)) = logits(&dir, true, kv, max_context, run) else {
                    panic!("{name}: the model loaded once");
                };
                assert_eq!(fusable, fuses, "{name}: which layers fuse");
                for (i, (a, b)) in fused.iter().zip(&unfused).enumerate() {
                    let differ = a
                        .iter()
                        .zip(b)
                        .filter(|(x, y)| x.to_bits() != y.to_bits())
                        .count();
                    assert!(
                        differ == 0 && a.len() == b.len(),
                        "{name} {kv:?} KV cache: pass {i}: {differ} logits differ with the fusion"
                    );
                }
            }
        }
        eprintln!("f16 KV caches covered: {ran_f16}");
    }
}
