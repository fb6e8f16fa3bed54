//! gpt-oss (`gpt_oss`) configs in both spellings, YaRN's frequencies against values
//! transformers 5.23 computes, the typed errors of malformed configs, and the sliding
//! layers' ring-buffer KV caches over long contexts. The CPU reference against golden
//! logits runs in tests/reference_golden.rs, the GPU engine in tests/conformance.rs
//! (fixtures in tests/fixtures_gpt_oss/).

use std::path::Path;

use moestream::arch::{ExpertActivation, RouterKind};
use moestream::reference::{rope_inv_freq, yarn_inv_freq};
use moestream::{checkpoint::Checkpoint, config::ModelConfig, Error, Model, SafetensorsStore};

fn parse(json: &str) -> moestream::Result<ModelConfig> {
    ModelConfig::from_json_str(json, Path::new("config.json"))
}

/// gpt-oss-20b's released config.json (the keys transformers reads, and legacy ones).
const RELEASED_20B: &str = r#"{
  "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
  "attention_bias": true, "attention_dropout": 0.0, "eos_token_id": 200002,
  "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880,
  "initial_context_length": 4096, "initializer_range": 0.02, "intermediate_size": 2880,
  "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention",
    "sliding_attention", "full_attention", "sliding_attention", "full_attention",
    "sliding_attention", "full_attention", "sliding_attention", "full_attention",
    "sliding_attention", "full_attention", "sliding_attention", "full_attention",
    "sliding_attention", "full_attention", "sliding_attention", "full_attention",
    "sliding_attention", "full_attention", "sliding_attention", "full_attention"],
  "max_position_embeddings": 131072, "num_attention_heads": 64, "num_experts_per_tok": 4,
  "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
  "output_router_logits": false, "pad_token_id": 199999, "rms_norm_eps": 1e-05,
  "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
    "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
  "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128,
  "swiglu_limit": 7.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "use_cache": true, "vocab_size": 201088
}"#;

#[test]
fn released_config_gives_the_plan() {
    let cfg = parse(RELEASED_20B).unwrap();
    assert_eq!(cfg.num_hidden_layers, 24);
    assert_eq!((cfg.num_experts, cfg.num_experts_per_tok), (32, 4));
    assert_eq!((cfg.hidden_size, cfg.moe_intermediate_size), (2880, 2880));
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (64, 8, 64)
    );
    assert_eq!(cfg.rope_theta, 150000.0);
    let y = cfg.rope_scaling.expect("YaRN");
    assert_eq!((y.factor, y.beta_fast, y.beta_slow), (32.0, 32.0, 1.0));
    assert_eq!(y.original_max_position_embeddings, 4096);
    assert!(!y.truncate);
    assert!((y.attention_factor - (0.1 * 32f64.ln() + 1.0)).abs() < 1e-12);
    for (l, plan) in cfg.layers.iter().enumerate() {
        let a = plan.attention().unwrap();
        assert!(a.sinks && a.bias && !a.qk_norm && !a.output_gate);
        assert_eq!(a.rotary_dim, 64);
        assert_eq!(a.sliding_window, (l % 2 == 0).then_some(128), "layer {l}");
        let m = plan.moe().unwrap();
        assert_eq!(m.router, RouterKind::TopKSoftmax);
        assert!(m.router_bias && m.expert_bias && m.shared_expert.is_none());
        assert_eq!(
            m.activation,
            ExpertActivation::ClampedSwiGlu {
                alpha: 1.702,
                limit: 7.0
            }
        );
    }
}

