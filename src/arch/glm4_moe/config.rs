//! GLM-4.5 MoE's `config.json`: the released spelling (top-level `rope_theta` and
//! `partial_rotary_factor`) and transformers v5's (`rope_parameters`), with
//! `Glm4MoeConfig`'s defaults.

use crate::arch::{AttentionSpec, ExpertActivation, Ffn, LayerPlan, Mixer, MoeSpec, RouterKind};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

pub(crate) fn parse(p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
    p.check_silu()?;
    p.check_quantization()?;
    let hidden_size = p.positive("hidden_size")?;
    let (num_attention_heads, num_key_value_heads, head_dim) =
        p.attention_heads_with(hidden_size, Some(8))?;
    let rope = p.rope()?;
    let rotary_dim = p.rotary_dim(&rope, head_dim, 0.5)?;
    let num_hidden_layers = p.num_hidden_layers()?;
    let SigmoidMoe {
        moe,
        first_dense,
        intermediate_size,
    } = sigmoid_moe(p, num_hidden_layers, SigmoidDefaults::GLM)?;
    let attention_bias = p.opt_bool("attention_bias")?.unwrap_or(false);
    let attention = AttentionSpec {
        heads: num_attention_heads,
        kv_heads: num_key_value_heads,
        head_dim,
        rotary_dim,
        qk_norm: p.opt_bool("use_qk_norm")?.unwrap_or(false),
        qk_norm_whole: false,
        clip_qkv: None,
        output_gate: false,
        bias: attention_bias,
        o_bias: false,
        sinks: false,
        sliding_window: None,
    };
    let layers = (0..num_hidden_layers)
        .map(|l| LayerPlan {
            mixer: Mixer::Attention(attention),
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
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: p.rms_norm_eps()?,
        rope_theta: rope.theta,
        rotary_dim,
        num_experts: moe.experts,
        num_experts_per_tok: moe.top_k,
        norm_topk_prob: moe.norm_topk_prob,
        decoder_sparse_step: 1,
        mlp_only_layers: (0..first_dense).collect(),
        tie_word_embeddings: p.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        max_position_embeddings: p.opt_usize("max_position_embeddings")?.unwrap_or(131_072),
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

/// A sigmoid-routed MoE block's config (GLM-4.5, DeepSeek-V3): the spec, the dense first
/// layers and their width.
pub(crate) struct SigmoidMoe {
    pub moe: MoeSpec,
    pub first_dense: usize,
    pub intermediate_size: usize,
}

/// The family defaults of [`sigmoid_moe`]'s fields.
pub(crate) struct SigmoidDefaults {
    pub experts: usize,
    pub top_k: usize,
    pub groups: usize,
    pub topk_groups: usize,
    pub scale: f32,
    pub first_dense: usize,
}

impl SigmoidDefaults {
    /// `Glm4MoeConfig`'s.
    pub const GLM: SigmoidDefaults = SigmoidDefaults {
        experts: 128,
        top_k: 8,
        groups: 1,
        topk_groups: 1,
        scale: 1.0,
        first_dense: 1,
    };
}

/// Reads `n_routed_experts` (or `num_local_experts`), `num_experts_per_tok`, `n_group`,
/// `topk_group`, `routed_scaling_factor`, `norm_topk_prob`, `moe_intermediate_size`,
/// `n_shared_experts` and `first_k_dense_replace` (+ `intermediate_size` for the dense
/// layers).
pub(crate) fn sigmoid_moe(
    p: &Parser<'_>,
    num_hidden_layers: usize,
    d: SigmoidDefaults,
) -> Result<SigmoidMoe> {
    let num_experts = match p.opt_usize("n_routed_experts")? {
        Some(n) => n,
        None => p.opt_usize("num_local_experts")?.unwrap_or(d.experts),
    };
    if num_experts == 0 {
        return Err(p.err("`n_routed_experts` must be positive"));
    }
    let top_k = p.opt_usize("num_experts_per_tok")?.unwrap_or(d.top_k);
    if top_k == 0 || top_k > num_experts {
        return Err(p.err(format!(
            "num_experts_per_tok must be in 1..={num_experts}, found {top_k}"
        )));
    }
    let groups = p.opt_usize("n_group")?.unwrap_or(d.groups);
    let topk_groups = p.opt_usize("topk_group")?.unwrap_or(d.topk_groups);
    if groups == 0 || num_experts % groups != 0 || groups > 128 {
        return Err(p.err(format!(
            "n_group {groups} must divide n_routed_experts ({num_experts}) and be at most 128"
        )));
    }
    if topk_groups == 0 || topk_groups > groups || top_k > topk_groups * (num_experts / groups) {
        return Err(p.err(format!(
            "topk_group {topk_groups} must be in 1..={groups} and keep at least num_experts_per_tok ({top_k}) experts"
        )));
    }
    let scale = match p.opt_f64("routed_scaling_factor")? {
        None => d.scale,
        Some(v) if v.is_finite() && v > 0.0 && v < 1e30 => v as f32,
        Some(v) => {
            return Err(p.err(format!(
                "`routed_scaling_factor` must be a positive number, found {v}"
            )))
        }
    };
    let moe_inter = p.positive("moe_intermediate_size")?;
    let n_shared = p.opt_usize("n_shared_experts")?.unwrap_or(1);
    let shared_width = moe_inter.checked_mul(n_shared).ok_or_else(|| {
        p.err(format!(
            "`moe_intermediate_size` ({moe_inter}) x `n_shared_experts` ({n_shared}) overflows"
        ))
    })?;
    let first_dense = p
        .opt_usize("first_k_dense_replace")?
        .unwrap_or(d.first_dense)
        .min(num_hidden_layers);
    let intermediate_size = if first_dense > 0 {
        p.positive("intermediate_size")?
    } else {
        p.opt_usize("intermediate_size")?.unwrap_or(0)
    };
    let moe = MoeSpec {
        experts: num_experts,
        top_k,
        inter: moe_inter,
        norm_topk_prob: p.opt_bool("norm_topk_prob")?.unwrap_or(true),
        shared_expert: (n_shared > 0).then_some(shared_width),
        shared_gate: false,
        router: RouterKind::Sigmoid {
            groups,
            topk_groups,
            scale,
        },
        router_bias: false,
        activation: ExpertActivation::SwiGlu,
        expert_bias: false,
    };
    Ok(SigmoidMoe {
        moe,
        first_dense,
        intermediate_size,
    })
}
