//! `ModelBuilder::wgpu_device`: a model runs on a device the application created (here on
//! lavapipe), giving the logits of a model on moestream's own device, bit for bit, and
//! leaving the device usable by the application; a device lacking a limit the kernels need
//! is a typed `DeviceRequirement` error naming it.

mod common;

use moestream::golden::{self, Golden};
use moestream::{wgpu, Error, Model};

/// The adapter moestream picks on this machine (the only one: lavapipe in CI).
fn adapter() -> wgpu::Adapter {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    });
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    assert!(!adapters.is_empty(), "no adapter");
    adapters.remove(0)
}

/// An application's device: `limits`, and the optional features moestream would ask for.
fn app_device(
    adapter: &wgpu::Adapter,
    limits: wgpu::Limits,
) -> Result<(wgpu::Device, wgpu::Queue), wgpu::RequestDeviceError> {
    let features =
        adapter.features() & (wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY);
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("application"),
        required_features: features,
        required_limits: limits,
        ..Default::default()
    }))
}

/// Prefill and three steps of fixed tokens.
fn logits(model: &Model) -> Vec<Vec<f32>> {
    let mut s = model.session(64).unwrap();
    let mut out = vec![s.prefill(&[1, 5, 9, 13, 17]).unwrap()];
    for id in [3, 7, 11] {
        out.push(s.step(id).unwrap());
    }
    out
}

#[test]
fn a_model_runs_on_the_applications_device() {
    for dir in [
        common::fixture("tiny_bf16"),
        common::qwen35_fixtures().remove(0),
    ] {
        let adapter = adapter();
        let (device, queue) = app_device(&adapter, adapter.limits()).unwrap();
        let model = Model::builder(&dir)
            .wgpu_device(&adapter, &device, &queue)
            .build()
            .unwrap();
        assert_eq!(model.adapter().name, adapter.get_info().name);
        let g = Golden::load(&dir).unwrap();
        let report = golden::check(&model, &g, &dir).unwrap();
        assert!(report.passed(), "{report}");
        // The same logits, bit for bit, as on the device moestream opens itself.
        let own = Model::builder(&dir).build().unwrap();
        assert_eq!(own.adapter().variant, model.adapter().variant);
        assert!(
            logits(&model) == logits(&own),
            "{}: logits differ between the application's device and moestream's",
            dir.display()
        );
        // The device is still the application's: it records and submits its own work
        // while the model lives and after it is dropped.
        for keep in [true, false] {
            let buf = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("app buffer"),
                size: 256,
                usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            queue.write_buffer(&buf, 0, &[7u8; 256]);
            let enc = device.create_command_encoder(&Default::default());
            queue.submit([enc.finish()]);
            device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            if keep {
                // The model keeps working after the application's submissions.
                assert!(logits(&model) == logits(&own));
            }
        }
        drop(model);
    }
}

/// A device created with fewer storage buffers per shader stage (4, as
/// `Limits::downlevel_defaults` gives) than the kernels bind: an error naming the limit,
/// its value and what is needed; the same with other compute limits.
#[test]
fn a_device_lacking_a_needed_limit_is_a_typed_error() {
    let adapter = adapter();
    let dir = common::fixture("tiny_f32");
    let base = adapter.limits();
    let cases: [(&str, wgpu::Limits, u64, u64); 3] = [
        (
            "max_storage_buffers_per_shader_stage",
            wgpu::Limits {
                max_storage_buffers_per_shader_stage: 4,
                ..base.clone()
            },
            8,
            4,
        ),
        (
            "max_compute_workgroup_storage_size",
            wgpu::Limits {
                max_compute_workgroup_storage_size: 8192,
                ..base.clone()
            },
            16384,
            8192,
        ),
        (
            "max_compute_invocations_per_workgroup",
            wgpu::Limits {
                max_compute_invocations_per_workgroup: 128,
                ..base.clone()
            },
            256,
            128,
        ),
    ];
    for (limit, limits, needed, found) in cases {
        let (device, queue) = app_device(&adapter, limits).unwrap();
        let e = Model::builder(&dir)
            .wgpu_device(&adapter, &device, &queue)
            .build()
            .unwrap_err();
        match &e {
            Error::DeviceRequirement {
                what,
                needed: n,
                found: f,
            } => {
                assert_eq!(*what, limit);
                assert_eq!((*n, *f), (needed, found));
            }
            other => panic!("{limit}: expected DeviceRequirement, got {other:?}"),
        }
        assert!(!e.is_retryable());
        let msg = e.to_string();
        assert!(
            msg.contains(limit) && msg.contains(&needed.to_string()),
            "{msg}"
        );
    }
    // WebGPU's default limits are enough.
    let (device, queue) = app_device(&adapter, wgpu::Limits::default()).unwrap();
    let model = Model::builder(&dir)
        .wgpu_device(&adapter, &device, &queue)
        .build()
        .unwrap();
    assert_eq!(
        model.memory_plan().max_binding_bytes(),
        wgpu::Limits::default().max_storage_buffer_binding_size
    );
}

/// `ModelBuilder::f16_prefill` on an adapter without cooperative matrices (lavapipe: CI)
/// is ignored: the model says so (`AdapterSummary::cooperative_matrices`) and gives the
/// default path's logits bit for bit. (Where the adapter has them, the kernels are checked
/// by tests/qkernels.rs and the split-invariance by tests/sessions.rs on the GPU machine.)
#[test]
fn f16_prefill_without_cooperative_matrices_changes_nothing() {
    let dir = common::mlx_fixture("q4_g64");
    let plain = Model::builder(&dir).f16_prefill(false).build().unwrap();
    assert!(!plain.adapter().cooperative_matrices);
    let asked = Model::builder(&dir).f16_prefill(true).build().unwrap();
    if asked.adapter().cooperative_matrices {
        println!(
            "{} has cooperative matrices: f16_prefill is on (its logits are f16's, not compared)",
            asked.adapter().name
        );
        return;
    }
    assert!(
        logits(&asked) == logits(&plain),
        "f16_prefill on an adapter without cooperative matrices changed the logits"
    );
}