#[test]
fn transformers_v5_spelling_gives_the_same_config() {
    // What `save_pretrained` writes: `rope_parameters` holding rope_theta, no
    // rope_scaling, no top-level rope_theta; defaults for what it leaves out.
    let v5 = r#"{"model_type": "gpt_oss", "hidden_size": 2880, "head_dim": 64,
      "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 24,
      "num_local_experts": 32, "num_experts_per_tok": 4, "intermediate_size": 2880,
      "vocab_size": 201088, "rms_norm_eps": 1e-05, "sliding_window": 128,
      "swiglu_limit": 7.0, "eos_token_id": 200002, "dtype": "bfloat16",
      "rope_parameters": {"rope_theta": 150000.0, "rope_type": "yarn", "factor": 32.0,
        "beta_fast": 32.0, "beta_slow": 1.0, "truncate": false,
        "original_max_position_embeddings": 4096}}"#;
    let a = parse(RELEASED_20B).unwrap();
    let b = parse(v5).unwrap();
    assert_eq!(a.layers, b.layers);
    assert_eq!(a.rope_scaling, b.rope_scaling);
    assert_eq!(a.rope_theta, b.rope_theta);
}

/// YaRN's inverse frequencies for gpt-oss's released rope block (head dim 64) against
/// `GptOssRotaryEmbedding(config).inv_freq` of transformers 5.23 (f32 bits), with
/// `truncate` false (the released configs: correction range 8.09 .. 17.40 dims) and true
/// (transformers' default when the key is missing: 8 .. 18), and its attention_scaling.
/// Equal bit for bit but in dims 6 and 10, one ulp apart: torch's f32 `pow` (Sleef, 1 ulp)
/// rounds `150000^(12/64)` and `150000^(20/64)` away from the correctly rounded value that
/// Rust's `powf` gives.
#[test]
fn yarn_frequencies_match_transformers() {
    const HF_TRUNCATE_FALSE: [u32; 32] = [
        0x3f800000, 0x3f306535, 0x3ef316a2, 0x3ea77faa, 0x3e66d3fa, 0x3e1f0cfd, 0x3ddb2f9f,
        0x3d970764, 0x3d502194, 0x3d01ddd5, 0x3c9e646f, 0x3c3dec94, 0x3bdea840, 0x3b7cfe14,
        0x3b093803, 0x3a89f778, 0x39ef543c, 0x390799b9, 0x3820adc6, 0x37dd6dfc, 0x37989328,
        0x375242fa, 0x3710e12c, 0x36c7a82b, 0x3689928c, 0x363d9647, 0x3602a245, 0x35b40668,
        0x35781728, 0x352af200, 0x34eb93eb, 0x34a252d3,
    ];
    const HF_TRUNCATE_TRUE: [u32; 32] = [
        0x3f800000, 0x3f306535, 0x3ef316a2, 0x3ea77faa, 0x3e66d3fa, 0x3e1f0cfd, 0x3ddb2f9f,
        0x3d970764, 0x3d502194, 0x3d0184c3, 0x3c9f57a2, 0x3c413409, 0x3be5e413, 0x3b8559e6,
        0x3b153e49, 0x3a9e170a, 0x3a184aba, 0x396f0548, 0x3820adc6, 0x37dd6dfc, 0x37989328,
        0x375242fa, 0x3710e12c, 0x36c7a82b, 0x3689928c, 0x363d9647, 0x3602a245, 0x35b40668,
        0x35781728, 0x352af200, 0x34eb93eb, 0x34a252d3,
    ];
    let close = |got: Vec<f32>, want: &[u32; 32]| {
        let off: Vec<usize> = (0..32).filter(|&i| got[i].to_bits() != want[i]).collect();
        assert_eq!(off, [6, 10], "dims that differ from transformers");
        for i in off {
            assert_eq!(got[i].to_bits().abs_diff(want[i]), 1, "dim {i}");
        }
    };
    let y = parse(RELEASED_20B).unwrap().rope_scaling.unwrap();
    close(yarn_inv_freq(150000.0, 64, &y), &HF_TRUNCATE_FALSE);
    assert_eq!(y.attention_factor, 1.3465735902799727);
    let truncated = parse(&RELEASED_20B.replace("\"truncate\": false", "\"truncate\": true"))
        .unwrap()
        .rope_scaling
        .unwrap();
    close(yarn_inv_freq(150000.0, 64, &truncated), &HF_TRUNCATE_TRUE);
    let missing = parse(&RELEASED_20B.replace(", \"truncate\": false", ""))
        .unwrap()
        .rope_scaling
        .unwrap();
    assert!(missing.truncate);
    // Outside the ramp the frequencies are RoPE's own (below) or divided by the factor.
    let plain = rope_inv_freq(150000.0, 64);
    assert_eq!(yarn_inv_freq(150000.0, 64, &y)[..9], plain[..9]);
}

