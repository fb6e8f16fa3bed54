//! `ModelBuilder::plan`: the GPU memory a model and its sessions take, computed from the
//! headers before loading, equals what `build` and `Model::session` then allocate (on the
//! fixtures of every family, with full, partial and minimal expert caches, and on a device
//! whose small bindings split matrices and cache pages); limits a model does not fit are
//! typed `DeviceLimit` errors naming what does not fit; hostile inputs are typed errors.

mod common;

use std::path::{Path, PathBuf};

use moestream::{model::MemoryPlan, wgpu, Error, Model, ModelBuilder};

/// Every fixture folder of every family.
fn all_fixtures() -> Vec<PathBuf> {
    let mut all = common::fixtures();
    all.extend(common::qwen35_fixtures());
    all.extend(common::gpt_oss_fixtures());
    all.extend(common::mixtral_fixtures());
    all.extend(common::olmoe_fixtures());
    all.extend(common::glm4_moe_fixtures());
    all.extend(common::deepseek_v3_fixtures());
    all
}

fn name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// Makes a builder for one of a test's cases.
type BuilderFn<'a> = Box<dyn Fn() -> ModelBuilder + 'a>;

/// Builds `builder` and checks every number of `plan` against what the load allocated,
/// and the sessions of `contexts` against what `Model::session` allocates.
fn assert_plan_matches(case: &str, plan: &MemoryPlan, builder: ModelBuilder, contexts: &[usize]) {
    let model = builder
        .build()
        .unwrap_or_else(|e| panic!("{case}: build: {e}"));
    assert_eq!(
        plan.resident_weight_bytes(),
        model.resident_weight_bytes(),
        "{case}: resident weight bytes"
    );
    assert!(plan.resident_weight_bytes() > 0, "{case}");
    assert_eq!(
        plan.expert_cache_bytes(),
        model.expert_cache_bytes(),
        "{case}: expert cache bytes"
    );
    assert_eq!(
        plan.expert_cache_slots(),
        model.expert_cache_slots(),
        "{case}: expert cache slots"
    );
    assert_eq!(
        plan.total_expert_bytes(),
        model.total_expert_bytes(),
        "{case}: total expert bytes"
    );
    assert_eq!(
        plan.model_bytes(),
        model.resident_weight_bytes() + model.expert_cache_bytes(),
        "{case}"
    );
    assert_eq!(
        plan.expert_slot_bytes(),
        common::slot_bytes(&model),
        "{case}: slot bytes"
    );
    let largest = plan.largest_buffer();
    assert!(
        largest.bytes > 0 && largest.bytes <= plan.max_binding_bytes(),
        "{case}: largest buffer {largest:?}, binding {}",
        plan.max_binding_bytes()
    );
    assert_eq!(
        model.memory_plan().resident_weight_bytes(),
        plan.resident_weight_bytes(),
        "{case}"
    );
    for &ctx in contexts {
        let want = plan
            .session(ctx)
            .unwrap_or_else(|e| panic!("{case}: plan of a session of {ctx}: {e}"));
        let s = model
            .session(ctx)
            .unwrap_or_else(|e| panic!("{case}: session of {ctx}: {e}"));
        assert_eq!(
            (want.state_bytes, want.kv_cache_bytes, want.scratch_bytes),
            (s.state_bytes(), s.kv_cache_bytes(), s.scratch_bytes()),
            "{case}: session of {ctx} tokens (state, KV, scratch)"
        );
        assert_eq!(want.bytes(), s.state_bytes() + s.scratch_bytes(), "{case}");
        assert_eq!(want.max_context, ctx);
        assert!(want.tokens_per_pass >= 1 && want.tokens_per_pass <= ctx.min(512));
        assert!(
            want.largest_buffer.bytes <= plan.max_binding_bytes(),
            "{case}: {:?}",
            want.largest_buffer
        );
        assert_eq!(model.memory_plan().session(ctx).unwrap(), want, "{case}");
    }
}

