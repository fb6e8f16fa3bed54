//! OLMoE (`olmoe`) configs in both spellings with `OlmoeConfig`'s defaults, and the typed
//! errors of malformed ones. Golden logits: tests/conformance.rs (GPU) and
//! tests/reference_golden.rs (CPU reference), fixtures in tests/fixtures_olmoe/.

use std::path::Path;

use moestream::arch::RouterKind;
use moestream::{config::ModelConfig, Error};

fn parse(json: &str) -> moestream::Result<ModelConfig> {
    ModelConfig::from_json_str(json, Path::new("config.json"))
}

/// OLMoE-1B-7B-0924's released config.json (its keys; values as released).
const RELEASED: &str = r#"{
  "architectures": ["OlmoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": null, "clip_qkv": null, "eos_token_id": 50279, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 1024,
  "max_position_embeddings": 4096, "model_type": "olmoe", "norm_topk_prob": false,
  "num_attention_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
  "num_hidden_layers": 16, "num_key_value_heads": 16, "output_router_logits": false,
  "pad_token_id": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
  "router_aux_loss_coef": 0.01, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "use_cache": true, "vocab_size": 50304
}"#;

#[test]
fn released_config_gives_the_plan() {
    let cfg = parse(RELEASED).unwrap();
    assert_eq!((cfg.num_experts, cfg.num_experts_per_tok), (64, 8));
    assert_eq!((cfg.hidden_size, cfg.moe_intermediate_size), (2048, 1024));
    assert_eq!((cfg.num_key_value_heads, cfg.head_dim), (16, 128));
    assert_eq!(cfg.rope_theta, 10000.0);
    for plan in &cfg.layers {
        let a = plan.attention().unwrap();
        assert!(a.qk_norm && a.qk_norm_whole && !a.bias && !a.sinks);
        assert_eq!((a.clip_qkv, a.sliding_window), (None, None));
        let m = plan.moe().unwrap();
        assert_eq!(m.router, RouterKind::SoftmaxTopK);
        assert!(!m.norm_topk_prob && !m.router_bias && !m.expert_bias);
    }
    // transformers v5's spelling, with a clip.
    let v5 = RELEASED
        .replace(
            r#""rope_scaling": null, "rope_theta": 10000.0,"#,
            r#""rope_parameters": {"rope_theta": 50000.0, "rope_type": "default"},"#,
        )
        .replace(r#""clip_qkv": null"#, r#""clip_qkv": 8.0"#);
    let cfg = parse(&v5).unwrap();
    assert_eq!(cfg.rope_theta, 50000.0);
    assert_eq!(cfg.layers[0].attention().unwrap().clip_qkv, Some(8.0));
}

#[test]
fn malformed_configs_are_typed_errors() {
    let cases = [
        ("\"clip_qkv\": null", "\"clip_qkv\": -1", "clip_qkv"),
        ("\"clip_qkv\": null", "\"clip_qkv\": \"x\"", "clip_qkv"),
        ("\"num_experts\": 64", "\"num_experts\": 0", "num_experts"),
        (
            "\"num_experts_per_tok\": 8",
            "\"num_experts_per_tok\": 65",
            "num_experts_per_tok",
        ),
        (
            "\"num_key_value_heads\": 16",
            "\"num_key_value_heads\": 3",
            "num_key_value_heads",
        ),
        (
            "\"norm_topk_prob\": false",
            "\"norm_topk_prob\": 2",
            "norm_topk_prob",
        ),
    ];
    for (from, to, needle) in cases {
        assert!(RELEASED.contains(from), "{from}");
        let json = RELEASED.replacen(from, to, 1);
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

/// The synthetic OLMoE writer (the benchmarks' OLMoE-1B-7B shape, scaled down here) in
/// both layouts, with and without `clip_qkv`: whole-projection q/k norms, top-k weights
/// not renormalized; the GPU engine runs each as the CPU reference does.
#[test]
fn synthetic_olmoe_runs_as_the_reference_does() {
    use moestream::synthetic::{LlamaMoeFamily, SyntheticLlamaMoe};
    for (quant, clip) in [(Some((4, 32)), None), (None, Some(0.5))] {
        let mut spec = moestream::synthetic::SyntheticSpec::olmoe_1b_7b_4bit();
        spec.num_layers = 2;
        spec.vocab_size = 300;
        spec.hidden_size = 64;
        spec.num_heads = 4;
        spec.num_kv_heads = 4;
        spec.head_dim = 16;
        spec.num_experts = 8;
        spec.top_k = 3;
        spec.moe_intermediate_size = 64;
        spec.quant = quant;
        let mut o = SyntheticLlamaMoe::new(LlamaMoeFamily::Olmoe);
        o.clip_qkv = clip;
        spec.llama_moe = Some(o);
        let cfg = common::synthetic_matches_reference(&spec, &format!("olmoe-{quant:?}"));
        assert_eq!(cfg.model_type, "olmoe");
        assert!(!cfg.norm_topk_prob);
        assert_eq!(cfg.layers[0].attention().unwrap().clip_qkv, clip);
    }
}
