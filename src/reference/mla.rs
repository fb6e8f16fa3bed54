//! Multi-head latent attention (DeepSeek-V3, Kimi-K2) in the CPU reference, in its naive
//! form: each head's keys and values expanded from the latent (docs/families/deepseek_v3.md
//! §3b; the engine will attend over the latent itself, §4).

use super::ops::{matmul, rms_norm};
use crate::arch::MlaSpec;

/// The latent norms' epsilon (`DeepseekV3RMSNorm`'s default, whatever `rms_norm_eps` says).
const LATENT_EPS: f32 = 1e-6;

/// How q is projected.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MlaQuery {
    /// `q_a_proj` `[q_lora, hidden]` (+ bias), `q_a_layernorm` `[q_lora]`, `q_b_proj`
    /// `[heads (dn + dr), q_lora]`.
    LowRank {
        /// `q_a_proj.weight`.
        a: Vec<f32>,
        /// `q_a_proj.bias` (`attention_bias`).
        a_bias: Option<Vec<f32>>,
        /// `q_a_layernorm.weight`.
        norm: Vec<f32>,
        /// `q_b_proj.weight`.
        b: Vec<f32>,
    },
    /// `q_proj` `[heads (dn + dr), hidden]`.
    Full(Vec<f32>),
}

/// The weights of a latent-attention layer, as f32.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MlaWeights {
    /// The variant.
    pub spec: MlaSpec,
    /// The q projection.
    pub q: MlaQuery,
    /// `kv_a_proj_with_mqa` `[r + dr, hidden]`.
    pub kv_a: Vec<f32>,
    /// Its bias (`attention_bias`).
    pub kv_a_bias: Option<Vec<f32>>,
    /// `kv_a_layernorm` `[r]`.
    pub kv_a_norm: Vec<f32>,
    /// `kv_b_proj` `[heads (dn + dv), r]`: per head dn rows of W_UK, then dv of W_UV.
    pub kv_b: Vec<f32>,
    /// `o_proj` `[hidden, heads dv]`.
    pub o: Vec<f32>,
    /// Its bias (`attention_bias`).
    pub o_bias: Option<Vec<f32>>,
}

/// RoPE with pairs `(2i, 2i + 1)` (interleaved) or `(i, i + d / 2)` of the `d`-value
/// vector at `x`, at position `pos` (tables `[positions, d / 2]`).
fn rotate(x: &mut [f32], pos: usize, cos: &[f32], sin: &[f32], interleave: bool) {
    let half = x.len() / 2;
    for i in 0..half {
        let (c, s) = (cos[pos * half + i], sin[pos * half + i]);
        let (a, b) = if interleave {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + half)
        };
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * c - xb * s;
        x[b] = xb * c + xa * s;
    }
}

fn add_rows(y: &mut [f32], bias: Option<&Vec<f32>>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(b.len()) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
}

impl MlaWeights {
    /// The layer's attention on its normed input `x` (`n x hidden`, positions `0..n`), the
    /// RoPE tables over `qk_rope_head_dim` (YaRN's attention factor included). Returns
    /// `n x hidden`.
    pub fn forward(&self, x: &[f32], n: usize, h: usize, cos: &[f32], sin: &[f32]) -> Vec<f32> {
        let s = &self.spec;
        let (nh, dn, dr, dv, r) = (
            s.heads,
            s.qk_nope_head_dim,
            s.qk_rope_head_dim,
            s.v_head_dim,
            s.kv_lora_rank,
        );
        let dq = dn + dr;
        let mut q = match &self.q {
            MlaQuery::LowRank { a, a_bias, norm, b } => {
                let ql = norm.len();
                let mut cq = matmul(a, ql, h, x, n);
                add_rows(&mut cq, a_bias.as_ref());
                let cq = rms_norm(&cq, norm, LATENT_EPS);
                matmul(b, nh * dq, ql, &cq, n)
            }
            MlaQuery::Full(w) => matmul(w, nh * dq, h, x, n),
        };
        let mut kv_a = matmul(&self.kv_a, r + dr, h, x, n);
        add_rows(&mut kv_a, self.kv_a_bias.as_ref());
        let mut latent = Vec::with_capacity(n * r);
        let mut k_pe = Vec::with_capacity(n * dr);
        for row in kv_a.chunks_exact(r + dr) {
            latent.extend(rms_norm(&row[..r], &self.kv_a_norm, LATENT_EPS));
            k_pe.extend_from_slice(&row[r..]);
        }
        for t in 0..n {
            rotate(
                &mut k_pe[t * dr..(t + 1) * dr],
                t,
                cos,
                sin,
                s.rope_interleave,
            );
            for head in 0..nh {
                let at = (t * nh + head) * dq + dn;
                rotate(&mut q[at..at + dr], t, cos, sin, s.rope_interleave);
            }
        }
        // Per head: k_nope (dn) and v (dv) from the latent.
        let kv = matmul(&self.kv_b, nh * (dn + dv), r, &latent, n);
        let mut o = vec![0.0f32; n * nh * dv];
        let mut scores = Vec::with_capacity(n);
        for head in 0..nh {
            for t in 0..n {
                let qt = &q[(t * nh + head) * dq..(t * nh + head + 1) * dq];
                scores.clear();
                for u in 0..=t {
                    let kb = (u * nh + head) * (dn + dv);
                    let nope: f32 = qt[..dn]
                        .iter()
                        .zip(&kv[kb..kb + dn])
                        .map(|(a, b)| a * b)
                        .sum();
                    let rope: f32 = qt[dn..]
                        .iter()
                        .zip(&k_pe[u * dr..(u + 1) * dr])
                        .map(|(a, b)| a * b)
                        .sum();
                    scores.push(s.scale * (nope + rope));
                }
                let m = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut total = 0.0f32;
                for v in scores.iter_mut() {
                    *v = (*v - m).exp();
                    total += *v;
                }
                let ot = &mut o[(t * nh + head) * dv..(t * nh + head + 1) * dv];
                for (u, p) in scores.iter().enumerate() {
                    let vb = (u * nh + head) * (dn + dv) + dn;
                    for (ov, vv) in ot.iter_mut().zip(&kv[vb..vb + dv]) {
                        *ov += p / total * vv;
                    }
                }
            }
        }
        let mut out = matmul(&self.o, h, nh * dv, &o, n);
        add_rows(&mut out, self.o_bias.as_ref());
        out
    }
}