/// The plan of every fixture of every family, with its expert cache holding every expert
/// (the default budget), three experts, and the minimal cache, equals what is allocated.
/// Contexts: one token, one pass, two passes, and 2048 (gpt-oss's sliding layers keep
/// rings there).
#[test]
fn plans_equal_what_build_and_sessions_allocate() {
    let fixtures = all_fixtures();
    assert!(fixtures.len() >= 30, "{} fixtures", fixtures.len());
    let mut cases = 0;
    for dir in &fixtures {
        let full = Model::builder(dir).plan().unwrap();
        let slot = full.expert_slot_bytes();
        assert!(slot > 0, "{}", name(dir));
        let options: [(&str, BuilderFn<'_>); 3] = [
            ("all experts", Box::new(|| Model::builder(dir))),
            (
                "3 slots",
                Box::new(move || Model::builder(dir).expert_cache_bytes(3 * slot + slot / 2)),
            ),
            (
                "minimal",
                Box::new(|| Model::builder(dir).minimal_expert_cache()),
            ),
        ];
        for (label, builder) in options {
            let case = format!("{}, {label}", name(dir));
            let plan = builder().plan().unwrap_or_else(|e| panic!("{case}: {e}"));
            if label == "3 slots" {
                assert_eq!(plan.expert_cache_slots(), 3, "{case}");
            }
            let contexts: &[usize] = if label == "all experts" {
                &[1, 512, 600, 2048]
            } else {
                &[64]
            };
            assert_plan_matches(&case, &plan, builder(), contexts);
            cases += 1;
        }
    }
    println!("memory plan == allocation: {cases} models");
}

/// The numbers themselves, from the config by hand: tiny_f32's KV cache, its expert slots
/// and its resident weights bound by the tensors' bytes.
#[test]
fn plan_numbers_follow_the_config() {
    let dir = common::fixture("tiny_f32");
    let cfg = moestream::config::ModelConfig::from_path(&dir).unwrap();
    let plan = Model::builder(&dir).plan().unwrap();
    let kv_per_token = (cfg.num_key_value_heads * cfg.head_dim * 4 * 2) as u64;
    for ctx in [1usize, 100, 1000] {
        let s = plan.session(ctx).unwrap();
        assert_eq!(
            s.kv_cache_bytes,
            cfg.num_hidden_layers as u64 * ctx as u64 * kv_per_token
        );
        assert_eq!(s.state_bytes, s.kv_cache_bytes, "attention layers only");
        assert!(s.scratch_bytes > 0);
    }
    // f32 experts: gate, up [I, H] and down [H, I], the slot 256-byte aligned.
    let expert = (3 * cfg.moe_intermediate_size * cfg.hidden_size * 4) as u64;
    assert_eq!(plan.expert_slot_bytes(), expert.div_ceil(256) * 256);
    assert_eq!(
        plan.total_expert_bytes(),
        expert * (cfg.num_hidden_layers * cfg.num_experts) as u64
    );
    let all = (cfg.num_hidden_layers * cfg.num_experts) as u64;
    assert_eq!(plan.expert_cache_bytes(), all * plan.expert_slot_bytes());
    // At least the embedding, the LM head (not tied) and each layer's projections.
    let h = cfg.hidden_size as u64;
    let floor = 2 * cfg.vocab_size as u64 * h * 4;
    assert!(plan.resident_weight_bytes() > floor);
    assert_eq!(plan.kv_cache_dtype(), moestream::format::DType::F32);
}

/// The lavapipe adapter and a device on it with `limits` (the adapter's optional features
/// moestream uses).
fn device_with(limits: wgpu::Limits) -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    });
    let adapter =
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY)).remove(0);
    let features =
        adapter.features() & (wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("test"),
        required_features: features,
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    (adapter, device, queue)
}

/// Limits whose storage bindings hold `binding` bytes.
fn small_bindings(adapter_limits: &wgpu::Limits, binding: u64) -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffer_binding_size: binding,
        ..adapter_limits.clone()
    }
}

/// A small MLX 4-bit model with a large vocabulary (the embedding and LM head take 160
/// KiB each), written once per test process.
fn chunked_model() -> PathBuf {
    let mut spec = moestream::synthetic::SyntheticSpec::default();
    spec.vocab_size = 4096;
    spec.hidden_size = 64;
    spec.num_layers = 2;
    spec.num_heads = 4;
    spec.num_kv_heads = 2;
    spec.head_dim = 16;
    spec.num_experts = 8;
    spec.top_k = 2;
    spec.moe_intermediate_size = 128;
    spec.quant = Some((4, 32));
    let dir = std::env::temp_dir().join(format!("moestream-plan-chunked-{}", std::process::id()));
    spec.write(dir.join("model")).unwrap()
}

