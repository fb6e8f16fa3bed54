//! gpt-oss's `config.json`: the released spelling (`rope_scaling` with a top-level
//! `rope_theta`, `num_local_experts`, `experts_per_token`) and transformers v5's
//! (`rope_parameters` holding `rope_theta`), with `GptOssConfig`'s defaults.

use crate::arch::{AttentionSpec, ExpertActivation, Ffn, LayerPlan, Mixer, MoeSpec, RouterKind};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// transformers' `GptOssConfig.default_theta`.
const DEFAULT_THETA: f64 = 150_000.0;

pub(crate) fn parse(p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
    // The released checkpoints' experts are MXFP4 (`quant_method: "mxfp4"`).
    p.check_quantization_with(&["mxfp4"])?;
    let hidden_size = p.positive("hidden_size")?;
    let (num_attention_heads, num_key_value_heads, head_dim) = p.attention_heads(hidden_size)?;
    let rope = p.rope_or(DEFAULT_THETA)?;
    let num_experts = match p.opt_usize("num_local_experts")? {
        Some(n) => n,
        None => p.opt_usize("num_experts")?.unwrap_or(128),
    };
    if num_experts == 0 {
        return Err(p.err("`num_local_experts` must be positive"));
    }
    let top_k = match p.opt_usize("num_experts_per_tok")? {
        Some(k) => k,
        None => p.opt_usize("experts_per_token")?.unwrap_or(4),
    };
    if top_k == 0 || top_k > num_experts {
        return Err(p.err(format!(
            "num_experts_per_tok must be in 1..={num_experts}, found {top_k}"
        )));
    }
    let inter = p.positive("intermediate_size")?;
    let num_hidden_layers = p.num_hidden_layers()?;
    let window = p.opt_usize("sliding_window")?.unwrap_or(128);
    let sliding = layer_types(p, num_hidden_layers)?;
    if window == 0 && sliding.iter().any(|&s| s) {
        return Err(p.err("`sliding_window` must be positive for sliding-attention layers"));
    }
    let positive_f32 = |key: &str, default: f64| -> Result<f32> {
        let v = p.opt_f64(key)?.unwrap_or(default);
        if v.is_finite() && v > 0.0 && v < 1e30 {
            Ok(v as f32)
        } else {
            Err(p.err(format!("`{key}` must be a positive number, found {v}")))
        }
    };
    let activation = ExpertActivation::ClampedSwiGlu {
        alpha: positive_f32("swiglu_alpha", 1.702)?,
        limit: positive_f32("swiglu_limit", 7.0)?,
    };
    let attention_bias = p.opt_bool("attention_bias")?.unwrap_or(true);
    let attention = |sliding: bool| AttentionSpec {
        heads: num_attention_heads,
        kv_heads: num_key_value_heads,
        head_dim,
        rotary_dim: head_dim,
        qk_norm: false,
        qk_norm_whole: false,
        clip_qkv: None,
        output_gate: false,
        bias: attention_bias,
        o_bias: attention_bias,
        sinks: true,
        sliding_window: sliding.then_some(window),
    };
    let moe = MoeSpec {
        experts: num_experts,
        top_k,
        inter,
        norm_topk_prob: false,
        shared_expert: None,
        shared_gate: false,
        router: RouterKind::TopKSoftmax,
        router_bias: true,
        activation,
        expert_bias: true,
    };
    let layers = sliding
        .iter()
        .map(|&s| LayerPlan {
            mixer: Mixer::Attention(attention(s)),
            ffn: Ffn::Moe(moe),
        })
        .collect();
    Ok(ModelConfig {
        model_type,
        vocab_size: p.positive("vocab_size")?,
        hidden_size,
        intermediate_size: 0,
        moe_intermediate_size: inter,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: p.rms_norm_eps()?,
        rope_theta: rope.theta,
        rotary_dim: head_dim,
        num_experts,
        num_experts_per_tok: top_k,
        norm_topk_prob: false,
        decoder_sparse_step: 1,
        mlp_only_layers: Vec::new(),
        tie_word_embeddings: p.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        max_position_embeddings: p.opt_usize("max_position_embeddings")?.unwrap_or(131_072),
        dtype: p.dtype(),
        eos_token_ids: p.token_ids("eos_token_id")?,
        bos_token_id: p.token_ids("bos_token_id")?.first().copied(),
        linear_attention: None,
        shared_expert_intermediate_size: 0,
        attn_output_gate: false,
        rope_scaling: rope.yarn,
        layers,
    })
}

/// Per layer, whether it slides: `layer_types` (`"sliding_attention"` or
/// `"full_attention"`), else transformers' default, even layers sliding.
fn layer_types(p: &Parser<'_>, layers: usize) -> Result<Vec<bool>> {
    Ok(
        p.layer_types(layers, "sliding_attention", "full_attention")?
            .unwrap_or_else(|| (0..layers).map(|l| l % 2 == 0).collect()),
    )
}
