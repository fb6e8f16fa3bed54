//! Replay of a routing trace through the real expert cache and store
//! (`Model::replay_routing`) against the host-side simulation of every cache policy.

use std::path::PathBuf;
use std::sync::Arc;

use moestream::routing::{simulate, GeneratorParams, RoutingTrace, TraceHeader};
use moestream::synthetic::SyntheticSpec;
use moestream::{
    pack_experts, CachePolicy, Error, ExpertStore, Model, ModelConfig, PackOptions, PackedStore,
    PackedStoreOptions,
};

/// A small synthetic Qwen3-MoE: 3 layers of 16 experts, top-4.
fn spec() -> SyntheticSpec {
    let mut s = SyntheticSpec::default();
    s.vocab_size = 512;
    s.hidden_size = 64;
    s.num_layers = 3;
    s.num_heads = 4;
    s.num_kv_heads = 2;
    s.head_dim = 16;
    s.num_experts = 16;
    s.top_k = 4;
    s.moe_intermediate_size = 32;
    s
}

/// The model written once per test process, in its own folder under the temp dir.
fn model_dir(name: &str) -> PathBuf {
    let root =
        std::env::temp_dir().join(format!("moestream-routing-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    spec().write(root.join("model")).unwrap()
}

#[test]
fn replay_through_the_real_cache_matches_the_simulation_of_every_policy() {
    let dir = model_dir("replay");
    pack_experts(&dir, &PackOptions::new(), |_| Ok(())).unwrap();
    let cfg = ModelConfig::from_path(&dir).unwrap();
    let header = TraceHeader::for_model(&cfg).unwrap();
    let trace = RoutingTrace::generate(header, &GeneratorParams::default().seed(11), 60).unwrap();
    let choices = (trace.len() * 3 * 4) as u64;
    for (policy, direct) in [
        (CachePolicy::Lru, false),
        (CachePolicy::Lfu, true),
        (CachePolicy::PerLayerLru, false),
    ] {
        let pack = PackedStore::open_with(
            dir.join("moestream-pack"),
            PackedStoreOptions::default().direct_io(direct),
        )
        .unwrap();
        let expert = pack.layout(0).unwrap().bytes as u64;
        let model = Model::builder(&dir)
            .expert_store(Arc::new(pack))
            .expert_cache_bytes(12 * 4096 * 3)
            .expert_cache_policy(policy)
            .io_threads(3)
            .build()
            .unwrap();
        assert_eq!(model.expert_cache_policy(), policy);
        let slots = model.expert_cache_slots();
        assert!(slots > 4 && slots < 48, "{slots}");
        let busy0 = model.storage_busy_time();
        let r = model.replay_routing(&trace).unwrap();
        let sim = simulate(&trace, policy, slots).unwrap();
        assert_eq!(r.tokens, 60);
        assert_eq!(r.cache.hits + r.cache.misses, choices, "{policy:?}");
        assert_eq!(
            (r.cache.hits, r.cache.misses, r.cache.evictions),
            (sim.hits, sim.misses, sim.evictions),
            "{policy:?}: the real cache and the simulation disagree"
        );
        assert_eq!(r.cache.bytes_read, r.cache.misses * expert, "{policy:?}");
        assert!(r.storage_busy > std::time::Duration::ZERO);
        assert!(r.busy_fraction() > 0.0 && r.busy_fraction() <= 1.0, "{r:?}");
        assert!(r.read_throughput() > 0.0);
        assert_eq!(r.time_per_token(), r.wall_time / 60);
        assert_eq!(model.cache_stats().misses, r.cache.misses);
        assert!(model.storage_busy_time() >= busy0 + r.storage_busy);
    }
    // A trace of another shape is refused.
    let model = Model::builder(&dir).build().unwrap();
    let other = TraceHeader::new("qwen3_moe", 3, vec![0, 1, 2], 32, 4).unwrap();
    let t = RoutingTrace::generate(other, &GeneratorParams::uniform(), 2).unwrap();
    let e = model.replay_routing(&t).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}