/// Prefill and three steps of fixed tokens.
fn logits(model: &Model) -> Vec<f32> {
    let mut s = model.session(64).unwrap();
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 97 + 11) % 4096).collect();
    let mut out = s.prefill(&ids).unwrap();
    for id in [3, 700, 4000] {
        out.extend(s.step(id).unwrap());
    }
    out
}

/// On a device whose bindings hold 96 KiB, a model's embedding and LM head are split into
/// chunks, its expert cache into pages of a few slots, its prefill passes into fewer
/// tokens, and its context is bounded by a layer's KV cache fitting a binding: the plan
/// (for the device given by `wgpu_device`, and for the same limits without a GPU) still
/// equals what is allocated, and the model gives the logits of the unsplit model.
#[test]
fn small_bindings_split_buffers_as_planned() {
    let dir = chunked_model();
    let (adapter, _, _) = device_with(wgpu::Limits::default());
    let limits = small_bindings(&adapter.limits(), 96 << 10);
    let (adapter, device, queue) = device_with(limits.clone());
    let builder = || {
        Model::builder(&dir)
            .wgpu_device(&adapter, &device, &queue)
            .f32_activations(true)
    };
    let plan = builder().plan().unwrap();
    assert_eq!(plan.max_binding_bytes(), 96 << 10);
    let no_gpu = Model::builder(&dir).plan_with_limits(&limits).unwrap();
    assert_eq!(
        (
            no_gpu.resident_weight_bytes(),
            no_gpu.expert_cache_bytes(),
            no_gpu.session(200).unwrap()
        ),
        (
            plan.resident_weight_bytes(),
            plan.expert_cache_bytes(),
            plan.session(200).unwrap()
        )
    );
    // The unsplit plan of the same model: chunks round up to 16 bytes each.
    let unsplit = Model::builder(&dir).plan().unwrap();
    assert!(plan.resident_weight_bytes() >= unsplit.resident_weight_bytes());
    assert_eq!(plan.expert_cache_bytes(), unsplit.expert_cache_bytes());
    assert!(plan.largest_buffer().bytes <= 96 << 10);
    assert!(unsplit.largest_buffer().bytes > 96 << 10);
    // Keys or values of a layer: 128 bytes a token, 768 tokens a binding.
    assert!(plan.session(768).is_ok());
    assert!(matches!(plan.session(769), Err(Error::DeviceLimit { .. })));
    let s = plan.session(200).unwrap();
    assert!(s.tokens_per_pass < 200, "{s:?}");
    assert!(plan.expert_cache_bytes() > 2 * (96 << 10));
    assert_plan_matches("on 96 KiB bindings", &plan, builder(), &[1, 200]);
    let split = logits(&builder().build().unwrap());
    let whole = logits(&Model::builder(&dir).f32_activations(true).build().unwrap());
    let scale = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = split
        .iter()
        .zip(&whole)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        split.len() == whole.len() && diff <= 1e-4 * scale,
        "logits of the split model differ by {diff} (scale {scale})"
    );
}

