//! The CPU reference forward pass against HF transformers' logits for every fixture under
//! `tests/fixtures/` that has a `golden.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moestream::reference::ReferenceModel;
use moestream::{checkpoint::Checkpoint, config::ModelConfig, Error, SafetensorsStore};

/// Tolerance when `golden.json` names none (the tolerance the GPU engine is held to).
const DEFAULT_ATOL: f64 = 2e-3;

/// The reference computes in f32 like HF's eager float32 run, so it is held to a much
/// tighter bound than the GPU: this times the largest golden |logit| (at least 1). It
/// catches semantic slips (an eps, an accumulation in the wrong dtype) that `atol` hides.
/// Observed: about 1e-6 relative.
const REFERENCE_RTOL: f64 = 2.5e-5;

struct Golden {
    ids: Vec<u32>,
    prompt_len: usize,
    logits: Vec<Vec<f32>>,
    atol: f64,
}

fn read_golden(path: &Path) -> Golden {
    let text = std::fs::read_to_string(path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    Golden {
        ids,
        prompt_len: v["prompt_len"].as_u64().unwrap() as usize,
        logits,
        atol: v
            .get("atol")
            .and_then(|a| a.as_f64())
            .unwrap_or(DEFAULT_ATOL),
    }
}

/// HF fixtures (`tests/fixtures`), MLX-quantized ones (`tests/fixtures_mlx`), the
/// Qwen3.5-MoE / Qwen3-Next ones (`tests/fixtures_qwen35`), the gpt-oss ones
/// (`tests/fixtures_gpt_oss`), the Mixtral ones (`tests/fixtures_mixtral`) and the OLMoE
/// ones (`tests/fixtures_olmoe`).
fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for sub in [
        "tests/fixtures",
        "tests/fixtures_mlx",
        "tests/fixtures_qwen35",
        "tests/fixtures_gpt_oss",
        "tests/fixtures_mixtral",
        "tests/fixtures_olmoe",
        "tests/fixtures_glm4_moe",
        "tests/fixtures_deepseek_v3",
    ] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(sub);
        dirs.extend(
            std::fs::read_dir(&root)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.join("golden.json").is_file()),
        );
    }
    dirs.sort();
    dirs
}

fn load(dir: &Path) -> ReferenceModel {
    let cfg = ModelConfig::from_path(dir).unwrap();
    let ckpt = Checkpoint::open(dir).unwrap();
    let store = SafetensorsStore::new(Arc::new(Checkpoint::open(dir).unwrap()), &cfg).unwrap();
    ReferenceModel::new(&cfg, &ckpt, &store).unwrap()
}

#[test]
fn reference_matches_golden_logits() {
    let dirs = fixture_dirs();
    assert!(
        !dirs.is_empty(),
        "no tests/fixtures/*/golden.json found: the reference would go untested"
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let golden = read_golden(&dir.join("golden.json"));
        let model = load(dir);
        let vocab = model.config().vocab_size;
        assert!(
            golden.prompt_len <= golden.ids.len(),
            "{name}: prompt_len > ids"
        );
        assert_eq!(
            golden.logits.len(),
            golden.ids.len(),
            "{name}: one logits row per id"
        );

        let start = std::time::Instant::now();
        let logits = model.forward(&golden.ids).unwrap();
        let elapsed = start.elapsed();
        assert_eq!(logits.len(), golden.ids.len(), "{name}: rows");

        let max_abs = golden
            .logits
            .iter()
            .flatten()
            .fold(0f64, |m, v| m.max(f64::from(v.abs())));
        let tol = golden.atol.min(REFERENCE_RTOL * max_abs.max(1.0));
        let mut max_diff = 0f64;
        let mut worst = (0, 0);
        for (t, (ours, theirs)) in logits.iter().zip(&golden.logits).enumerate() {
            assert_eq!(ours.len(), vocab, "{name}: row {t} width");
            assert_eq!(theirs.len(), vocab, "{name}: golden row {t} width");
            for (c, (a, b)) in ours.iter().zip(theirs).enumerate() {
                let d = (f64::from(*a) - f64::from(*b)).abs();
                // NaN compares false: treat it as an infinite difference.
                if d.is_nan() || d > max_diff {
                    max_diff = if d.is_nan() { f64::INFINITY } else { d };
                    worst = (t, c);
                }
            }
        }
        println!(
            "{name}: {} tokens, max |diff| {max_diff:.3e} at position {} logit {} \
             (tolerance {tol:.1e}; golden atol {:.1e}; max |logit| {max_abs:.2}; {:.1?})",
            golden.ids.len(),
            worst.0,
            worst.1,
            golden.atol,
            elapsed
        );
        if max_diff > tol {
            failures.push(format!(
                "{name}: max |diff| {max_diff:.3e} > tolerance {tol:.1e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "reference differs from golden logits:\n{}",
        failures.join("\n")
    );
}

#[test]
fn reference_rejects_out_of_range_token() {
    let dirs = fixture_dirs();
    assert!(!dirs.is_empty(), "no fixture found");
    let model = load(&dirs[0]);
    let vocab = model.config().vocab_size;
    let err = model.forward(&[0, vocab as u32, 1]).unwrap_err();
    match err {
        Error::TokenOutOfRange {
            id,
            index,
            vocab_size,
        } => {
            assert_eq!((id, index, vocab_size), (vocab as u32, 1, vocab));
        }
        other => panic!("expected TokenOutOfRange, got {other}"),
    }
}

#[test]
fn reference_is_causal_and_prefix_consistent() {
    // Logits at position t depend only on ids[..=t]: a prefix gives the same rows.
    let dirs = fixture_dirs();
    assert!(!dirs.is_empty(), "no fixture found");
    let dir = &dirs[0];
    let golden = read_golden(&dir.join("golden.json"));
    let model = load(dir);
    let full = model.forward(&golden.ids).unwrap();
    let prefix = model.forward(&golden.ids[..golden.prompt_len]).unwrap();
    for (t, (a, b)) in prefix.iter().zip(&full).enumerate() {
        assert_eq!(a, b, "position {t}");
    }
}
