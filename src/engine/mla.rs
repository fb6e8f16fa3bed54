//! Multi-head latent attention (DeepSeek-V3, Kimi-K2): its weights read with `kv_b_proj`
//! absorbed per head, and the block that attends over the cached latent
//! (docs/families/deepseek_v3.md §4). Per token and layer the cache holds the normalized
//! latent and the rotated RoPE key, `rank + rope` values (576 for DeepSeek-V3), not a key
//! and a value per head.
//!
//! A pass: q (low-rank through `q_a_proj`, its norm and `q_b_proj`, or one `q_proj`) and
//! `kv_a_proj_with_mqa`; [`Kernel::MlaLatent`] rotates the queries' RoPE dims and writes
//! the latent cache rows; the batched per-head mat-vec by `embed_q` maps each head's nope
//! dims into the latent space; [`Kernel::MlaAttention`] attends over the cache rows (a
//! decode step over key ranges merged by [`Kernel::AttentionMerge`]); the
//! batched mat-vec by `unembed_out` maps each head's latent output to its values; o_proj.

use super::linear::{interleaves, XLayout};
use super::loader::Loader;
use super::pass::Pass;
use super::weights::{Mla, MlaQuery};
use crate::arch::deepseek_v3::absorb::split_kv_b;
use crate::arch::{tensor, MlaSpec};
use crate::checkpoint::MatrixView;
use crate::dtype::DType;
use crate::error::Result;
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{
    AttentionMergeParams, MatVecParams, MlaAttentionParams, MlaLatentParams, QMatVecParams,
};
use crate::gpu::{GpuMatrix, GpuVec, Size};

/// The latent norms' epsilon (`DeepseekV3RMSNorm`'s default, whatever `rms_norm_eps` says).
const LATENT_EPS: f32 = 1e-6;

/// The widest cache row [`Kernel::MlaAttention`] and [`Kernel::MlaLatent`] take.
pub(crate) const MAX_CACHE_WIDTH: usize = 1024;

/// Checks that the GPU kernels run latent attention of this shape: a reason if not.
pub(crate) fn unsupported(spec: &MlaSpec) -> Option<String> {
    let (r, dr) = (spec.kv_lora_rank, spec.qk_rope_head_dim);
    if r % 4 != 0 || dr % 4 != 0 || r + dr > MAX_CACHE_WIDTH {
        return Some(format!(
            "kv_lora_rank ({r}) and qk_rope_head_dim ({dr}) must be multiples of 4 with a sum of at most {MAX_CACHE_WIDTH} for the GPU kernels"
        ));
    }
    None
}

impl Loader<'_> {
    /// The latent-attention block of layer `l`: from Hugging Face's `kv_b_proj` (split per
    /// head here, in its float dtype, or f32 from FP8) or mlx-lm's `embed_q` and
    /// `unembed_out` (as stored).
    pub(super) fn mla(&self, l: usize, h: usize, spec: &MlaSpec) -> Result<Mla> {
        let names = self.names;
        let (nh, dn, dr, dv, r) = (
            spec.heads,
            spec.qk_nope_head_dim,
            spec.qk_rope_head_dim,
            spec.v_head_dim,
            spec.kv_lora_rank,
        );
        let dq = dn + dr;
        let bias = |path: &str, n: usize| -> Result<Option<GpuVec>> {
            if spec.bias {
                self.vector(&names.bias(l, path), n).map(Some)
            } else {
                Ok(None)
            }
        };
        let w = |path: &str| names.weight(l, path);
        let q = match spec.q_lora_rank {
            Some(ql) => MlaQuery::LowRank {
                a: self.matrix(&w(tensor::Q_A_PROJ), ql, h)?,
                a_bias: bias(tensor::Q_A_PROJ, ql)?,
                norm: self.norm(&w(tensor::Q_A_NORM), ql)?,
                b: self.matrix(&w(tensor::Q_B_PROJ), nh * dq, ql)?,
            },
            None => MlaQuery::Full(self.matrix(&w(tensor::Q_PROJ), nh * dq, h)?),
        };
        let (embed_q, unembed) = if self.ckpt.contains(&w(tensor::EMBED_Q)) {
            let view = |path: &str, rows: usize, cols: usize| -> Result<GpuMatrix> {
                let m = self
                    .ckpt
                    .matrix_stacked(&names.layer(l, path), nh, rows, cols)?;
                GpuMatrix::upload(self.gpu, &w(path), &m)
            };
            (
                view(tensor::EMBED_Q, r, dn)?,
                view(tensor::UNEMBED_OUT, dv, r)?,
            )
        } else {
            let kv_b = self
                .ckpt
                .matrix(&names.layer(l, tensor::KV_B_PROJ), nh * (dn + dv), r)?;
            // Float weights keep their dtype (a transposition is exact); others are
            // decoded to f32.
            let dtype = match kv_b.format {
                WeightFormat::Float(d) => d,
                _ => DType::F32,
            };
            let (e, u) = split_kv_b(spec, &kv_b.to_f32());
            let upload = |label: &str, values: &[f32], rows: usize, cols: usize| {
                let bytes = dtype.encode(values);
                let m = MatrixView {
                    format: WeightFormat::Float(dtype),
                    rows,
                    cols,
                    weight: &bytes,
                    scales: &[],
                    biases: &[],
                };
                GpuMatrix::upload(self.gpu, label, &m)
            };
            (
                upload(&w(tensor::EMBED_Q), &e, nh * r, dn)?,
                upload(&w(tensor::UNEMBED_OUT), &u, nh * dv, r)?,
            )
        };
        for m in [&embed_q, &unembed] {
            if m.chunks.len() != 1 {
                return Err(super::sizes::absorbed_too_large(
                    l,
                    m.rows,
                    m.cols,
                    m.bytes(),
                    crate::gpu::binding_limit(&self.gpu.limits),
                ));
            }
        }
        Ok(Mla {
            spec: *spec,
            q,
            kv_a: self.matrix(&w(tensor::KV_A_PROJ), r + dr, h)?,
            kv_a_bias: bias(tensor::KV_A_PROJ, r + dr)?,
            kv_norm: self.norm(&w(tensor::KV_A_NORM), r)?,
            embed_q,
            unembed,
            o: self.matrix(&w(tensor::O_PROJ), h, nh * dv)?,
            o_bias: bias(tensor::O_PROJ, h)?,
        })
    }
}

