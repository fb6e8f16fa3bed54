//! Qwen3.5-MoE (`qwen3_5_moe`, `qwen3_5_moe_text`) and Qwen3-Next (`qwen3_next`): hybrids of
//! Gated DeltaNet linear attention and gated full attention (every `full_attention_interval`-th
//! layer, or as `layer_types` says), with routed experts plus a sigmoid-gated shared expert.
//!
//! What differs from Qwen3-MoE:
//! - full attention: q_proj yields `[q | gate]` per head, the output is multiplied by
//!   `sigmoid(gate)` before o_proj; RoPE rotates the first `partial_rotary_factor` (0.25)
//!   of each head only;
//! - linear attention (`linear_attn.*`): Gated DeltaNet with a causal depthwise conv1d and
//!   a recurrent state per value head;
//! - every RMSNorm but the linear attention's gated norm is zero-centred: HF checkpoints
//!   store `w` and the model multiplies by `1 + w`; mlx-lm's converter stores `1 + w`;
//! - names: the released checkpoints keep the decoder under `model.language_model.*`
//!   (with `model.visual.*` and `mtp.*` beside it, skipped), mlx-community ones under
//!   `language_model.model.*`; Qwen3-Next stores `in_proj_qkvz` / `in_proj_ba` grouped per
//!   key head, which the loader de-interleaves into Qwen3.5's `in_proj_qkv`, `z`, `b`, `a`.

mod config;

use super::{tensor, Family, LinearAttentionSpec, Names, RowSlice};
use crate::checkpoint::Checkpoint;
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// The Qwen3.5-MoE and Qwen3-Next families.
pub(crate) struct Qwen35;

/// Names of the released (vision-language) checkpoints, of mlx-community's, and flat text
/// checkpoints.
const NAMES: &[Names] = &[
    Names::hf_at("model.language_model.", "lm_head.weight"),
    Names::hf_at("language_model.model.", "language_model.lm_head.weight"),
    Names::HF,
];

impl Family for Qwen35 {
    fn model_types(&self) -> &'static [&'static str] {
        &["qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next"]
    }

    fn config(&self, p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
        config::parse(p, model_type)
    }

    fn names(&self) -> &'static [Names] {
        NAMES
    }

    fn zero_centred_norms(&self) -> bool {
        true
    }

    fn linear_projection(
        &self,
        names: &Names,
        l: usize,
        spec: &LinearAttentionSpec,
        ckpt: &Checkpoint,
    ) -> Result<Vec<RowSlice>> {
        let n = |path: &str| names.layer(l, path);
        let whole = |prefix: String, rows: usize| RowSlice {
            prefix,
            rows,
            start: 0,
            count: rows,
        };
        let (hk, hv, dk, dv) = (
            spec.key_heads,
            spec.value_heads,
            spec.key_dim,
            spec.value_dim,
        );
        if ckpt.contains(&names.weight(l, tensor::IN_PROJ_QKVZ)) {
            // Qwen3-Next: per key head g, `[q_g | k_g | v (r heads) | z (r heads)]` and
            // `[b (r) | a (r)]`, r = value heads per key head.
            let r = hv / hk;
            let group = 2 * dk + 2 * r * dv;
            let (qkvz, ba) = (n(tensor::IN_PROJ_QKVZ), n(tensor::IN_PROJ_BA));
            let rows = hk * group;
            let mut out = Vec::with_capacity(6 * hk);
            for (off, count) in [
                (0, dk),
                (dk, dk),
                (2 * dk, r * dv),
                (2 * dk + r * dv, r * dv),
            ] {
                out.extend((0..hk).map(|g| RowSlice {
                    prefix: qkvz.clone(),
                    rows,
                    start: g * group + off,
                    count,
                }));
            }
            for off in [0, r] {
                out.extend((0..hk).map(|g| RowSlice {
                    prefix: ba.clone(),
                    rows: 2 * hv,
                    start: g * 2 * r + off,
                    count: r,
                }));
            }
            return Ok(out);
        }
        Ok(vec![
            whole(n(tensor::IN_PROJ_QKV), spec.conv_channels()),
            whole(n(tensor::IN_PROJ_Z), hv * dv),
            whole(n(tensor::IN_PROJ_B), hv),
            whole(n(tensor::IN_PROJ_A), hv),
        ])
    }
}
