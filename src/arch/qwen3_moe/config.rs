//! Qwen3-MoE's `config.json`, in the released spelling and transformers v5's.

use crate::arch::{AttentionSpec, ExpertActivation, Ffn, LayerPlan, Mixer, MoeSpec, RouterKind};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

pub(crate) fn parse(p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
    p.check_silu()?;
    p.check_quantization()?;
    let hidden_size = p.positive("hidden_size")?;
    let (num_attention_heads, num_key_value_heads, head_dim) = p.attention_heads(hidden_size)?;
    let rope = p.rope()?;
    let (rope_theta, partial) = (rope.theta, rope.partial);
    // transformers' qwen3_moe rotates the whole head whatever `partial_rotary_factor`
    // says; the factor is validated and kept for architectures that honour it.
    let _ = partial;
    let rotary_dim = head_dim;
    let num_experts = match p.opt_usize("num_experts")? {
        Some(n) => n,
        None => p.opt_usize("num_local_experts")?.unwrap_or(0),
    };
    let num_experts_per_tok = p.opt_usize("num_experts_per_tok")?.unwrap_or(0);
    if num_experts > 0 && (num_experts_per_tok == 0 || num_experts_per_tok > num_experts) {
        return Err(p.err(format!(
            "num_experts_per_tok must be in 1..={num_experts}, found {num_experts_per_tok}"
        )));
    }
    let decoder_sparse_step = p.opt_usize("decoder_sparse_step")?.unwrap_or(1);
    if decoder_sparse_step == 0 {
        return Err(p.err("`decoder_sparse_step` must be positive"));
    }
    let num_hidden_layers = p.num_hidden_layers()?;
    let mlp_only_layers = p.layer_list("mlp_only_layers")?;
    let rms_norm_eps = p.rms_norm_eps()?;
    let dtype = p.dtype();
    let moe_intermediate_size = if num_experts > 0 {
        p.positive("moe_intermediate_size")?
    } else {
        p.opt_usize("moe_intermediate_size")?.unwrap_or(0)
    };
    let mut cfg = ModelConfig {
        model_type,
        vocab_size: p.positive("vocab_size")?,
        hidden_size,
        intermediate_size: p.opt_usize("intermediate_size")?.unwrap_or(0),
        moe_intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rotary_dim,
        num_experts,
        num_experts_per_tok,
        norm_topk_prob: p.opt_bool("norm_topk_prob")?.unwrap_or(false),
        decoder_sparse_step,
        mlp_only_layers,
        tie_word_embeddings: p.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias: p.opt_bool("attention_bias")?.unwrap_or(false),
        max_position_embeddings: p.opt_usize("max_position_embeddings")?.unwrap_or(32768),
        dtype,
        eos_token_ids: p.token_ids("eos_token_id")?,
        bos_token_id: p.token_ids("bos_token_id")?.first().copied(),
        linear_attention: None,
        shared_expert_intermediate_size: 0,
        attn_output_gate: false,
        rope_scaling: rope.yarn,
        layers: Vec::new(),
    };
    cfg.layers = plan(&cfg);
    if cfg.layers.iter().any(|l| l.moe().is_none()) && cfg.intermediate_size == 0 {
        return Err(p.err("`intermediate_size` is required: the model has dense MLP layers"));
    }
    Ok(cfg)
}

/// Attention everywhere; routed experts in every `decoder_sparse_step`-th layer not in
/// `mlp_only_layers`, a dense MLP elsewhere.
pub(crate) fn plan(cfg: &ModelConfig) -> Vec<LayerPlan> {
    let attention = AttentionSpec {
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        rotary_dim: cfg.rotary_dim,
        qk_norm: true,
        qk_norm_whole: false,
        clip_qkv: None,
        output_gate: false,
        bias: cfg.attention_bias,
        o_bias: cfg.attention_bias,
        sinks: false,
        sliding_window: None,
    };
    (0..cfg.num_hidden_layers)
        .map(|l| {
            let moe = cfg.num_experts > 0
                && !cfg.mlp_only_layers.contains(&l)
                && (l + 1) % cfg.decoder_sparse_step == 0;
            LayerPlan {
                mixer: Mixer::Attention(attention),
                ffn: if moe {
                    Ffn::Moe(MoeSpec {
                        experts: cfg.num_experts,
                        top_k: cfg.num_experts_per_tok,
                        inter: cfg.moe_intermediate_size,
                        norm_topk_prob: cfg.norm_topk_prob,
                        shared_expert: None,
                        shared_gate: false,
                        router: RouterKind::SoftmaxTopK,
                        router_bias: false,
                        activation: ExpertActivation::SwiGlu,
                        expert_bias: false,
                    })
                } else {
                    Ffn::Dense {
                        inter: cfg.intermediate_size,
                    }
                },
            }
        })
        .collect()
}
