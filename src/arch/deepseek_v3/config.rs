//! DeepSeek-V3's `config.json`: the released spelling (`rope_scaling` with `"type":
//! "yarn"`, integer `rope_theta`, `q_lora_rank` null for Moonlight-style models) and
//! transformers v5's (`rope_parameters`, a derived `head_dim` that is not the attention
//! head size), with `DeepseekV3Config`'s defaults.

use crate::arch::glm4_moe::config::{sigmoid_moe, SigmoidDefaults, SigmoidMoe};
use crate::arch::{Ffn, LayerPlan, Mixer, MlaSpec};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// `DeepseekV3Config`'s routing defaults.
const DEFAULTS: SigmoidDefaults = SigmoidDefaults {
    experts: 256,
    top_k: 8,
    groups: 8,
    topk_groups: 4,
    scale: 2.5,
    first_dense: 3,
};

pub(crate) fn parse(p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
    p.check_silu()?;
    p.check_quantization_with(&["fp8"])?;
    let hidden_size = p.positive("hidden_size")?;
    let heads = p.positive("num_attention_heads")?;
    if let Some(kv) = p.opt_usize("num_key_value_heads")? {
        if kv != heads {
            return Err(p.err(format!(
                "num_key_value_heads ({kv}) must equal num_attention_heads ({heads}): latent attention has no grouped heads"
            )));
        }
    }
    // `null`: one q_proj (Moonlight); missing: the class default.
    let q_lora_rank = if p.is_null("q_lora_rank") {
        None
    } else {
        Some(p.opt_usize("q_lora_rank")?.unwrap_or(1536))
    };
    if q_lora_rank == Some(0) {
        return Err(p.err("`q_lora_rank` must be positive or null"));
    }
    let kv_lora_rank = p.opt_usize("kv_lora_rank")?.unwrap_or(512);
    let dn = p.opt_usize("qk_nope_head_dim")?.unwrap_or(128);
    let dr = p.opt_usize("qk_rope_head_dim")?.unwrap_or(64);
    let dv = p.opt_usize("v_head_dim")?.unwrap_or(128);
    // Each bounded before any sum: no width read from the file can overflow.
    if kv_lora_rank == 0
        || kv_lora_rank > 1 << 20
        || dv == 0
        || dv > 1 << 20
        || dr == 0
        || dr % 2 != 0
        || dr > 1024
        || dn > 1024
        || dn + dr > 1024
    {
        return Err(p.err(format!(
            "kv_lora_rank ({kv_lora_rank}) and v_head_dim ({dv}) must be positive (at most 2^20), qk_rope_head_dim ({dr}) positive and even, qk_nope_head_dim ({dn}) + qk_rope_head_dim at most 1024"
        )));
    }
    let rope = p.rope()?;
    // The softmax scale: (dn + dr)^-0.5, times mscale(factor, mscale_all_dim)^2 with YaRN.
    let mscale_all_dim = ["rope_parameters", "rope_scaling"]
        .iter()
        .filter_map(|k| p.get(k).and_then(|v| v.get("mscale_all_dim")))
        .find_map(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    let mut scale = 1.0 / ((dn + dr) as f64).sqrt();
    if let Some(y) = &rope.yarn {
        if mscale_all_dim != 0.0 && y.factor > 1.0 {
            let m = 0.1 * mscale_all_dim * y.factor.ln() + 1.0;
            scale *= m * m;
        }
    }
    let num_hidden_layers = p.num_hidden_layers()?;
    let SigmoidMoe {
        moe,
        first_dense,
        intermediate_size,
    } = sigmoid_moe(p, num_hidden_layers, DEFAULTS)?;
    let attention_bias = p.opt_bool("attention_bias")?.unwrap_or(false);
    let mla = MlaSpec {
        heads,
        q_lora_rank,
        kv_lora_rank,
        qk_nope_head_dim: dn,
        qk_rope_head_dim: dr,
        v_head_dim: dv,
        scale: scale as f32,
        rope_interleave: p.opt_bool("rope_interleave")?.unwrap_or(true),
        bias: attention_bias,
    };
    let layers = (0..num_hidden_layers)
        .map(|l| LayerPlan {
            mixer: Mixer::Mla(mla),
            ffn: if l < first_dense {
                Ffn::Dense {
                    inter: intermediate_size,
                }
            } else {
                Ffn::Moe(moe)
            },
        })
        .collect();
    Ok(ModelConfig {
        model_type,
        vocab_size: p.positive("vocab_size")?,
        hidden_size,
        intermediate_size,
        moe_intermediate_size: moe.inter,
        num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: dn + dr,
        rms_norm_eps: p.rms_norm_eps()?,
        rope_theta: rope.theta,
        rotary_dim: dr,
        num_experts: moe.experts,
        num_experts_per_tok: moe.top_k,
        norm_topk_prob: moe.norm_topk_prob,
        decoder_sparse_step: 1,
        mlp_only_layers: (0..first_dense).collect(),
        tie_word_embeddings: p.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        max_position_embeddings: p.opt_usize("max_position_embeddings")?.unwrap_or(4096),
        dtype: p.dtype(),
        eos_token_ids: p.token_ids("eos_token_id")?,
        bos_token_id: p.token_ids("bos_token_id")?.first().copied(),
        linear_attention: None,
        shared_expert_intermediate_size: moe.shared_expert.unwrap_or(0),
        attn_output_gate: false,
        rope_scaling: rope.yarn,
        layers,
    })
}
