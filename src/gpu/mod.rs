//! The GPU device, its limits, and the cache of compiled pipelines.

mod adapter;
pub mod kernels;
mod measure;
pub mod params;
mod readback;
mod recorder;
mod tensor;
#[doc(hidden)]
pub mod testing;

use adapter::cooperative_matrices_offered;
pub(crate) use adapter::{allowed_variant, binding_limit, check_device, pick_adapter};
pub use adapter::{
    AdapterChoice, AdapterSummary, ADAPTER_ENV, COOPERATIVE_MATRICES_ENV, KERNELS_ENV,
};
pub(crate) use readback::PendingRead;
pub(crate) use recorder::{grid_of, Bind, ParamArena, Recorder, Size, Timer};
pub(crate) use tensor::{matrix_layout, GpuMatrix, GpuVec};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kernels::{Kernel, Variant};

use crate::error::{Error, Result};

/// A compiled pipeline's identity: kernel, weight (or scale) dtype code, bits, group size,
/// rows per team (`ROWS`, 0 for the kernel's default), `FLAGS` ([`Kernel::pipeline_flags`]).
type PipelineKey = (Kernel, u32, u32, u32, u32, u32);

pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    /// Largest storage binding (and buffer) we allocate, in bytes ([`binding_limit`]).
    pub max_binding: u64,
    /// The device's limits.
    pub limits: wgpu::Limits,
    pub uniform_align: u64,
    /// Whether passes can be timed with timestamp queries.
    pub timestamps: bool,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    modules: Mutex<HashMap<Kernel, wgpu::ShaderModule>>,
    /// The kernel variant every pipeline is compiled in.
    pub variant: Variant,
    /// Team size of the team kernels in the subgroup variant (the subgroup size).
    pub subgroup_size: Option<u32>,
    /// The first error the device reported since the last [`Gpu::check`].
    error: Arc<Mutex<Option<Error>>>,
    /// A small buffer bound where a kernel's optional input is unused.
    pub dummy: wgpu::Buffer,
    /// How long waits for the GPU poll before they block (`ModelBuilder::readback_spin`).
    pub readback_spin: std::time::Duration,
    /// Bytes of the storage buffers created so far ([`Gpu::allocated`]).
    allocated: AtomicU64,
    /// Kernels take their parameters as immediate data (Vulkan push constants, Metal
    /// `setBytes`) set before each dispatch, instead of from a uniform buffer: an
    /// experiment, on with [`IMMEDIATES_ENV`] where the device offers them.
    pub immediates: bool,
    /// The runtime checks compiled into the kernels ([`SHADER_CHECKS_ENV`]).
    pub shader_checks: ShaderChecks,
}

/// Environment variable that sets the runtime checks wgpu compiles into the kernels:
/// `bounds` (the default: wgpu's bounds checks kept; no loop-bounding counters, no
/// integer-division guards), `all` (wgpu's defaults) or `none` (no bounds checks either),
/// for measuring what they cost.
pub const SHADER_CHECKS_ENV: &str = "MOESTREAM_SHADER_CHECKS";

/// The runtime checks wgpu compiles into the kernels ([`SHADER_CHECKS_ENV`]). wgpu's
/// defaults add to every loop a 64-bit iteration counter that breaks out after 2^64
/// iterations (`force_loop_bounding`: a shader compiler may assume a loop terminates, so
/// an endless one could otherwise be compiled into anything), guard every integer division
/// and remainder against a zero divisor, and clamp indices into fixed-size arrays (and,
/// where the driver does not check buffer accesses itself, into buffers). A SPIR-V
/// compile of `qmatvec` has ~4% more instructions with them, `moe_route` ~27%, most of it
/// the loop counters, which also hide trip counts from unrolling. Without the loop
/// counters and division guards ([`ShaderChecks::Bounds`], the default), an H100 decodes
/// 1.3-1.7% faster and prefills 10-11% faster (docs/performance.md, session 22); memory
/// safety does not rest on them, since the bounds checks stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShaderChecks {
    /// wgpu's checks, all of them.
    All,
    /// Bounds checks only (the default).
    Bounds,
    /// None.
    None,
}