#[test]
fn malformed_configs_are_typed_errors() {
    let cases = [
        (
            "\"sliding_attention\", \"full_attention\", \"sliding_attention\"",
            "\"local\", \"full_attention\", \"sliding_attention\"",
            "layer_types[0]",
        ),
        (
            "\"original_max_position_embeddings\": 4096,",
            "",
            "original_max_position_embeddings",
        ),
        (
            "\"rope_type\": \"yarn\"",
            "\"rope_type\": \"longrope\"",
            "longrope",
        ),
        (
            "\"num_experts_per_tok\": 4",
            "\"num_experts_per_tok\": 33",
            "num_experts_per_tok",
        ),
        (
            "\"swiglu_limit\": 7.0",
            "\"swiglu_limit\": -1",
            "swiglu_limit",
        ),
        (
            "\"sliding_window\": 128",
            "\"sliding_window\": 0",
            "sliding_window",
        ),
        ("\"factor\": 32.0", "\"factor\": \"big\"", "factor"),
    ];
    for (from, to, needle) in cases {
        assert!(RELEASED_20B.contains(from), "{from}");
        let json = RELEASED_20B.replacen(from, to, 1);
        match parse(&json) {
            Err(Error::Config { reason, .. }) => {
                assert!(reason.contains(needle), "{needle}: {reason}")
            }
            other => panic!("{needle}: expected Error::Config, got {other:?}"),
        }
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures_gpt_oss")
        .join(name)
}

/// Token ids that revisit the vocabulary in a long, irregular order.
fn long_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 2654435761 + i * i * 40503) % vocab as u64) as u32)
        .collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
}

/// With a context of more than twice (window + a pass's tokens), a sliding layer keeps a
/// ring of 2 (window + 511, rounded up to a multiple of 64) positions instead of the whole
/// context: less memory, and the same logits bit for bit as a session whose caches hold
/// every position, through prefill chunks and decode steps that wrap the ring several
/// times.
#[test]
fn sliding_layers_keep_a_ring_of_their_window() {
    let dir = fixture("oss_f32");
    let model = Model::open(&dir).unwrap();
    let cfg = model.config().clone();
    let window = cfg.layers[0]
        .attention()
        .and_then(|a| a.sliding_window)
        .expect("layer 0 slides");
    // The window and a pass's most tokens less one, rounded up to whole 64-key tiles.
    let ring_rows = 2 * (window + 511).next_multiple_of(64);
    // 1150 positions: no ring (2 cap >= max_context); 4096: rings.
    let mut plain = model.session(ring_rows - 2).unwrap();
    let mut ringed = model.session(4096).unwrap();
    let kvd = cfg.num_key_value_heads * cfg.head_dim;
    let sliding = cfg
        .layers
        .iter()
        .filter(|p| p.attention().is_some_and(|a| a.sliding_window.is_some()))
        .count();
    let full = cfg.num_hidden_layers - sliding;
    assert!(sliding > 0 && full > 0);
    let elem = 4 * kvd * 2; // f32 keys and values
    assert_eq!(
        plain.kv_cache_bytes() as usize,
        cfg.num_hidden_layers * (ring_rows - 2) * elem
    );
    assert_eq!(
        ringed.kv_cache_bytes() as usize,
        (sliding * ring_rows + full * 4096) * elem
    );
    let ids = long_ids(1000, cfg.vocab_size);
    // Prefill two chunks (512 + 88), then decode past position 1000: the ring wraps.
    let a = plain.prefill(&ids[..600]).unwrap();
    let b = ringed.prefill(&ids[..600]).unwrap();
    assert_eq!(a, b, "prefill");
    for (i, &id) in ids[600..].iter().enumerate() {
        let a = plain.step(id).unwrap();
        let b = ringed.step(id).unwrap();
        assert!(a == b, "step at position {}", 600 + i);
    }
}

