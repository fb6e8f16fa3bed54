//! `kv_b_proj` and its absorbed form. Hugging Face checkpoints store `kv_b_proj`
//! `[heads (dn + dv), r]`: per head dn rows of W_UK (latent -> key nope dims), then dv rows
//! of W_UV (latent -> values). Attending over the latent itself needs W_UK transposed per
//! head (`embed_q` `[heads, r, dn]`: a query's nope part into the latent space) and W_UV
//! (`unembed_out` `[heads, dv, r]`), which is how mlx-lm stores them
//! (docs/families/deepseek_v3.md §2d, §4).

use crate::arch::MlaSpec;

/// `kv_b_proj` (f32, `[heads (dn + dv), r]`) split into `embed_q` `[heads r, dn]` and
/// `unembed_out` `[heads dv, r]`.
pub(crate) fn split_kv_b(spec: &MlaSpec, kv_b: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (nh, dn, dv, r) = (
        spec.heads,
        spec.qk_nope_head_dim,
        spec.v_head_dim,
        spec.kv_lora_rank,
    );
    let mut embed_q = vec![0f32; nh * r * dn];
    let mut unembed = Vec::with_capacity(nh * dv * r);
    for h in 0..nh {
        let head = &kv_b[h * (dn + dv) * r..(h + 1) * (dn + dv) * r];
        for i in 0..dn {
            for j in 0..r {
                embed_q[(h * r + j) * dn + i] = head[i * r + j];
            }
        }
        unembed.extend_from_slice(&head[dn * r..]);
    }
    (embed_q, unembed)
}

/// The inverse of [`split_kv_b`]: `kv_b_proj` from `embed_q` and `unembed_out`.
pub(crate) fn join_kv_b(spec: &MlaSpec, embed_q: &[f32], unembed: &[f32]) -> Vec<f32> {
    let (nh, dn, dv, r) = (
        spec.heads,
        spec.qk_nope_head_dim,
        spec.v_head_dim,
        spec.kv_lora_rank,
    );
    let mut kv_b = Vec::with_capacity(nh * (dn + dv) * r);
    for h in 0..nh {
        for i in 0..dn {
            kv_b.extend((0..r).map(|j| embed_q[(h * r + j) * dn + i]));
        }
        kv_b.extend_from_slice(&unembed[h * dv * r..(h + 1) * dv * r]);
    }
    kv_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_are_inverse() {
        let spec = MlaSpec {
            heads: 3,
            q_lora_rank: None,
            kv_lora_rank: 5,
            qk_nope_head_dim: 4,
            qk_rope_head_dim: 2,
            v_head_dim: 3,
            scale: 1.0,
            rope_interleave: true,
            bias: false,
        };
        let kv_b: Vec<f32> = (0..3 * 7 * 5).map(|i| i as f32).collect();
        let (e, u) = split_kv_b(&spec, &kv_b);
        // Head 1's W_UK row 2, latent column 3, is embed_q[1][3][2].
        assert_eq!(e[(5 + 3) * 4 + 2], kv_b[(7 + 2) * 5 + 3]);
        // Head 2's W_UV row 1 is kv_b row 2 * 7 + 4 + 1.
        assert_eq!(
            u[(2 * 3 + 1) * 5..(2 * 3 + 2) * 5],
            kv_b[(2 * 7 + 5) * 5..(2 * 7 + 6) * 5]
        );
        assert_eq!(join_kv_b(&spec, &e, &u), kv_b);
    }
}