impl ShaderChecks {
    /// From [`SHADER_CHECKS_ENV`]; unset or anything else, [`ShaderChecks::Bounds`].
    fn from_env() -> ShaderChecks {
        match std::env::var(SHADER_CHECKS_ENV).as_deref().map(str::trim) {
            Ok("all") => ShaderChecks::All,
            Ok("none") => ShaderChecks::None,
            _ => ShaderChecks::Bounds,
        }
    }

    /// wgpu's checks to keep; `None` for all of them (a checked module).
    fn runtime_checks(self) -> Option<wgpu::ShaderRuntimeChecks> {
        match self {
            ShaderChecks::All => None,
            ShaderChecks::Bounds => {
                let mut c = wgpu::ShaderRuntimeChecks::unchecked();
                c.bounds_checks = true;
                Some(c)
            }
            ShaderChecks::None => Some(wgpu::ShaderRuntimeChecks::unchecked()),
        }
    }
}

/// Environment variable (`1`): kernel parameters as immediate data (Vulkan push constants,
/// Metal `setBytes`) where the device offers them, instead of a uniform buffer; off by
/// default while it is measured.
pub const IMMEDIATES_ENV: &str = "MOESTREAM_IMMEDIATES";

/// Bytes of immediate data the kernels need: every kernel's parameter block fits in it
/// (`gpu::params`' tests check it), and it is Vulkan's guaranteed minimum.
pub(crate) const MAX_PARAMS_BYTES: u32 = 128;

fn immediates_env() -> bool {
    std::env::var(IMMEDIATES_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Whether a device with `features` and `limits` can take every kernel's parameters as
/// immediate data.
fn immediates_offered(features: &wgpu::Features, limits: &wgpu::Limits) -> bool {
    features.contains(wgpu::Features::IMMEDIATES) && limits.max_immediate_size >= MAX_PARAMS_BYTES
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.summary)
            .finish()
    }
}

/// The bytes a storage buffer asked for `bytes` takes ([`Gpu::storage_buffer`] rounds up
/// to 16, at least 16).
pub(crate) fn storage_size(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16).saturating_mul(16)
}

impl Gpu {
    pub fn new(choice: &AdapterChoice) -> Result<Gpu> {
        Self::with_variant(choice, allowed_variant()?)
    }

    /// Opens an adapter using at most the optional features of `allow` (those the adapter
    /// lacks are left out), with cooperative matrices where offered (the kernel tests'
    /// and benchmarks' devices) unless `MOESTREAM_COOPERATIVE_MATRICES=0`.
    pub fn with_variant(choice: &AdapterChoice, allow: Variant) -> Result<Gpu> {
        let coop = !std::env::var(COOPERATIVE_MATRICES_ENV).is_ok_and(|v| v.trim() == "0");
        Self::with_options(choice, allow, coop)
    }

    /// As [`Gpu::with_variant`], asking for cooperative matrices only if `coop`.
    pub fn with_options(choice: &AdapterChoice, allow: Variant, coop: bool) -> Result<Gpu> {
        let adapter = pick_adapter(choice)?;
        let info = adapter.get_info();
        // Ask for everything the adapter offers: large bindings matter for big weights.
        let limits = adapter.limits();
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
        if allow.subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        // Immediates where offered with room for every kernel's parameters (used only when
        // asked for: `Gpu::immediates`).
        if immediates_offered(&adapter.features(), &limits) {
            wanted |= wgpu::Features::IMMEDIATES;
        }
        let coop = coop && allow.subgroups && cooperative_matrices_offered(&adapter);
        if coop {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        }
        let features = adapter.features() & wanted;
        let experimental = if coop {
            // SAFETY: wgpu's token for its experimental features: their validation may be
            // incomplete. Only the cooperative-matrix kernels use the feature, in the one
            // shape checked above, and they are checked against the CPU reference
            // (tests/qkernels.rs) on the adapters that have them.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("moestream"),
            required_features: features,
            required_limits: limits,
            experimental_features: experimental,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Adapter(format!("requesting a device from {}: {e}", info.name)))?;
        Self::from_device(&adapter, device, queue, allow)
    }

