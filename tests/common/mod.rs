//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Every fixture folder with a golden.json; panics (fails the test) if there is none.
/// Every fixture folder with a golden.json, HF (`tests/fixtures`) and MLX-quantized
/// (`tests/fixtures_mlx`); panics (fails the test) if either set is empty.
pub fn fixtures() -> Vec<PathBuf> {
    let mut all = Vec::new();
    for sub in ["/tests/fixtures", "/tests/fixtures_mlx"] {
        let root = PathBuf::from(format!("{}{sub}", env!("CARGO_MANIFEST_DIR")));
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .expect("fixture folder exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("golden.json").exists())
            .collect();
        dirs.sort();
        assert!(
            !dirs.is_empty(),
            "no fixtures with golden.json under {}",
            root.display()
        );
        all.extend(dirs);
    }
    all
}

/// Every Qwen3.5-MoE / Qwen3-Next fixture (`tests/fixtures_qwen35`, made by its
/// generate.py); panics (fails the test) if there is none.
pub fn qwen35_fixtures() -> Vec<PathBuf> {
    fixtures_in("tests/fixtures_qwen35")
}

/// The gpt-oss fixtures (float, bf16 in the released spelling, MXFP4).
#[allow(dead_code)]
pub fn gpt_oss_fixtures() -> Vec<PathBuf> {
    fixtures_in("tests/fixtures_gpt_oss")
}

/// The Mixtral fixtures (HF float, released bf16, transformers' fused layout, MLX 4-bit).
#[allow(dead_code)]
pub fn mixtral_fixtures() -> Vec<PathBuf> {
    fixtures_in("tests/fixtures_mixtral")
}

/// The OLMoE fixtures (HF float with clip_qkv, released bf16, MLX 4-bit).
#[allow(dead_code)]
pub fn olmoe_fixtures() -> Vec<PathBuf> {
    fixtures_in("tests/fixtures_olmoe")
}

/// The GLM-4.5 MoE fixtures (HF f32 with groups, released bf16 with an MTP layer, MLX).
#[allow(dead_code)]
pub fn glm4_moe_fixtures() -> Vec<PathBuf> {
    fixtures_in("tests/fixtures_glm4_moe")
}

/// The DeepSeek-V3 fixtures the GPU engine runs (HF f32, released bf16 with an MTP
/// layer, no q_lora bf16, FP8 with block scales over two column blocks, MLX 4-bit with
/// absorbed projections); not `dsv3_fp8`, whose expert width of 48 the FP8 kernels do not
/// take (a typed error, tests/deepseek_v3.rs; the CPU reference runs it).
#[allow(dead_code)]
pub fn deepseek_v3_fixtures() -> Vec<PathBuf> {
    fixtures_in("tests/fixtures_deepseek_v3")
        .into_iter()
        .filter(|p| !p.ends_with("dsv3_fp8"))
        .collect()
}

#[allow(dead_code)]
fn fixtures_in(sub: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(sub);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixture folder exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures under {}", root.display());
    dirs
}

/// The GPU slot size of a model's experts: its largest expert blob, 256-byte aligned.
pub fn slot_bytes(model: &moestream::Model) -> u64 {
    let largest = model
        .config()
        .moe_layers()
        .iter()
        .filter_map(|&l| model.expert_store().layout(l).map(|x| x.bytes))
        .max()
        .unwrap_or(0);
    (largest as u64).div_ceil(256) * 256
}

pub fn mlx_fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures_mlx")).join(name)
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

/// Writes `spec` under a fresh temporary folder, builds it on the GPU (f32 activations)
/// and checks that a prefill of 10 tokens and 4 steps give the CPU reference's logits to
/// 1e-4 of the largest; returns the model's config. (The synthetic writers' test.)
pub fn synthetic_matches_reference(
    spec: &moestream::synthetic::SyntheticSpec,
    name: &str,
) -> moestream::config::ModelConfig {
    use moestream::{checkpoint::Checkpoint, Model, SafetensorsStore};
    let root = std::env::temp_dir().join(format!("moestream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = spec.write(root.join("model")).unwrap();
    let model = Model::builder(&dir).f32_activations(true).build().unwrap();
    let cfg = model.config().clone();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let store =
        SafetensorsStore::new(std::sync::Arc::new(Checkpoint::open(&dir).unwrap()), &cfg).unwrap();
    let reference = moestream::reference::ReferenceModel::new(&cfg, &ckpt, &store).unwrap();
    let v = spec.vocab_size as u32;
    let ids: Vec<u32> = (0..14u32).map(|i| (i * 37 + 5) % v).collect();
    let want = reference.forward(&ids).unwrap();
    let mut s = model.session(64).unwrap();
    let diff = |a: &[f32], b: &[f32]| {
        let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
    };
    let got = s.prefill(&ids[..10]).unwrap();
    let d = diff(&got, &want[9]);
    assert!(d < 1e-4, "{name}: prefill {d}");
    for (k, &id) in ids[10..].iter().enumerate() {
        let got = s.step(id).unwrap();
        let d = diff(&got, &want[10 + k]);
        assert!(d < 1e-4, "{name}: step {k}: {d}");
    }
    drop(s);
    drop(model);
    std::fs::remove_dir_all(&root).unwrap();
    cfg
}
