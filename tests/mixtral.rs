//! Mixtral (`mixtral`) configs in both spellings with `MixtralConfig`'s defaults, and the
//! typed errors of malformed ones. Golden logits: tests/conformance.rs (GPU) and
//! tests/reference_golden.rs (CPU reference), fixtures in tests/fixtures_mixtral/.

use std::path::Path;

use moestream::arch::{ExpertActivation, RouterKind};
use moestream::{config::ModelConfig, Error};

fn parse(json: &str) -> moestream::Result<ModelConfig> {
    ModelConfig::from_json_str(json, Path::new("config.json"))
}

/// Mixtral-8x7B-v0.1's released config.json.
const RELEASED_8X7B: &str = r#"{
  "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
  "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": false,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0", "use_cache": true, "vocab_size": 32000
}"#;

#[test]
fn released_config_gives_the_plan() {
    let cfg = parse(RELEASED_8X7B).unwrap();
    assert_eq!(cfg.num_hidden_layers, 32);
    assert_eq!((cfg.num_experts, cfg.num_experts_per_tok), (8, 2));
    assert_eq!((cfg.hidden_size, cfg.moe_intermediate_size), (4096, 14336));
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (32, 8, 128)
    );
    assert_eq!(cfg.rope_theta, 1e6);
    assert!(cfg.rope_scaling.is_none());
    for plan in &cfg.layers {
        let a = plan.attention().unwrap();
        assert!(!a.sinks && !a.bias && !a.qk_norm && !a.output_gate);
        assert_eq!((a.rotary_dim, a.sliding_window), (128, None));
        let m = plan.moe().unwrap();
        assert_eq!(m.router, RouterKind::SoftmaxTopK);
        assert!(m.norm_topk_prob && !m.router_bias && !m.expert_bias);
        assert_eq!(m.activation, ExpertActivation::SwiGlu);
        assert!(m.shared_expert.is_none());
    }
}

#[test]
fn defaults_and_the_transformers_v5_spelling() {
    // `num_key_value_heads` missing means 8 (not the head count), `rope_theta` 1e6; the
    // v5 spelling keeps the base in `rope_parameters`; a window applies to every layer.
    let v5 = r#"{"model_type": "mixtral", "hidden_size": 4096, "num_attention_heads": 32,
      "num_hidden_layers": 2, "num_local_experts": 8, "num_experts_per_tok": 2,
      "intermediate_size": 14336, "vocab_size": 32000, "sliding_window": 4096,
      "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}"#;
    let cfg = parse(v5).unwrap();
    assert_eq!(cfg.num_key_value_heads, 8);
    assert_eq!(cfg.rope_theta, 500000.0);
    assert!(cfg
        .layers
        .iter()
        .all(|p| p.attention().unwrap().sliding_window == Some(4096)));
    let bare = v5.replace(
        r#""rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}"#,
        r#""tie_word_embeddings": false"#,
    );
    assert_eq!(parse(&bare).unwrap().rope_theta, 1e6);
}

#[test]
fn malformed_configs_are_typed_errors() {
    let cases = [
        (
            "\"num_experts_per_tok\": 2",
            "\"num_experts_per_tok\": 9",
            "num_experts_per_tok",
        ),
        (
            "\"num_local_experts\": 8",
            "\"num_local_experts\": 0",
            "num_local_experts",
        ),
        (
            "\"num_key_value_heads\": 8",
            "\"num_key_value_heads\": 5",
            "num_key_value_heads",
        ),
        (
            "\"sliding_window\": null",
            "\"sliding_window\": 0",
            "sliding_window",
        ),
        (
            "\"intermediate_size\": 14336",
            "\"intermediate_size\": -3",
            "intermediate_size",
        ),
        (
            "\"hidden_act\": \"silu\"",
            "\"hidden_act\": \"gelu\"",
            "gelu",
        ),
        (
            "\"rope_theta\": 1000000.0",
            "\"rope_theta\": \"big\"",
            "rope_theta",
        ),
    ];
    for (from, to, needle) in cases {
        assert!(RELEASED_8X7B.contains(from), "{from}");
        let json = RELEASED_8X7B.replacen(from, to, 1);
        match parse(&json) {
            Err(Error::Config { reason, .. }) => {
                assert!(reason.contains(needle), "{needle}: {reason}")
            }
            other => panic!("{needle}: expected Error::Config, got {other:?}"),
        }
    }
}

#[path = "common/mod.rs"]
mod common;

/// The synthetic Mixtral writer (the benchmarks' Mixtral-8x7B shape, scaled down here) in
/// both layouts, MLX 4-bit (`switch_mlp`) and bf16 with the released per-expert `w1` /
/// `w3` / `w2`: the GPU engine runs each as the CPU reference does.
#[test]
fn synthetic_mixtral_runs_as_the_reference_does() {
    for quant in [Some((4, 32)), None] {
        let mut spec = moestream::synthetic::SyntheticSpec::mixtral_8x7b_4bit(2);
        spec.vocab_size = 300;
        spec.hidden_size = 64;
        spec.num_heads = 4;
        spec.num_kv_heads = 2;
        spec.head_dim = 16;
        spec.num_experts = 4;
        spec.moe_intermediate_size = 96;
        spec.quant = quant;
        let cfg = common::synthetic_matches_reference(&spec, &format!("mixtral-{quant:?}"));
        assert_eq!(cfg.model_type, "mixtral");
        assert_eq!(cfg.num_experts_per_tok, 2);
    }
}
