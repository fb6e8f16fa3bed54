//! `config.json` of Qwen3.5-MoE (composite `qwen3_5_moe` with a `text_config`, or flat
//! `qwen3_5_moe_text`) and Qwen3-Next (flat `qwen3_next`). Defaults are those of
//! transformers' `Qwen3_5MoeTextConfig` / `Qwen3NextConfig`.

use crate::arch::{
    AttentionSpec, ExpertActivation, Ffn, LayerPlan, LinearAttentionSpec, Mixer, MoeSpec,
    RouterKind,
};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

pub(crate) fn parse(top: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
    // The released checkpoints nest the decoder's keys in `text_config`; mlx-lm and
    // transformers accept a flat dict as well.
    let nested = if model_type == "qwen3_5_moe" {
        top.nested("text_config")?
    } else {
        None
    };
    let p = nested.as_ref().unwrap_or(top);
    let next = model_type == "qwen3_next";
    p.check_silu()?;
    top.check_quantization()?;
    let hidden_size = p.positive("hidden_size")?;
    let num_hidden_layers = p.num_hidden_layers()?;
    let num_attention_heads = p.opt_usize("num_attention_heads")?.unwrap_or(16);
    let num_key_value_heads = p.opt_usize("num_key_value_heads")?.unwrap_or(2);
    if num_attention_heads == 0
        || num_key_value_heads == 0
        || num_attention_heads % num_key_value_heads != 0
    {
        return Err(p.err(format!(
            "num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})"
        )));
    }
    let head_dim = p.opt_usize("head_dim")?.unwrap_or(256);
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(p.err(format!(
            "head_dim must be a positive even number, found {head_dim}"
        )));
    }
    let rope = p.rope()?;
    let rope_theta = rope.theta;
    // transformers' config classes default the factor to 0.25 for these families.
    let rotary_dim = p.rotary_dim(&rope, head_dim, 0.25)?;
    let linear = LinearAttentionSpec {
        key_heads: p.opt_usize("linear_num_key_heads")?.unwrap_or(16),
        value_heads: p.opt_usize("linear_num_value_heads")?.unwrap_or(32),
        key_dim: p.opt_usize("linear_key_head_dim")?.unwrap_or(128),
        value_dim: p.opt_usize("linear_value_head_dim")?.unwrap_or(128),
        conv_kernel: p.opt_usize("linear_conv_kernel_dim")?.unwrap_or(4),
    };
    if linear.key_heads == 0
        || linear.value_heads % linear.key_heads != 0
        || linear.value_heads == 0
    {
        return Err(p.err(format!(
            "linear_num_value_heads ({}) must be a positive multiple of linear_num_key_heads ({})",
            linear.value_heads, linear.key_heads
        )));
    }
    if linear.value_heads > 4096 {
        return Err(p.err(format!(
            "linear_num_value_heads {} is above the supported maximum of 4096",
            linear.value_heads
        )));
    }
    if linear.key_dim == 0
        || linear.value_dim == 0
        || linear.key_dim > 256
        || linear.value_dim > 256
    {
        return Err(p.err(format!(
            "linear_key_head_dim ({}) and linear_value_head_dim ({}) must be in 1..=256",
            linear.key_dim, linear.value_dim
        )));
    }
    if !(2..=8).contains(&linear.conv_kernel) {
        return Err(p.err(format!(
            "linear_conv_kernel_dim must be in 2..=8, found {}",
            linear.conv_kernel
        )));
    }
    let num_experts = p
        .opt_usize("num_experts")?
        .unwrap_or(if next { 512 } else { 256 });
    let num_experts_per_tok =
        p.opt_usize("num_experts_per_tok")?
            .unwrap_or(if next { 10 } else { 8 });
    if num_experts > 0 && (num_experts_per_tok == 0 || num_experts_per_tok > num_experts) {
        return Err(p.err(format!(
            "num_experts_per_tok must be in 1..={num_experts}, found {num_experts_per_tok}"
        )));
    }
    let moe_intermediate_size = p.opt_usize("moe_intermediate_size")?.unwrap_or(512);
    let shared = p
        .opt_usize("shared_expert_intermediate_size")?
        .unwrap_or(512);
    // Qwen3.5 always renormalizes the top-k weights; Qwen3-Next as configured.
    let norm_topk_prob = if next {
        p.opt_bool("norm_topk_prob")?.unwrap_or(true)
    } else {
        true
    };
    let decoder_sparse_step = if next {
        p.opt_usize("decoder_sparse_step")?.unwrap_or(1)
    } else {
        1
    };
    if decoder_sparse_step == 0 {
        return Err(p.err("`decoder_sparse_step` must be positive"));
    }
    let mlp_only_layers = if next {
        p.layer_list("mlp_only_layers")?
    } else {
        Vec::new()
    };
    let intermediate_size = if next {
        p.opt_usize("intermediate_size")?.unwrap_or(5632)
    } else {
        0
    };
    let linear_layers = layer_types(p, num_hidden_layers)?;
    let attention = AttentionSpec {
        heads: num_attention_heads,
        kv_heads: num_key_value_heads,
        head_dim,
        rotary_dim,
        qk_norm: true,
        qk_norm_whole: false,
        clip_qkv: None,
        output_gate: true,
        bias: p.opt_bool("attention_bias")?.unwrap_or(false),
        o_bias: p.opt_bool("attention_bias")?.unwrap_or(false),
        sinks: false,
        sliding_window: None,
    };
    let moe = MoeSpec {
        experts: num_experts,
        top_k: num_experts_per_tok,
        inter: moe_intermediate_size,
        norm_topk_prob,
        shared_expert: (shared > 0).then_some(shared),
        shared_gate: true,
        router: RouterKind::SoftmaxTopK,
        router_bias: false,
        activation: ExpertActivation::SwiGlu,
        expert_bias: false,
    };
    let layers = linear_layers
        .iter()
        .enumerate()
        .map(|(l, &linear_layer)| LayerPlan {
            mixer: if linear_layer {
                Mixer::LinearAttention(linear)
            } else {
                Mixer::Attention(attention)
            },
            ffn: if num_experts > 0
                && !mlp_only_layers.contains(&l)
                && (l + 1) % decoder_sparse_step == 0
            {
                Ffn::Moe(moe)
            } else {
                Ffn::Dense {
                    inter: intermediate_size,
                }
            },
        })
        .collect::<Vec<_>>();
    if moe_intermediate_size == 0 && layers.iter().any(|l| l.moe().is_some()) {
        return Err(p.err("`moe_intermediate_size` must be positive"));
    }
    if layers.iter().any(|l| l.moe().is_none()) && intermediate_size == 0 {
        return Err(p.err("`intermediate_size` is required: the model has dense MLP layers"));
    }
    let tie = top
        .opt_bool("tie_word_embeddings")?
        .or(p.opt_bool("tie_word_embeddings")?)
        .unwrap_or(false);
    let eos = match p.token_ids("eos_token_id")? {
        ids if ids.is_empty() => top.token_ids("eos_token_id")?,
        ids => ids,
    };
    let bos = match p.token_ids("bos_token_id")?.first() {
        Some(&b) => Some(b),
        None => top.token_ids("bos_token_id")?.first().copied(),
    };
    Ok(ModelConfig {
        model_type,
        vocab_size: p
            .opt_usize("vocab_size")?
            .unwrap_or(if next { 151936 } else { 248320 }),
        hidden_size,
        intermediate_size,
        moe_intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: p.rms_norm_eps()?,
        rope_theta,
        rotary_dim,
        num_experts,
        num_experts_per_tok,
        norm_topk_prob,
        decoder_sparse_step,
        mlp_only_layers,
        tie_word_embeddings: tie,
        attention_bias: attention.bias,
        max_position_embeddings: p.opt_usize("max_position_embeddings")?.unwrap_or(32768),
        dtype: p.dtype().or_else(|| top.dtype()),
        eos_token_ids: eos,
        bos_token_id: bos,
        linear_attention: Some(linear),
        shared_expert_intermediate_size: shared,
        attn_output_gate: true,
        rope_scaling: rope.yarn,
        layers,
    })
}

/// Per layer, whether it is linear attention: `layer_types` (`"linear_attention"` or
/// `"full_attention"`), else every `full_attention_interval`-th layer (default 4) is full.
fn layer_types(p: &Parser<'_>, layers: usize) -> Result<Vec<bool>> {
    if let Some(types) = p.layer_types(layers, "linear_attention", "full_attention")? {
        return Ok(types);
    }
    let interval = p.opt_usize("full_attention_interval")?.unwrap_or(4);
    if interval == 0 {
        return Err(p.err("`full_attention_interval` must be positive"));
    }
    Ok((0..layers).map(|l| (l + 1) % interval != 0).collect())
}