/// A device too small for the model: the plan names the first buffer that does not fit
/// and the limit, and `build` on such a device fails the same way before loading; a
/// context too long for a binding fails the session plan as it fails `Model::session`.
#[test]
fn limits_a_model_does_not_fit_are_device_limit_errors() {
    let dir = common::fixture("tiny_f32");
    let plan = Model::builder(&dir).plan().unwrap();
    let slot = plan.expert_slot_bytes();
    let (adapter, _, _) = device_with(wgpu::Limits::default());
    let base = adapter.limits();

    // One expert slot larger than a binding.
    let limits = small_bindings(&base, slot - 256);
    let e = Model::builder(&dir).plan_with_limits(&limits).unwrap_err();
    match &e {
        Error::DeviceLimit {
            what,
            requested,
            limit_name,
            limit,
        } => {
            assert!(what.contains("expert"), "{e}");
            assert_eq!(*requested, slot);
            assert_eq!(*limit_name, "max_storage_buffer_binding_size");
            assert_eq!(*limit, slot - 256);
        }
        other => panic!("expected DeviceLimit, got {other:?}"),
    }
    let (a, device, queue) = device_with(limits);
    let built = Model::builder(&dir)
        .wgpu_device(&a, &device, &queue)
        .build();
    assert_eq!(built.unwrap_err().to_string(), e.to_string());

    // One row of the embedding (64 f32 = 256 bytes, plus the chunk slack) larger than a
    // binding, set by a per-buffer cap below the binding limit (as on iOS).
    let limits = wgpu::Limits {
        max_buffer_size: 256,
        ..base.clone()
    };
    let e = Model::builder(&dir).plan_with_limits(&limits).unwrap_err();
    assert!(
        matches!(&e, Error::DeviceLimit { what, limit_name: "max_buffer_size", limit: 256, .. } if what.contains("embed")),
        "{e:?}"
    );

    // A context whose KV cache of one layer exceeds a binding.
    let model = Model::builder(&dir).build().unwrap();
    for ctx in [1usize << 40, usize::MAX] {
        let want = plan.session(ctx).unwrap_err();
        assert!(
            matches!(&want, Error::DeviceLimit { what, .. } if what.contains("KV cache")),
            "{want:?}"
        );
        let got = model.session(ctx).unwrap_err();
        assert_eq!(got.to_string(), want.to_string());
    }
    assert!(matches!(
        plan.session(0).unwrap_err(),
        Error::InvalidArgument(_)
    ));
}

/// A copy of tiny_f32 whose config.json has `key` set to `value`.
fn with_config(key: &str, value: serde_json::Value) -> PathBuf {
    let src = common::fixture("tiny_f32");
    let dir = std::env::temp_dir().join(format!(
        "moestream-plan-{key}-{}-{}",
        value.to_string().replace(['/', '"', '.', '-'], "_"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg[key] = value;
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// Hostile configs and options: typed errors from the plan (no GPU touched, no panic, no
/// allocation sized by them), the same as `build` gives.
#[test]
fn hostile_configs_and_options_are_typed_plan_errors() {
    let limits = wgpu::Limits::default();
    let huge = serde_json::json!(1u64 << 60);
    let cases = [
        ("num_hidden_layers", serde_json::json!(1_000_000_000_000u64)),
        ("num_hidden_layers", serde_json::json!(0)),
        ("vocab_size", huge.clone()),
        ("hidden_size", huge.clone()),
        ("hidden_size", serde_json::json!(-1)),
        ("moe_intermediate_size", huge.clone()),
        ("num_key_value_heads", serde_json::json!(3)),
        ("head_dim", serde_json::json!(1u64 << 40)),
        ("num_local_experts", huge.clone()),
        ("num_experts_per_tok", huge),
    ];
    for (key, value) in cases {
        let dir = with_config(key, value.clone());
        let case = format!("{key} = {value}");
        let e = Model::builder(&dir)
            .plan_with_limits(&limits)
            .err()
            .unwrap_or_else(|| panic!("{case}: planned"));
        assert!(
            matches!(
                e,
                Error::Config { .. }
                    | Error::Shape { .. }
                    | Error::InvalidArgument(_)
                    | Error::DeviceLimit { .. }
                    | Error::MissingTensor { .. }
            ),
            "{case}: {e:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let dir = common::fixture("tiny_f32");
    let slot = Model::builder(&dir).plan().unwrap().expert_slot_bytes();
    for builder in [
        Model::builder(&dir).expert_cache_bytes(slot - 1),
        Model::builder(&dir).expert_cache_page_bytes(slot - 1),
        Model::builder(&dir).kv_cache_dtype(moestream::format::DType::BF16),
    ] {
        let e = builder.plan_with_limits(&limits).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }
    // A budget past every expert plans them all; a huge page limit is capped by the binding.
    let plan = Model::builder(&dir)
        .expert_cache_bytes(u64::MAX)
        .expert_cache_page_bytes(u64::MAX)
        .plan_with_limits(&limits)
        .unwrap();
    assert_eq!(plan.expert_cache_slots(), 2 * 8);
    let missing = Model::builder("/nonexistent/moestream-model").plan_with_limits(&limits);
    assert!(matches!(missing, Err(Error::Io { .. })), "{missing:?}");
}