/// Past several wraps of the ring (prefill chunks starting and ending anywhere in it, and
/// decode steps), the logits are the CPU reference's.
#[test]
fn ring_caches_match_the_reference_over_a_long_context() {
    let dir = fixture("oss_f32");
    let model = Model::open(&dir).unwrap();
    let cfg = model.config().clone();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let store =
        SafetensorsStore::new(std::sync::Arc::new(Checkpoint::open(&dir).unwrap()), &cfg).unwrap();
    let reference = moestream::reference::ReferenceModel::new(&cfg, &ckpt, &store).unwrap();
    let ids = long_ids(1300, cfg.vocab_size);
    let want = reference.forward(&ids).unwrap();
    let mut s = model.session(4096).unwrap();
    // Prefill 1290 tokens (512 + 512 + 266), then 10 steps.
    let got = s.prefill(&ids[..1290]).unwrap();
    let d = max_rel_diff(&got, &want[1289]);
    assert!(d < 1e-4, "prefill: max relative difference {d}");
    for (i, &id) in ids[1290..].iter().enumerate() {
        let got = s.step(id).unwrap();
        let d = max_rel_diff(&got, &want[1290 + i]);
        assert!(d < 1e-4, "step {i}: max relative difference {d}");
    }
}

/// The synthetic gpt-oss writer (the benchmarks' gpt-oss-20b / -120b shapes, scaled down
/// here) writes checkpoints in the released layout, MXFP4 and bf16 experts, that load and
/// run as the CPU reference does.
#[test]
fn synthetic_gpt_oss_runs_as_the_reference_does() {
    use moestream::synthetic::{SyntheticGptOss, SyntheticSpec};
    for mxfp4 in [true, false] {
        let mut spec = SyntheticSpec::gpt_oss_120b(3);
        spec.vocab_size = 300;
        spec.hidden_size = 64;
        spec.num_heads = 4;
        spec.num_kv_heads = 2;
        spec.head_dim = 16;
        spec.num_experts = 8;
        spec.top_k = 2;
        spec.moe_intermediate_size = 96;
        let mut g = SyntheticGptOss::released();
        g.sliding_window = 4;
        g.mxfp4 = mxfp4;
        spec.gpt_oss = Some(g);
        let root = std::env::temp_dir().join(format!(
            "moestream-synthetic-gpt-oss-{mxfp4}-{}",
            std::process::id()
        ));
        let dir = spec.write(root.join("model")).unwrap();
        let model = Model::open(&dir).unwrap();
        let cfg = model.config().clone();
        assert_eq!(cfg.model_type, "gpt_oss");
        assert!(
            model.expert_cache_bytes() >= spec.expert_bytes(),
            "the default cache holds every expert"
        );
        let ckpt = Checkpoint::open(&dir).unwrap();
        let store =
            SafetensorsStore::new(std::sync::Arc::new(Checkpoint::open(&dir).unwrap()), &cfg)
                .unwrap();
        let format = store.formats(0).unwrap()[0];
        assert_eq!(
            format,
            if mxfp4 {
                moestream::format::WeightFormat::Mxfp4
            } else {
                moestream::format::WeightFormat::Float(moestream::format::DType::BF16)
            }
        );
        let reference = moestream::reference::ReferenceModel::new(&cfg, &ckpt, &store).unwrap();
        let ids = long_ids(14, cfg.vocab_size);
        let want = reference.forward(&ids).unwrap();
        let mut s = model.session(64).unwrap();
        let got = s.prefill(&ids[..10]).unwrap();
        let d = max_rel_diff(&got, &want[9]);
        assert!(d < 1e-4, "mxfp4 {mxfp4}: prefill differs by {d}");
        for (k, &id) in ids[10..].iter().enumerate() {
            let got = s.step(id).unwrap();
            let d = max_rel_diff(&got, &want[10 + k]);
            assert!(d < 1e-4, "mxfp4 {mxfp4}: step {k} differs by {d}");
        }
        drop(model);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
