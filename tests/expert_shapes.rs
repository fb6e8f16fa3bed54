//! The engine against the CPU reference at an expert shape far larger than the fixtures':
//! Qwen3.5-397B-A17B's 10 routed experts of 4096x1024 per token, at MLX 4-bit. Its decode
//! grids are large enough that, on adapters with 32-lane subgroups, the expert kernels take
//! teams of part of a subgroup (`kernels::expert_team`: gate/up 16, down 8), a path the
//! tiny fixtures never reach; on lavapipe (8-lane subgroups) it checks the shape itself.

#[path = "common/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::Arc;

use harness::{compare, Tol};

use moestream::gpu::kernels;
use moestream::reference::ReferenceModel;
use moestream::synthetic::SyntheticSpec;
use moestream::{
    checkpoint::Checkpoint, config::ModelConfig, format::DType, Model, SafetensorsStore,
};

/// One MoE layer of 10 experts of 4096x1024 (top-10), 4-bit group 64: ~70 MB of experts.
fn spec() -> SyntheticSpec {
    let mut s = SyntheticSpec::default();
    s.vocab_size = 256;
    s.hidden_size = 4096;
    s.num_layers = 1;
    s.num_heads = 8;
    s.num_kv_heads = 2;
    s.head_dim = 64;
    s.num_experts = 10;
    s.top_k = 10;
    s.moe_intermediate_size = 1024;
    s.dtype = DType::BF16;
    s.quant = Some((4, 64));
    s.seed = 0x3335;
    s
}

#[test]
fn qwen35_expert_shape_matches_reference() {
    let s = spec();
    // The shape takes split teams where subgroups are 32 lanes wide.
    assert_eq!(kernels::expert_team(32, 1024, 4096, 10, 2), 16);
    assert_eq!(kernels::expert_team(32, 4096, 1024, 10, 4), 8);
    let dir: PathBuf = s
        .write(std::env::temp_dir().join("moestream-test-expert-shapes"))
        .unwrap();
    let cfg = ModelConfig::from_path(&dir).unwrap();
    let ckpt = Arc::new(Checkpoint::open(&dir).unwrap());
    let store = SafetensorsStore::new(ckpt.clone(), &cfg).unwrap();
    let reference = ReferenceModel::new(&cfg, &ckpt, &store).unwrap();
    let ids = [3u32, 141, 59, 26, 5, 97];
    let want = reference.forward(&ids).unwrap();
    // Logits worth comparing: spread, not flat.
    for w in &want {
        let (lo, hi) = w
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi - lo > 1.0, "degenerate reference logits: {lo}..{hi}");
    }
    let prompt = 3;
    // Every expert resident, and a budget of half of them (streamed decode steps).
    let half = s.expert_bytes() / 2;
    for (budget, f32_activations) in [(None, false), (None, true), (Some(half), false)] {
        let mut b = Model::builder(&dir).f32_activations(f32_activations);
        if let Some(bytes) = budget {
            b = b.expert_cache_bytes(bytes);
        }
        let model = b.build().unwrap();
        let mut session = model.session(ids.len()).unwrap();
        let mut got = vec![session.prefill(&ids[..prompt]).unwrap()];
        for &id in &ids[prompt..ids.len() - 1] {
            got.push(session.step(id).unwrap());
        }
        // Measured on lavapipe: 3e-10 with 8+8-bit activation blocks, 3e-12 with f32
        // activations (rounding only); the bounds leave ~300x.
        let bound = if f32_activations { 1e-9 } else { 1e-7 };
        // Judged by the nmse of each row of logits (no separate bound on one logit).
        let tol = Tol {
            nmse: bound,
            max_rel: f64::INFINITY,
            floor: 0.0,
        };
        for (i, g) in got.iter().enumerate() {
            let pos = prompt - 1 + i;
            let case =
                format!("budget {budget:?}, f32 activations {f32_activations}, position {pos}");
            match compare(g, &want[pos], tol) {
                Ok((e, _)) => println!("{} {case}: nmse {e:.3e}", model.adapter().name),
                Err(e) => panic!("{case}: {e}"),
            }
        }
    }
}
