//! GLM-4.5 MoE (`glm4_moe`) configs with `Glm4MoeConfig`'s defaults, and the typed errors
//! of malformed ones. Golden logits: tests/conformance.rs (GPU) and
//! tests/reference_golden.rs (CPU reference), fixtures in tests/fixtures_glm4_moe/.

use std::path::Path;

use moestream::arch::RouterKind;
use moestream::{config::ModelConfig, Error};

fn parse(json: &str) -> moestream::Result<ModelConfig> {
    ModelConfig::from_json_str(json, Path::new("config.json"))
}

/// GLM-4.5-Air's released config.json (its keys and values).
const AIR: &str = r#"{
  "architectures": ["Glm4MoeForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
  "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338], "head_dim": 128,
  "hidden_act": "silu", "hidden_size": 4096, "partial_rotary_factor": 0.5,
  "initializer_range": 0.02, "intermediate_size": 10944, "max_position_embeddings": 131072,
  "model_type": "glm4_moe", "moe_intermediate_size": 1408, "norm_topk_prob": true,
  "num_attention_heads": 96, "n_group": 1, "topk_group": 1, "n_routed_experts": 128,
  "n_shared_experts": 1, "routed_scaling_factor": 1.0, "num_experts_per_tok": 8,
  "first_k_dense_replace": 1, "num_hidden_layers": 46, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 1000000,
  "num_nextn_predict_layers": 1, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.54.0", "use_cache": true, "use_qk_norm": false,
  "vocab_size": 151552
}"#;

#[test]
fn released_config_gives_the_plan() {
    let cfg = parse(AIR).unwrap();
    assert_eq!(cfg.num_hidden_layers, 46);
    assert_eq!((cfg.num_experts, cfg.num_experts_per_tok), (128, 8));
    assert_eq!((cfg.head_dim, cfg.rotary_dim), (128, 64));
    assert_eq!(cfg.rope_theta, 1e6);
    assert!(cfg.layers[0].moe().is_none(), "the first layer is dense");
    assert_eq!(cfg.intermediate_size, 10944);
    for plan in &cfg.layers[1..] {
        let a = plan.attention().unwrap();
        assert!(a.bias && !a.o_bias && !a.qk_norm);
        let m = plan.moe().unwrap();
        assert_eq!(
            m.router,
            RouterKind::Sigmoid {
                groups: 1,
                topk_groups: 1,
                scale: 1.0
            }
        );
        assert!(m.norm_topk_prob && !m.shared_gate);
        assert_eq!(m.shared_expert, Some(1408));
    }
}

#[test]
fn malformed_configs_are_typed_errors() {
    let cases = [
        ("\"n_group\": 1", "\"n_group\": 3", "n_group"),
        ("\"topk_group\": 1", "\"topk_group\": 2", "topk_group"),
        (
            "\"routed_scaling_factor\": 1.0",
            "\"routed_scaling_factor\": -2",
            "routed_scaling_factor",
        ),
        (
            "\"partial_rotary_factor\": 0.5",
            "\"partial_rotary_factor\": 0.003",
            "partial_rotary_factor",
        ),
        (
            "\"n_routed_experts\": 128",
            "\"n_routed_experts\": 0",
            "n_routed_experts",
        ),
        (
            "\"num_experts_per_tok\": 8",
            "\"num_experts_per_tok\": 200",
            "num_experts_per_tok",
        ),
        (
            "\"moe_intermediate_size\": 1408",
            "\"moe_intermediate_size\": 0",
            "moe_intermediate_size",
        ),
    ];
    for (from, to, needle) in cases {
        assert!(AIR.contains(from), "{from}");
        let json = AIR.replacen(from, to, 1);
        match parse(&json) {
            Err(Error::Config { reason, .. }) => {
                assert!(reason.contains(needle), "{needle}: {reason}")
            }
            other => panic!("{needle}: expected Error::Config, got {other:?}"),
        }
    }
}

/// The synthetic GLM-4.5 writer (the benchmarks' GLM-4.5-Air shape, scaled down here):
/// 4-bit MLX layout with a bf16 router and its correction bias, a dense first layer and
/// shared experts in the cache; the GPU engine runs it as the CPU reference does.
#[test]
fn synthetic_glm_runs_as_the_reference_does() {
    use moestream::synthetic::SyntheticSpec;
    let mut spec = SyntheticSpec::glm4_5_air_4bit(3);
    spec.vocab_size = 300;
    spec.hidden_size = 64;
    spec.num_heads = 4;
    spec.num_kv_heads = 2;
    spec.head_dim = 32;
    spec.num_experts = 8;
    spec.top_k = 2;
    spec.moe_intermediate_size = 64;
    spec.quant = Some((4, 32));
    let mut g = spec.glm4_moe.unwrap();
    g.dense_intermediate_size = 96;
    spec.glm4_moe = Some(g);
    let cfg = common::synthetic_matches_reference(&spec, "synthetic-glm");
    assert_eq!(cfg.model_type, "glm4_moe");
    assert_eq!(cfg.moe_layers(), vec![1, 2]);
}

#[path = "common/mod.rs"]
mod common;
