//! Mixtral's `config.json`: the released spelling (top-level `rope_theta`, no `head_dim`,
//! `sliding_window: null`) and transformers v5's (`rope_parameters`), with
//! `MixtralConfig`'s defaults (8 key/value heads, a RoPE base of 1e6).

use crate::arch::{AttentionSpec, ExpertActivation, Ffn, LayerPlan, Mixer, MoeSpec, RouterKind};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// transformers' `MixtralConfig` default RoPE base.
const DEFAULT_THETA: f64 = 1e6;
/// transformers' (and mlx-lm's) default `num_key_value_heads`.
const DEFAULT_KV_HEADS: usize = 8;

pub(crate) fn parse(p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
    p.check_silu()?;
    p.check_quantization()?;
    let hidden_size = p.positive("hidden_size")?;
    let (num_attention_heads, num_key_value_heads, head_dim) =
        p.attention_heads_with(hidden_size, Some(DEFAULT_KV_HEADS))?;
    let rope = p.rope_or(DEFAULT_THETA)?;
    let num_experts = p.opt_usize("num_local_experts")?.unwrap_or(8);
    if num_experts == 0 {
        return Err(p.err("`num_local_experts` must be positive"));
    }
    let top_k = p.opt_usize("num_experts_per_tok")?.unwrap_or(2);
    if top_k == 0 || top_k > num_experts {
        return Err(p.err(format!(
            "num_experts_per_tok must be in 1..={num_experts}, found {top_k}"
        )));
    }
    let inter = p.positive("intermediate_size")?;
    let num_hidden_layers = p.num_hidden_layers()?;
    let window = p.opt_usize("sliding_window")?;
    if window == Some(0) {
        return Err(p.err("`sliding_window` must be positive or null"));
    }
    let attention = AttentionSpec {
        heads: num_attention_heads,
        kv_heads: num_key_value_heads,
        head_dim,
        rotary_dim: head_dim,
        qk_norm: false,
        qk_norm_whole: false,
        clip_qkv: None,
        output_gate: false,
        bias: false,
        o_bias: false,
        sinks: false,
        sliding_window: window,
    };
    let moe = MoeSpec {
        experts: num_experts,
        top_k,
        inter,
        norm_topk_prob: true,
        shared_expert: None,
        shared_gate: false,
        router: RouterKind::SoftmaxTopK,
        router_bias: false,
        activation: ExpertActivation::SwiGlu,
        expert_bias: false,
    };
    let layers = (0..num_hidden_layers)
        .map(|_| LayerPlan {
            mixer: Mixer::Attention(attention),
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
        norm_topk_prob: true,
        decoder_sparse_step: 1,
        mlp_only_layers: Vec::new(),
        tie_word_embeddings: p.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias: false,
        max_position_embeddings: p.opt_usize("max_position_embeddings")?.unwrap_or(32768),
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
