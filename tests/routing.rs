//! Routing traces from a real model: recording (`Session::record_routing`) against the CPU
//! reference's routing, on both decode paths, without changing any logits; replay of a
//! trace through the real expert cache and store (`Model::replay_routing`) against the
//! host-side simulation of every cache policy; a prompt's replay (`Model::replay_prompt`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use moestream::reference::ReferenceModel;
use moestream::routing::{simulate, GeneratorParams, RoutingTrace, TraceHeader};
use moestream::synthetic::SyntheticSpec;
use moestream::{
    cache::CachePolicy,
    checkpoint::Checkpoint,
    config::ModelConfig,
    store::{pack_experts, ExpertLayout, PackOptions, PackedStoreOptions},
    Error, ExpertStore, Model, PackedStore, Result, SafetensorsStore, Session,
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

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 5) % 512).collect()
}

/// Prefill `ids[..p]`, then step through the rest; every call's logits.
fn run(s: &mut Session, ids: &[u32], p: usize) -> Vec<Vec<f32>> {
    let mut out = vec![s.prefill(&ids[..p]).unwrap()];
    for &id in &ids[p..] {
        out.push(s.step(id).unwrap());
    }
    out
}

#[test]
fn recorded_routing_is_the_reference_routing_on_both_decode_paths() {
    let dir = model_dir("reference");
    let cfg = ModelConfig::from_path(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let store = SafetensorsStore::new(Arc::new(Checkpoint::open(&dir).unwrap()), &cfg).unwrap();
    let reference = ReferenceModel::new(&cfg, &ckpt, &store).unwrap();
    let ids = prompt(24);
    let want = reference.forward_trace(&ids).unwrap().routing;
    let k = cfg.num_experts_per_tok;
    let mut traces = Vec::new();
    // A cache of 6 slots (routing read back every layer) and a preloaded full cache
    // (decode steps route on the GPU, their one readback carrying the routing log).
    for full in [false, true] {
        let mut b = Model::builder(&dir).f32_activations(true);
        b = if full {
            b.expert_cache_bytes(1 << 30)
        } else {
            b.expert_cache_bytes(6 * 4096 * 3)
        };
        let model = b.build().unwrap();
        if full {
            model.preload_experts().unwrap();
        } else {
            assert!(
                model.expert_cache_slots() < 16,
                "{}",
                model.expert_cache_slots()
            );
        }
        let mut s = model.session(64).unwrap();
        s.record_routing().unwrap();
        run(&mut s, &ids, 16);
        let st = s.stats();
        if full {
            assert_eq!(st.resident_steps, 8, "decode steps ran resident");
        } else {
            assert_eq!(st.resident_steps, 0);
        }
        let trace = s.take_routing_trace().unwrap();
        assert!(s.routing_trace().is_none());
        assert_eq!(trace.len(), ids.len());
        assert_eq!(trace.header(), &TraceHeader::for_model(&cfg).unwrap());
        for (t, _) in ids.iter().enumerate() {
            for &l in trace.header().moe_layers() {
                let got: Vec<u32> = trace
                    .experts(t, l)
                    .unwrap()
                    .iter()
                    .map(|&e| e as u32)
                    .collect();
                let r = want[l].as_ref().unwrap();
                assert_eq!(
                    got,
                    r.ids[t * k..(t + 1) * k],
                    "full {full}: token {t}, layer {l}"
                );
            }
        }
        // Consistent with the session's counters: every choice, and per layer pass its
        // distinct experts as hits or misses.
        assert_eq!(st.experts_routed as usize, trace.len() * 3 * k);
        let mut distinct = 0;
        for &l in trace.header().moe_layers() {
            let mut prefill: Vec<u16> = (0..16)
                .flat_map(|t| trace.experts(t, l).unwrap().to_vec())
                .collect();
            prefill.sort_unstable();
            prefill.dedup();
            distinct += prefill.len() + 8 * k;
        }
        assert_eq!(
            (st.cache.hits + st.cache.misses) as usize,
            distinct,
            "full {full}"
        );
        traces.push(trace);
    }
    assert_eq!(traces[0], traces[1]);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn recording_changes_no_logits_and_restarts_cleanly() {
    let dir = model_dir("logits");
    let ids = prompt(20);
    for budget in [6 * 4096 * 3, 1 << 30] {
        let model = Model::builder(&dir)
            .expert_cache_bytes(budget)
            .build()
            .unwrap();
        let plain = run(&mut model.session(64).unwrap(), &ids, 12);
        let model = Model::builder(&dir)
            .expert_cache_bytes(budget)
            .build()
            .unwrap();
        let mut s = model.session(64).unwrap();
        s.record_routing().unwrap();
        let recorded = run(&mut s, &ids, 12);
        assert_eq!(
            plain, recorded,
            "budget {budget}: recording moved the logits"
        );
        assert_eq!(s.routing_trace().unwrap().len(), 20);
        // Starting again discards; a fork does not record.
        s.record_routing().unwrap();
        assert!(s.routing_trace().unwrap().is_empty());
        let mut f = s.fork().unwrap();
        f.step(3).unwrap();
        assert!(f.routing_trace().is_none());
        s.step(3).unwrap();
        assert_eq!(s.routing_trace().unwrap().len(), 1);
        // Bad tokens record nothing.
        assert!(s.step(100_000).is_err());
        assert_eq!(s.routing_trace().unwrap().len(), 1);
    }
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

/// The checkpoint's store, failing every read from the `fail_from`-th on.
struct FailFrom {
    inner: SafetensorsStore,
    reads: AtomicUsize,
    fail_from: usize,
}

impl ExpertStore for FailFrom {
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.inner.layout(layer)
    }

    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
        if self.reads.fetch_add(1, Ordering::SeqCst) >= self.fail_from {
            return Err(Error::ExpertRead {
                layer,
                expert,
                reason: "injected".into(),
                cause: None,
            });
        }
        self.inner.read_expert(layer, expert, dst)
    }
}

fn failing_model(dir: &Path, fail_from: usize) -> (Model, Arc<FailFrom>) {
    let cfg = ModelConfig::from_path(dir).unwrap();
    let inner = SafetensorsStore::new(Arc::new(Checkpoint::open(dir).unwrap()), &cfg).unwrap();
    let store = Arc::new(FailFrom {
        inner,
        reads: AtomicUsize::new(0),
        fail_from,
    });
    let model = Model::builder(dir)
        .expert_store(store.clone())
        .minimal_expert_cache()
        .build()
        .unwrap();
    (model, store)
}

#[test]
fn a_failed_prefill_of_several_passes_records_nothing() {
    let dir = model_dir("failed");
    let ids = prompt(600);
    // The reads of the first 512-token pass, counted on a store that never fails.
    let (model, store) = failing_model(&dir, usize::MAX);
    model.session(1024).unwrap().prefill(&ids[..512]).unwrap();
    let first_pass = store.reads.load(Ordering::SeqCst);
    assert!(first_pass > 0);
    // The same prompt whole, failing in its second pass.
    let (model, _) = failing_model(&dir, first_pass);
    let mut s = model.session(1024).unwrap();
    s.record_routing().unwrap();
    let e = s.prefill(&ids).unwrap_err();
    assert!(matches!(e, Error::ExpertRead { .. }), "{e}");
    assert_eq!(s.position(), 0);
    assert!(s.routing_trace().unwrap().is_empty());
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
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

/// A prompt's replay (`Model::replay_prompt`) reads each expert that any of its tokens
/// chose once per layer, however many tokens chose it, also when a layer needs more
/// experts than the cache has slots (they are then read in groups), and finds them all
/// resident the second time when the cache holds them all.
#[test]
fn a_prompt_replay_reads_each_touched_expert_once() {
    let dir = model_dir("prompt");
    let cfg = ModelConfig::from_path(&dir).unwrap();
    let header = TraceHeader::for_model(&cfg).unwrap();
    let trace = RoutingTrace::generate(header, &GeneratorParams::default().seed(5), 24).unwrap();
    let touched: usize = (0..3)
        .map(|l| {
            let mut e: Vec<u16> = (0..trace.len())
                .flat_map(|t| trace.experts(t, l).unwrap().to_vec())
                .collect();
            e.sort_unstable();
            e.dedup();
            e.len()
        })
        .sum();
    assert!(touched > 3 * 8 && touched <= 48, "{touched}");
    let expert = SafetensorsStore::new(Arc::new(Checkpoint::open(&dir).unwrap()), &cfg)
        .unwrap()
        .layout(0)
        .unwrap()
        .bytes as u64;
    for (slots, second_hits) in [(48usize, true), (6, false)] {
        let model = Model::builder(&dir)
            .expert_cache_bytes(slots as u64 * expert.div_ceil(256) * 256)
            .io_threads(3)
            .build()
            .unwrap();
        assert_eq!(model.expert_cache_slots(), slots);
        let r = model.replay_prompt(&trace).unwrap();
        assert_eq!(r.tokens, 24);
        assert_eq!(
            (r.cache.hits, r.cache.misses),
            (0, touched as u64),
            "{slots} slots"
        );
        assert_eq!(r.cache.bytes_read, touched as u64 * expert);
        assert_eq!(r.cache.evictions > 0, touched > slots, "{slots} slots");
        let again = model.replay_prompt(&trace).unwrap();
        if second_hits {
            assert_eq!((again.cache.hits, again.cache.misses), (touched as u64, 0));
        } else {
            assert_eq!(again.cache.hits + again.cache.misses, touched as u64);
            assert!(again.cache.misses > 0);
        }
    }
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn a_recorded_trace_file_replays() {
    let dir = model_dir("file");
    let model = Model::builder(&dir)
        .expert_cache_bytes(6 * 4096 * 3)
        .build()
        .unwrap();
    let mut s = model.session(64).unwrap();
    s.record_routing().unwrap();
    run(&mut s, &prompt(12), 4);
    let trace = s.take_routing_trace().unwrap();
    let file = dir.parent().unwrap().join("routing.trace");
    trace.write(&file).unwrap();
    let back = RoutingTrace::read(&file).unwrap();
    assert_eq!(back, trace);
    let r = model.replay_routing(&back).unwrap();
    assert_eq!(r.tokens, 12);
    // A damaged copy names the file and line.
    let text = std::fs::read_to_string(&file).unwrap().replace(" | ", " ");
    std::fs::write(&file, text).unwrap();
    match RoutingTrace::read(&file) {
        Err(Error::RoutingTrace { path, line, .. }) => {
            assert_eq!(path, file);
            assert_eq!(line, Some(8));
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

/// A session following a trace (`Session::follow_routing`) runs exactly the trace's
/// experts for each position, in prefill and decode, wrapping around a short trace: what
/// it records is the trace, repeated. A trace of another shape is refused.
#[test]
fn a_followed_trace_is_the_routing_that_runs() {
    let dir = model_dir("follow");
    let model = Model::builder(&dir).build().unwrap();
    let header = TraceHeader::for_model(model.config()).unwrap();
    let trace = RoutingTrace::generate(header, &GeneratorParams::default(), 7).unwrap();
    let mut s = model.session(64).unwrap();
    s.follow_routing(Some(trace.clone())).unwrap();
    s.record_routing().unwrap();
    let ids = prompt(12);
    run(&mut s, &ids, 5);
    let got = s.take_routing_trace().unwrap();
    assert_eq!(got.len(), 12);
    let moe = got.header().moe_layers().to_vec();
    for t in 0..12 {
        for &l in &moe {
            assert_eq!(
                got.experts(t, l),
                trace.experts(t % 7, l),
                "token {t} layer {l}"
            );
        }
    }
    assert_eq!(s.stats().resident_steps, 0);
    // Back to the model's own routing: what it records differs from the trace.
    s.follow_routing(None).unwrap();
    s.reset();
    s.record_routing().unwrap();
    run(&mut s, &ids, 5);
    let own = s.take_routing_trace().unwrap();
    assert!((0..12).any(|t| moe
        .iter()
        .any(|&l| own.experts(t, l) != trace.experts(t % 7, l))));
    // Another shape, or no tokens: refused.
    let other = TraceHeader::new("qwen3_moe", 3, vec![0, 1, 2], 32, 4).unwrap();
    let wrong = RoutingTrace::generate(other, &GeneratorParams::default(), 3).unwrap();
    assert!(matches!(
        s.follow_routing(Some(wrong)),
        Err(Error::InvalidArgument(_))
    ));
    let empty = RoutingTrace::new(TraceHeader::for_model(model.config()).unwrap());
    assert!(matches!(
        s.follow_routing(Some(empty)),
        Err(Error::InvalidArgument(_))
    ));
}