impl Pass<'_> {
    /// `h = x + o_proj(latent_attention(input_norm(x)))`, writing this pass's latents into
    /// layer `l`'s cache.
    pub(crate) fn mla(&mut self, l: usize, input_norm: &GpuVec, a: &Mla) -> Result<()> {
        let s = self.s;
        let spec = &a.spec;
        let h = self.m.cfg.hidden_size;
        let n = self.n;
        let (nh, dn, dr, dv, r) = (
            spec.heads,
            spec.qk_nope_head_dim,
            spec.qk_rope_head_dim,
            spec.v_head_dim,
            spec.kv_lora_rank,
        );
        let width = r + dr;
        self.rmsnorm(&s.x, input_norm, &s.xn, n, h, 0);
        // Both projections of the normed input before the q norm overwrites its other
        // layouts (xi, xq).
        let kv_in = self.input(&a.kv_a, h);
        self.linear(&a.kv_a, kv_in, &s.lat_kv, a.kv_a_bias.as_ref(), None);
        match &a.q {
            MlaQuery::LowRank {
                a: qa,
                a_bias,
                norm,
                b,
            } => {
                let ql = qa.rows;
                let qa_in = self.input(qa, h);
                self.linear(qa, qa_in, &s.lat_q, a_bias.as_ref(), None);
                self.rmsnorm_eps(&s.lat_q, norm, &s.lat_qn, n, ql, LATENT_EPS);
                let b_in = match b.format {
                    WeightFormat::Affine(_) | WeightFormat::Mxfp4 | WeightFormat::Fp8Block
                        if interleaves(self.decode, ql) =>
                    {
                        let layout = match b.format {
                            WeightFormat::Affine(q) => {
                                XLayout::for_bits(q.bits, self.m.f32_activations)
                            }
                            _ => XLayout::Interleaved,
                        };
                        (s.row_in(layout), layout)
                    }
                    _ => (&s.lat_qn, XLayout::Natural),
                };
                self.linear(b, b_in, &s.q, None, None);
            }
            MlaQuery::Full(q) => {
                let q_in = self.input(q, h);
                self.linear(q, q_in, &s.q, None, None);
            }
        }
        let kv_dtype = self.m.kv_cache_dtype;
        let cache = self.state.latent(l)?;
        let p = MlaLatentParams {
            n_tokens: n as u32,
            heads: nh as u32,
            rank: r as u32,
            rope: dr as u32,
            nope: dn as u32,
            pos0: self.pos0 as u32,
            eps: LATENT_EPS,
            sin_offset: s.rope_sin,
            interleave: u32::from(spec.rope_interleave),
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::MlaLatent,
            Some(kv_dtype),
            p.words(),
            &[
                (&s.q).into(),
                (&s.lat_kv).into(),
                a.kv_norm.bind(),
                (&s.rope).into(),
                (&s.qr).into(),
                cache.into(),
            ],
            (nh as u32 + 1, n as u32),
        );
        // Each head's nope dims into the latent space: the first `rank` of its query row.
        self.heads_linear(&a.embed_q, (&s.q, dn + dr), (&s.qr, width), nh);
        // A decode step splits the keys into ranges (many workgroups per head), merged
        // by the kernel of the other attention layers; a prefill takes a workgroup per
        // (head, query).
        let (chunk, splits) = if self.decode {
            kernels::attention_splits(self.pos0 as u32 + 1, nh as u32)
        } else {
            (0, 0)
        };
        let p = MlaAttentionParams {
            n_tokens: n as u32,
            heads: nh as u32,
            rank: r as u32,
            rope: dr as u32,
            pos0: self.pos0 as u32,
            scale: spec.scale,
            chunk,
            n_splits: splits,
        };
        let dummy = &self.m.gpu.dummy;
        let part = if splits > 0 { &s.attn_part } else { dummy };
        self.rec.dispatch(
            Kernel::MlaAttention,
            Some(kv_dtype),
            p.words(),
            &[(&s.qr).into(), cache.into(), (&s.attn).into(), part.into()],
            (nh as u32, if splits > 0 { splits } else { n as u32 }),
        );
        if splits > 0 {
            let p = AttentionMergeParams {
                n_heads: nh as u32,
                head_dim: r as u32,
                n_splits: splits,
                ..Default::default()
            };
            self.rec.dispatch(
                Kernel::AttentionMerge,
                None,
                p.words(),
                &[
                    (&s.attn_part).into(),
                    (&s.attn).into(),
                    dummy.into(),
                    dummy.into(),
                ],
                kernels::attention_merge_groups(nh as u32, r as u32),
            );
        }
        // Each head's latent output to its values, `[tokens, heads * v_head_dim]`.
        self.heads_linear(&a.unembed, (&s.attn, r), (&s.q, dv), nh);
        self.linear(
            &a.o,
            (&s.q, XLayout::Natural),
            &s.h,
            a.o_bias.as_ref(),
            Some(&s.x),
        );
        Ok(())
    }

    /// A batch of per-head mat-vecs over this pass's tokens: `w` holds `heads` stacked
    /// matrices of `w.rows / heads` rows; group g = token * heads + head multiplies head's
    /// matrix with x's row at `g * x_stride` into y from `g * y_stride`.
    fn heads_linear(
        &mut self,
        w: &GpuMatrix,
        (x, x_stride): (&wgpu::Buffer, usize),
        (y, y_stride): (&wgpu::Buffer, usize),
        heads: usize,
    ) {
        let Some((buf, _, _)) = w.chunks.first() else {
            return;
        };
        let dummy = &self.m.gpu.dummy;
        let rows = w.rows / heads;
        let binds = [buf.into(), x.into(), dummy.into(), dummy.into(), y.into()];
        let (n, h, c) = (self.n as u32, heads as u32, w.cols as u32);
        match w.format {
            WeightFormat::Float(dt) => {
                let p = MatVecParams {
                    rows: rows as u32,
                    cols: c,
                    heads: h,
                    x_stride: x_stride as u32,
                    y_stride: y_stride as u32,
                    ..Default::default()
                };
                self.rec.record(
                    Kernel::MatVec,
                    dt.shader_code(),
                    None,
                    0,
                    p.words(),
                    &binds,
                    Size::Direct3(kernels::head_batch_groups(rows as u32, h, n)),
                );
            }
            WeightFormat::Affine(_) | WeightFormat::Mxfp4 | WeightFormat::Fp8Block => {
                let parts = w.format.parts(w.rows, w.cols);
                let (sw, bw) = ((parts.scales.0 / 4) as u32, (parts.biases.0 / 4) as u32);
                let (code, quant) = super::linear::quant_constants(w.format);
                let team = self.m.gpu.qmatvec_team(rows, w.cols);
                let rpt = kernels::qmatvec_rows_per_team(rows as u32);
                let p = QMatVecParams {
                    rows: rows as u32,
                    cols: c,
                    scales_word: sw,
                    biases_word: bw,
                    team,
                    heads: h,
                    x_stride: x_stride as u32,
                    y_stride: y_stride as u32,
                    ..Default::default()
                };
                let [b0, b1, b2, b3, b4] = binds;
                self.rec.record(
                    Kernel::QMatVec,
                    code,
                    quant,
                    rpt,
                    p.words(),
                    // (The normalized-row output, unused here: y again.)
                    &[b0, b1, b2, b3, b4, buf.into(), b4],
                    Size::Direct3(kernels::head_batch_groups(
                        kernels::qmatvec_head_blocks(rows as u32, team, rpt),
                        h,
                        n,
                    )),
                );
            }
        }
    }
}
