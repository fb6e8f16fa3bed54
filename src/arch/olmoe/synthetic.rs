//! Synthetic OLMoE checkpoints ([`SyntheticSpec::llama_moe`] with
//! [`LlamaMoeFamily::Olmoe`](crate::synthetic::LlamaMoeFamily::Olmoe)): the released
//! `config.json` (no `head_dim` key: it is the hidden size over the heads; top-k weights
//! not renormalized; `clip_qkv` where the spec sets it), the tensors written by Mixtral's
//! writer with OLMoE's whole-projection q/k norms.

use crate::synthetic::{SyntheticLlamaMoe, SyntheticSpec};

/// The released `config.json` of an OLMoE spec.
pub(crate) fn config_json(spec: &SyntheticSpec, o: &SyntheticLlamaMoe) -> serde_json::Value {
    let mut config = serde_json::json!({
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.moe_intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "num_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "norm_topk_prob": false,
        "clip_qkv": o.clip_qkv,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "synthetic": true,
    });
    crate::arch::mixtral::synthetic::add_quantization(spec, &mut config);
    config
}