    /// Runs on a device the caller created on `adapter` (`ModelBuilder::wgpu_device`),
    /// using at most the optional features of `allow` that the device was created with.
    /// Fails with [`Error::DeviceRequirement`] naming the first limit (or downlevel
    /// capability) below what the kernels need ([`check_device`]).
    pub fn from_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        allow: Variant,
    ) -> Result<Gpu> {
        let info = adapter.get_info();
        let limits = device.limits();
        let downlevel = adapter.get_downlevel_capabilities();
        check_device(&limits, &downlevel)?;
        let features = device.features();
        let error = Arc::new(Mutex::new(None::<Error>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let e = device_error(e, None);
            tracing::error!(error = %e, "GPU error");
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert(e);
            }
        }));
        let sink = error.clone();
        device.set_device_lost_callback(move |reason, message| {
            tracing::error!(reason = ?reason, message = %message, "GPU device lost");
            // A lost device fails every later call; it replaces any earlier error.
            if let Ok(mut slot) = sink.lock() {
                *slot = Some(Error::DeviceLost(format!("{reason:?}: {message}")));
            }
        });
        let (max_binding, _) = binding_limit(&limits);
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let native_f16 = downlevel
            .flags
            .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        let variant = Variant::new(
            allow.subgroups && features.contains(wgpu::Features::SUBGROUP),
            allow.f16 && native_f16,
        );
        let immediates = immediates_env() && immediates_offered(&features, &limits);
        let mut gpu = Gpu {
            summary: AdapterSummary {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                max_binding_bytes: max_binding,
                variant,
                subgroup_size: None,
                integer_dot_products: matches!(
                    info.backend,
                    wgpu::Backend::Vulkan | wgpu::Backend::Dx12
                ),
                cooperative_matrices: false,
            },
            max_binding,
            uniform_align: limits.min_uniform_buffer_offset_alignment as u64,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            limits,
            device,
            queue,
            pipelines: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            variant,
            subgroup_size: None,
            error,
            dummy,
            readback_spin: crate::model::DEFAULT_READBACK_SPIN,
            allocated: AtomicU64::new(0),
            immediates,
            shader_checks: ShaderChecks::from_env(),
        };
        if variant.subgroups {
            // Subgroup reductions only where the subgroup size is one we can build teams of.
            // (A driver that fails the probe gets the portable kernels, not an error.)
            match gpu.probe_subgroup_size() {
                Ok(Some(n)) => gpu.subgroup_size = Some(n),
                _ => gpu.variant.subgroups = false,
            }
        }
        gpu.summary.variant = gpu.variant;
        gpu.summary.subgroup_size = gpu.subgroup_size;
        // The cooperative-matrix kernels split a workgroup into subgroups of 32.
        gpu.summary.cooperative_matrices = gpu.subgroup_size == Some(32)
            && features.contains(
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16,
            )
            && cooperative_matrices_offered(adapter)
            && gpu.limits.max_compute_workgroup_storage_size >= 22528;
        tracing::debug!(
            adapter = %gpu.summary.name,
            backend = %gpu.summary.backend,
            max_binding,
            variant = %gpu.variant.name(),
            subgroup_size = ?gpu.subgroup_size,
            "GPU device ready"
        );
        Ok(gpu)
    }

    /// The subgroup size of a 64-invocation workgroup, measured by running
    /// `kernels/subgroup_probe.wgsl`: `Some(n)` if every invocation saw the same power of two
    /// `n` from 4 to 64.
    fn probe_subgroup_size(&self) -> Result<Option<u32>> {
        let out = self.storage_buffer("subgroup probe", 256);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("subgroup probe readback"),
            size: 256,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut arena = ParamArena::default();
        let mut rec = Recorder::new(self, &mut arena, None);
        let p = params::SubgroupProbeParams {
            n: 64,
            ..Default::default()
        };
        rec.dispatch(
            Kernel::SubgroupProbe,
            None,
            p.words(),
            &[(&out).into()],
            (1, 1),
        );
        let got = rec.read(&[(&out, 0, 256)], &staging)?;
        let sizes: Vec<u32> = bytemuck::pod_collect_to_vec(&got[0]);
        let n = sizes.first().copied().unwrap_or(0);
        let ok = sizes.iter().all(|&s| s == n) && n.is_power_of_two() && (4..=64).contains(&n);
        Ok(ok.then_some(n))
    }

    /// The `team` parameter of the team kernels for rows of `cols` codes: the subgroup
    /// size in the subgroup variant, else [`kernels::portable_team`].
    pub fn team(&self, cols: usize) -> u32 {
        match (self.variant.subgroups, self.subgroup_size) {
            (true, Some(n)) => n,
            _ => kernels::portable_team(cols as u32),
        }
    }

    /// The `team` parameter of [`Kernel::QMatVec`] for a chunk of `rows` rows of `cols`
    /// codes: [`Gpu::team`], or in the subgroup variant the whole workgroup where
    /// [`kernels::qmatvec_wide_team`] says so.
    pub fn qmatvec_team(&self, rows: usize, cols: usize) -> u32 {
        let team = self.team(cols);
        if self.variant.subgroups && kernels::qmatvec_wide_team(rows as u32, cols as u32) {
            kernels::TEAM_WG
        } else {
            team
        }
    }

    /// The `team` parameter of the expert kernels ([`Kernel::MoeGateUpQ`],
    /// [`Kernel::MoeDownQ`]) for `count` assignments of experts of `rows` rows of `cols`
    /// codes per projection, with `rows_per_team` rows per team: in the subgroup variant
    /// [`kernels::expert_team`] (which may take part of a subgroup), else [`Gpu::team`].
    pub fn expert_team(&self, rows: usize, cols: usize, count: usize, rows_per_team: u32) -> u32 {
        match (self.variant.subgroups, self.subgroup_size) {
            (true, Some(n)) => {
                kernels::expert_team(n, rows as u32, cols as u32, count as u32, rows_per_team)
            }
            _ => self.team(cols),
        }
    }

    /// Fails with the first error the device reported since the last check (a lost device
    /// keeps failing every check).
    pub fn check(&self) -> Result<()> {
        let err = self.error.lock().ok().and_then(|mut e| match e.as_ref() {
            Some(Error::DeviceLost(m)) => Some(Error::DeviceLost(m.clone())),
            _ => e.take(),
        });
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records `e` as the device's error unless one is pending.
    fn report(&self, e: Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
    }

    /// The pipeline of a kernel, compiled once per (kernel, `WDT` code (the weight or scale
    /// dtype's, or [`kernels::WDT_MXFP4`]), quantization bits and group size, rows per team,
    /// flags); `quant` = (bits, group) sets
    /// the `BITS` and `GROUP` override constants of the quantized kernels, `rows` (unless 0,
    /// the kernel's default) the `ROWS` override constant of the team kernels, and `params`
    /// (the dispatch's uniform parameters) the `FLAGS` override constant of the kernels
    /// with [`Kernel::pipeline_flags`].
    pub fn pipeline_for(
        &self,
        kernel: Kernel,
        code: u32,
        quant: Option<(u32, u32)>,
        rows: u32,
        params: &[u32],
    ) -> Arc<wgpu::ComputePipeline> {
        let (bits, group) = quant.unwrap_or((0, 0));
        let flags = kernel
            .pipeline_flags()
            .and_then(|(i, mask)| params.get(i).map(|f| f & mask))
            .unwrap_or(0);
        let key = (kernel, code, bits, group, rows, flags);
        let mut pipes = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pipes.get(&key) {
            return p.clone();
        }
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let variant = self.variant;
        let module = modules.entry(kernel).or_insert_with(|| {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name()),
                source: wgpu::ShaderSource::Wgsl(self.kernel_source(kernel, variant).into()),
            };
            match self.shader_checks.runtime_checks() {
                None => self.device.create_shader_module(desc),
                // SAFETY: the kernels are this crate's own WGSL, not untrusted code: every
                // loop is bounded by a constant or a parameter the host computed (none runs
                // forever), divisors are constants or parameters from a validated config,
                // and indices stay inside their arrays and bindings by construction (each
                // kernel is tested against a CPU reference, and with these checks off
                // against the checked kernel, bit for bit). The bounds checks stay unless
                // `SHADER_CHECKS_ENV` asks for none.
                Some(checks) => unsafe { self.device.create_shader_module_trusted(desc, checks) },
            }
        });
        let mut constants = kernel.constants(code, quant);
        for c in constants.iter_mut() {
            match c.0 {
                "ROWS" if rows != 0 => c.1 = f64::from(rows),
                "FLAGS" => c.1 = f64::from(flags),
                _ => {}
            }
        }
        let pipeline = Arc::new(self.device.create_compute_pipeline(
            &wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name()),
                layout: None,
                module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            },
        ));
        pipes.insert(key, pipeline.clone());
        pipeline
    }

    /// Sets the runtime checks compiled into the kernels (before any pipeline is built:
    /// modules are cached per kernel).
    pub fn set_shader_checks(&mut self, checks: ShaderChecks) {
        self.shader_checks = checks;
    }

    /// Turns [`Gpu::immediates`] on where the device offers them (before any pipeline is
    /// built: pipelines are cached per kernel); whether it is on.
    pub fn use_immediates(&mut self) -> bool {
        self.immediates = immediates_offered(&self.device.features(), &self.limits);
        self.immediates
    }

    /// A kernel's source in `variant`, its parameters declared as immediate data where
    /// [`Gpu::immediates`] says so (every kernel declares them as one uniform at binding 0).
    fn kernel_source(&self, kernel: Kernel, variant: Variant) -> String {
        let src = kernel.source_for(variant);
        if self.immediates {
            kernels::with_immediate_params(&src).unwrap_or(src)
        } else {
            src
        }
    }

    /// A storage buffer of `size` bytes (rounded up to 16). An allocation the device
    /// refuses is recorded, with its label and size, as the error the next
    /// [`Gpu::check`] returns ([`Error::GpuOutOfMemory`]).
    pub fn storage_buffer(&self, label: &str, size: u64) -> wgpu::Buffer {
        let size = storage_size(size);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.report(device_error(e, Some((label, size))));
        }
        self.allocated.fetch_add(size, Ordering::Relaxed);
        buf
    }

    /// Bytes of all storage buffers created on this device by [`Gpu::storage_buffer`] and
    /// [`Gpu::upload`] so far (freed ones included): the difference across a load is what
    /// it allocated.
    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// A storage buffer holding `bytes` (padded to 16 bytes).
    pub fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let buf = self.storage_buffer(label, bytes.len() as u64);
        let padded = bytes.len().div_ceil(4) * 4;
        if padded == bytes.len() {
            self.queue.write_buffer(&buf, 0, bytes);
        } else {
            let mut v = bytes.to_vec();
            v.resize(padded, 0);
            self.queue.write_buffer(&buf, 0, &v);
        }
        buf
    }
}

/// The typed error of a wgpu error (`alloc`: the label and size of the buffer being
/// created, for out-of-memory errors).
fn device_error(e: wgpu::Error, alloc: Option<(&str, u64)>) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::GpuOutOfMemory {
            what: alloc.map_or_else(|| "a GPU allocation".into(), |(l, _)| l.to_string()),
            requested: alloc.map(|(_, b)| b),
        },
        wgpu::Error::Validation { description, .. } => Error::GpuValidation(description),
        wgpu::Error::Internal { description, .. } => Error::Gpu(description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_errors_are_typed() {
        let cause = || Box::new(std::io::Error::other("driver says no")) as _;
        let oom = device_error(
            wgpu::Error::OutOfMemory { source: cause() },
            Some(("expert cache page 3", 1 << 30)),
        );
        assert!(oom.is_retryable());
        assert_eq!(
            oom.to_string(),
            "GPU out of memory: expert cache page 3 (1073741824 bytes)"
        );
        let v = device_error(
            wgpu::Error::Validation {
                source: cause(),
                description: "binding 3 is too small".into(),
            },
            None,
        );
        assert!(matches!(&v, Error::GpuValidation(d) if d == "binding 3 is too small"));
        assert!(!v.is_retryable());
    }
}
