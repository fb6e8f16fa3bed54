//! DeepSeek-V3 (`deepseek_v3`, and Kimi-K2's `kimi_k2`) configs: both spellings of the
//! fixtures in tests/fixtures_deepseek_v3/ give the latent-attention plan (ranks, head
//! widths, the softmax scale with YaRN's mscale, interleaved RoPE) and the sigmoid
//! routing; malformed configs are typed errors; the GPU engine refuses FP8 weights and
//! latent shapes its kernels do not take with typed errors. The CPU reference runs every
//! fixture against golden logits in tests/reference_golden.rs, the GPU engine the float and
//! MLX ones in tests/conformance.rs.

use std::path::{Path, PathBuf};

use moestream::arch::RouterKind;
use moestream::{config::ModelConfig, Error, Model};

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
fn the_engine_refuses_what_its_kernels_do_not_take() {
    // FP8 experts whose rows the kernels cannot read in blocks of 32 (width 48).
    match Model::builder(fixture("dsv3_fp8")).build() {
        Err(Error::InvalidArgument(msg)) => {
            assert!(
                msg.contains("FP8") && msg.contains("multiple of 32"),
                "{msg}"
            )
        }
        Err(e) => panic!("expected Error::InvalidArgument naming FP8, got {e}"),
        Ok(_) => panic!("expected Error::InvalidArgument naming FP8, got a model"),
    }
    // A latent the kernels cannot read as quads: a typed error at build, naming it.
    let dir = tempfile_dir("dsv3_odd_rank");
    for f in std::fs::read_dir(fixture("dsv3_released_bf16")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replacen("\"kv_lora_rank\": 32", "\"kv_lora_rank\": 30", 1),
    )
    .unwrap();
    match Model::builder(&dir).build() {
        Err(Error::Config { reason, .. }) => assert!(reason.contains("kv_lora_rank"), "{reason}"),
        Err(e) => panic!("expected Error::Config naming kv_lora_rank, got {e}"),
        Ok(_) => panic!("expected Error::Config naming kv_lora_rank, got a model"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh folder under the target directory's temp space.
fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moestream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

/// The synthetic DeepSeek-V3 writer (the benchmarks' shape, scaled down here), in each of
/// its layouts: 4-bit MLX with absorbed `embed_q` / `unembed_out`, bf16 Hugging Face with
/// `kv_b_proj`, and the released FP8 format (the FP8 kernels); a dense first layer, grouped sigmoid routing, shared experts in the
/// cache. The GPU engine runs each as the CPU reference does, through a prefill and steps.
#[test]
fn synthetic_deepseek_runs_as_the_reference_does() {
    use moestream::synthetic::SyntheticSpec;
    use moestream::{checkpoint::Checkpoint, format::DType, SafetensorsStore};
    // (quantization, the released FP8 format)
    for (quant, fp8) in [(Some((4, 32)), false), (None, false), (None, true)] {
        let mut spec = SyntheticSpec::deepseek_v3_4bit(3);
        spec.vocab_size = 300;
        spec.hidden_size = 64;
        spec.num_heads = 4;
        spec.num_experts = 8;
        spec.top_k = 2;
        spec.moe_intermediate_size = 64;
        spec.quant = quant;
        if quant.is_none() {
            spec.dtype = DType::BF16;
        }
        let mut d = spec.deepseek_v3.unwrap();
        d.q_lora_rank = 64;
        d.kv_lora_rank = 96;
        d.qk_nope_head_dim = 32;
        d.qk_rope_head_dim = 16;
        d.v_head_dim = 32;
        d.dense_intermediate_size = 96;
        d.n_group = 4;
        d.topk_group = 2;
        d.fp8 = fp8;
        spec.deepseek_v3 = Some(d);
        let root = tempfile_dir(&format!("synthetic-deepseek-{}-{fp8}", quant.is_some()));
        let dir = spec.write(root.join("model")).unwrap();
        let model = Model::builder(&dir).f32_activations(true).build().unwrap();
        let cfg = model.config().clone();
        assert_eq!(cfg.model_type, "deepseek_v3");
        assert_eq!(cfg.moe_layers(), vec![1, 2]);
        assert_eq!(cfg.layers[0].mla().unwrap().cache_width(), 112);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let store =
            SafetensorsStore::new(std::sync::Arc::new(Checkpoint::open(&dir).unwrap()), &cfg)
                .unwrap();
        let reference = moestream::reference::ReferenceModel::new(&cfg, &ckpt, &store).unwrap();
        let ids: Vec<u32> = (0..14u32).map(|i| (i * 37 + 5) % 300).collect();
        let want = reference.forward(&ids).unwrap();
        let mut s = model.session(64).unwrap();
        // The latent cache: 3 layers x 64 positions x 112 f32 values.
        assert_eq!(s.kv_cache_bytes(), 3 * 64 * 112 * 4);
        let diff = |a: &[f32], b: &[f32]| {
            let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
        };
        let got = s.prefill(&ids[..10]).unwrap();
        assert!(
            diff(&got, &want[9]) < 1e-4,
            "{quant:?}: prefill {}",
            diff(&got, &want[9])
        );
        for (k, &id) in ids[10..].iter().enumerate() {
            let got = s.step(id).unwrap();
            assert!(
                diff(&got, &want[10 + k]) < 1e-4,
                "{quant:?} {fp8}: step {k}"
            );
        }
        drop(model);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
