//! DeepSeek-V3 (`deepseek_v3`, and Kimi-K2's `kimi_k2`) configs: both spellings of the
//! fixtures in tests/fixtures_deepseek_v3/ give the latent-attention plan (ranks, head
//! widths, the softmax scale with YaRN's mscale, interleaved RoPE) and the sigmoid
//! routing; malformed configs are typed errors; the GPU engine says plainly that it does
//! not run latent attention yet. The CPU reference runs it against golden logits in
//! tests/reference_golden.rs (float fixtures; FP8 and MLX not read yet).

use std::path::{Path, PathBuf};

use moestream::arch::RouterKind;
use moestream::{Error, Model, ModelConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures_deepseek_v3")
        .join(name)
}

#[test]
fn fixture_configs_give_the_plan() {
    // transformers v5's spelling: rope_parameters with mscale 0.707 / mscale_all_dim 1.0,
    // and a derived head_dim (= qk_rope_head_dim) that is not the attention width.
    let cfg = ModelConfig::from_path(fixture("dsv3_hf_f32")).unwrap();
    let a = cfg.layers[0].mla().expect("latent attention");
    assert_eq!(
        (
            a.q_lora_rank,
            a.kv_lora_rank,
            a.qk_nope_head_dim,
            a.qk_rope_head_dim,
            a.v_head_dim
        ),
        (Some(40), 24, 16, 8, 10)
    );
    assert_eq!(a.cache_width(), 32);
    assert!(a.rope_interleave);
    let m = 0.1 * 8f64.ln() + 1.0;
    assert!((f64::from(a.scale) - m * m / 24f64.sqrt()).abs() < 1e-6);
    let y = cfg.rope_scaling.expect("YaRN");
    assert!(y.truncate, "no truncate key: transformers truncates");
    assert!((y.attention_factor - (0.1 * 0.707 * 8f64.ln() + 1.0) / m).abs() < 1e-9);
    assert!(cfg.layers[0].moe().is_none(), "a dense first layer");
    let moe = cfg.layers[1].moe().unwrap();
    assert!(matches!(
        moe.router,
        RouterKind::Sigmoid {
            groups: 4,
            topk_groups: 2,
            ..
        }
    ));
    assert!(!moe.shared_gate && moe.shared_expert.is_some());
    // Moonlight's: no q_lora_rank, no YaRN.
    let cfg = ModelConfig::from_path(fixture("dsv3_no_q_lora_bf16")).unwrap();
    let a = cfg.layers[0].mla().unwrap();
    assert_eq!(a.q_lora_rank, None);
    assert!(cfg.rope_scaling.is_none());
    assert!((f64::from(a.scale) - 1.0 / 24f64.sqrt()).abs() < 1e-7);
    // The released spelling, FP8 included.
    for name in ["dsv3_released_bf16", "dsv3_fp8"] {
        let cfg = ModelConfig::from_path(fixture(name)).unwrap();
        assert_eq!(cfg.model_type, "deepseek_v3");
        assert!(cfg.rope_scaling.is_some(), "{name}");
    }
}

#[test]
fn the_engine_says_latent_attention_is_not_run_yet() {
    for name in ["dsv3_hf_f32", "dsv3_released_bf16"] {
        match Model::builder(fixture(name)).build() {
            Err(Error::Config { reason, .. }) => {
                assert!(reason.contains("latent attention"), "{reason}")
            }
            Err(e) => panic!("{name}: expected Error::Config, got {e}"),
            Ok(_) => panic!("{name}: expected Error::Config, got a model"),
        }
    }
}

#[test]
fn malformed_configs_are_typed_errors() {
    let base = std::fs::read_to_string(fixture("dsv3_released_bf16").join("config.json")).unwrap();
    let cases = [
        (
            "\"num_key_value_heads\": 4",
            "\"num_key_value_heads\": 2",
            "num_key_value_heads",
        ),
        (
            "\"qk_rope_head_dim\": 16",
            "\"qk_rope_head_dim\": 15",
            "qk_rope_head_dim",
        ),
        ("\"n_group\": 4", "\"n_group\": 5", "n_group"),
        (
            "\"kv_lora_rank\": 32",
            "\"kv_lora_rank\": 0",
            "kv_lora_rank",
        ),
        (
            "\"q_lora_rank\": 48",
            "\"q_lora_rank\": \"big\"",
            "q_lora_rank",
        ),
    ];
    for (from, to, needle) in cases {
        assert!(base.contains(from), "{from}");
        let json = base.replacen(from, to, 1);
        match ModelConfig::from_json_str(&json, Path::new("config.json")) {
            Err(Error::Config { reason, .. }) => {
                assert!(reason.contains(needle), "{needle}: {reason}")
            }
            other => panic!("{needle}: expected Error::Config, got {other:?}"),
        }
    }
}
