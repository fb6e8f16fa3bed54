//! [`ModelBuilder`]: the options of a load, their defaults (`DEFAULT_*`), the progress a
//! load reports ([`LoadProgress`]), and [`ModelBuilder::build`], which opens the
//! checkpoint, plans the GPU memory, creates the device and uploads the weights.

use std::path::PathBuf;
use std::sync::Arc;

use super::{MemoryPlan, Model, ModelInner, Opened};
use crate::cache::{CachePolicy, ExpertCache};
use crate::dtype::DType;
use crate::engine::loader::shared_expert_blob;
use crate::engine::weights::Weights;
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::gpu::kernels::reads_q8_activations;
use crate::gpu::{AdapterChoice, Gpu};
use crate::store::ExpertStore;

/// Default expert-cache budget when none is given: 2 GiB, or all experts if they are fewer.
pub const DEFAULT_EXPERT_CACHE_BYTES: u64 = 2 << 30;

/// Default number of I/O threads (reads in flight at once). What they cost: each holds
/// one staging buffer as large as the largest expert (8 x 2.65 MB = 21 MB of host memory
/// for Qwen3-30B-A3B's 4-bit experts) and sleeps while no read is asked for (no CPU time
/// when every expert is cached). On an H100 machine's virtual disk, replaying realistic
/// routing with direct I/O (docs/performance.md, session 17), 4, 8 and 16 threads read at
/// 1.40, 1.30 and 1.51 GB/s (LRU; the disk busy 87-94% in each): within that disk's run-to-run
/// spread. A phone's flash may want fewer; measure with `cargo bench --bench routing --
/// --io-threads N`.
pub const DEFAULT_IO_THREADS: usize = 8;

/// Default of [`ModelBuilder::readback_spin`]: 300 microseconds. What it costs: resident
/// decode of Qwen3-30B-A3B on an H100 used 2.57 ms of CPU time per token with it (54% of
/// one core, mostly recording the GPU work) against 2.58 ms blocking at once (spin 0),
/// and ran at 210.2 against 206.0 tokens/s; a 5 ms spin took 5.02 ms of CPU per token
/// (107%) for 212.4 (session 17).
pub const DEFAULT_READBACK_SPIN: std::time::Duration = std::time::Duration::from_micros(300);

/// How large the GPU expert cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheSize {
    Bytes(u64),
    /// Only what one token of one layer needs (`num_experts_per_tok` slots): reuse comes
    /// from the OS page cache alone.
    Minimal,
}

/// How far [`ModelBuilder::build`] has come, reported to [`ModelBuilder::on_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadProgress {
    /// The configuration and checkpoint headers are read and checked; the GPU is open.
    Opened,
    /// The resident (non-expert) weights of `done` of `total` decoder layers are on the
    /// GPU (`done` 0: the embeddings and output head).
    Layers {
        /// Layers loaded.
        done: usize,
        /// All decoder layers.
        total: usize,
    },
    /// The expert cache is allocated (and shared experts riding in it are uploaded).
    ExpertCache,
}

/// A load-progress callback ([`ModelBuilder::on_progress`]).
pub(crate) type ProgressFn = Arc<dyn Fn(LoadProgress) + Send + Sync>;

/// Options for opening a [`Model`]; see [`Model::builder`].
#[derive(Clone)]
pub struct ModelBuilder {
    dir: PathBuf,
    cache_size: CacheSize,
    store: Option<Arc<dyn ExpertStore>>,
    adapter: AdapterChoice,
    io_threads: usize,
    page_bytes: Option<u64>,
    f32_activations: Option<bool>,
    f16_prefill: Option<bool>,
    kv_cache_dtype: Option<DType>,
    readback_spin: std::time::Duration,
    progress: Option<ProgressFn>,
    policy: CachePolicy,
    device: Option<SharedDevice>,
}

/// A wgpu device the application created ([`ModelBuilder::wgpu_device`]).
#[derive(Clone)]
struct SharedDevice {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl std::fmt::Debug for ModelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelBuilder")
            .field("dir", &self.dir)
            .field("cache_size", &self.cache_size)
            .field("io_threads", &self.io_threads)
            .field("policy", &self.policy)
            .field("custom_store", &self.store.is_some())
            .field("adapter", &self.adapter)
            .field("f32_activations", &self.f32_activations)
            .field("f16_prefill", &self.f16_prefill)
            .field("kv_cache_dtype", &self.kv_cache_dtype)
            .field("readback_spin", &self.readback_spin)
            .field("on_progress", &self.progress.is_some())
            .field("wgpu_device", &self.device.is_some())
            .finish()
    }
}

impl ModelBuilder {
    /// The defaults, for the checkpoint in `dir` ([`Model::builder`]).
    pub(super) fn new(dir: &std::path::Path) -> ModelBuilder {
        ModelBuilder {
            dir: dir.to_path_buf(),
            cache_size: CacheSize::Bytes(DEFAULT_EXPERT_CACHE_BYTES),
            store: None,
            adapter: AdapterChoice::Auto,
            io_threads: DEFAULT_IO_THREADS,
            page_bytes: None,
            f32_activations: None,
            f16_prefill: None,
            kv_cache_dtype: None,
            readback_spin: DEFAULT_READBACK_SPIN,
            progress: None,
            policy: CachePolicy::default(),
            device: None,
        }
    }

    /// Byte budget of the GPU expert cache. The cache holds `budget / slot size` experts
    /// (at least one must fit); a budget that covers all experts makes the model fully
    /// resident after first use. Default: [`DEFAULT_EXPERT_CACHE_BYTES`].
    pub fn expert_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_size = CacheSize::Bytes(bytes);
        self
    }

    /// Keeps no experts on the GPU beyond what the current layer needs for one token
    /// (`num_experts_per_tok` slots), relying on the OS page cache for reuse. On some
    /// machines this is the fastest configuration; measure it.
    pub fn minimal_expert_cache(mut self) -> Self {
        self.cache_size = CacheSize::Minimal;
        self
    }

    /// The largest GPU buffer ("page") the expert cache allocates; the cache is split into
    /// pages of whole slots. Default: the device's largest storage binding. Lower it on
    /// platforms that cap buffer sizes below what the adapter reports (e.g. a few GB on
    /// iOS).
    pub fn expert_cache_page_bytes(mut self, bytes: u64) -> Self {
        self.page_bytes = Some(bytes);
        self
    }

    /// Which expert the GPU expert cache evicts when a miss finds no free slot (default
    /// [`CachePolicy::Lru`]). The policies are compared on realistic routing in
    /// docs/performance.md; [`routing::simulate`](crate::routing::simulate) replays a
    /// routing trace of your own through each of them.
    pub fn expert_cache_policy(mut self, policy: CachePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Number of I/O threads, i.e. expert reads in flight at once (default
    /// [`DEFAULT_IO_THREADS`]).
    pub fn io_threads(mut self, threads: usize) -> Self {
        self.io_threads = threads;
        self
    }

    /// Reads experts from `store` instead of the checkpoint's safetensors files. Its
    /// layout must match the model's expert shapes.
    pub fn expert_store(mut self, store: Arc<dyn ExpertStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Which GPU adapter to use. Left at [`AdapterChoice::Auto`] (the default), the
    /// environment variable [`MOESTREAM_ADAPTER`](crate::adapter::ADAPTER_ENV) (an index or
    /// a name substring) may pick one; a choice made here wins over it.
    pub fn adapter(mut self, choice: AdapterChoice) -> Self {
        self.adapter = choice;
        self
    }

    /// Whether decode steps dot 2- to 6-bit weights with f32 activations (`true`) or with
    /// 8+8-bit activation blocks and integer dot products (`false`). Default: the integer
    /// path where the adapter has packed integer dot products in hardware
    /// ([`integer_dot_products`](crate::adapter::AdapterSummary::integer_dot_products):
    /// Vulkan, DirectX 12), f32 elsewhere, and
    /// f32 for models with linear-attention layers (Qwen3.5, Qwen3-Next), whose Gated
    /// DeltaNet amplifies the integer path's rounding (logits moved by up to 3e-3 on the
    /// 4-bit test models, against ~2e-5 with f32 activations).
    ///
    /// The integer path stores each 32-value block of a normalized activation row as
    /// `t * (254 hi + lo)` with 8-bit `hi` and `lo`, within `max |x| / 64516` of each value
    /// (`kernels/include/interleave.wgsl`), and dots it with the codes exactly in
    /// integers: on the H200 a large 4-bit mat-vec runs at 0.85 of copy bandwidth instead
    /// of 0.52, and logits move by up to ~6e-4 from an f32 reference on the test models
    /// (against ~1e-5 with f32 activations; bf16 inference moves them by ~1e-2). Set this
    /// to `true` to compare against f32 references at the tightest tolerance.
    pub fn f32_activations(mut self, yes: bool) -> Self {
        self.f32_activations = Some(yes);
        self
    }

    /// Runs prefill's quantized mat-mats (the dense projections and the experts) on
    /// cooperative matrices (tensor cores: wgpu's experimental
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX`, 16x16x16 tiles of f16 summed in f32) where the
    /// adapter has them with a subgroup size of 32
    /// ([`AdapterSummary::cooperative_matrices`] says whether they are in use). Their
    /// inputs (activations and dequantized weights) are rounded to f16: on an H100 a
    /// 512-token prefill of the Qwen3-30B-A3B shape runs ~1.8x faster (docs/performance.md),
    /// while logits move by up to ~3e-2 on the test models, more than the conformance
    /// tolerance against HF transformers; so it is off by default. Prefill stays
    /// split-invariant with it; decode steps are unchanged. Without this call,
    /// `MOESTREAM_COOPERATIVE_MATRICES=1` turns it on. Ignored on adapters without
    /// cooperative matrices; with [`wgpu_device`](Self::wgpu_device), the device must have
    /// been created with the `EXPERIMENTAL_COOPERATIVE_MATRIX` and `SHADER_F16` features.
    ///
    /// [`AdapterSummary::cooperative_matrices`]: crate::adapter::AdapterSummary::cooperative_matrices
    pub fn f16_prefill(mut self, yes: bool) -> Self {
        self.f16_prefill = Some(yes);
        self
    }

    /// The element type of the sessions' KV caches: [`DType::F32`] (the default) or
    /// [`DType::F16`], which halves their memory (Qwen3-30B-A3B: 96 instead of 192 KiB per
    /// token of context, 3 instead of 6 GiB for 32768 tokens) and the bytes attention
    /// reads. f16 keys and values are rounded to nearest (11 significant bits) and clamped
    /// to +-65504; on the small random test models this moves logits by up to ~5e-3 (f32:
    /// ~1e-5), which is why it is not the default. f16 needs kernels with native f16
    /// conversion (the adapter's
    /// [`variant`](crate::adapter::AdapterSummary::variant) has `f16`) and a `head_dim`
    /// that is a multiple of 8; asking for it elsewhere, or for bf16, is an
    /// [`Error::InvalidArgument`] from [`build`](Self::build).
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// let model = moestream::Model::builder("models/Qwen3-30B-A3B-4bit")
    ///     .kv_cache_dtype(moestream::format::DType::F16)
    ///     .build()?;
    /// assert_eq!(model.kv_cache_dtype(), moestream::format::DType::F16);
    /// # Ok(()) }
    /// ```
    pub fn kv_cache_dtype(mut self, dtype: DType) -> Self {
        self.kv_cache_dtype = Some(dtype);
        self
    }

    /// How long a wait for GPU results (a token's logits; with a partial expert cache, each
    /// MoE layer's routing) polls the device without blocking; a longer wait then polls
    /// every 50 us with the thread asleep in between. Polling keeps a CPU core busy for up
    /// to this long per wait but saves the blocking wait's wake-up: on an H200 (Vulkan)
    /// decode with a 25% expert cache went from 53.7 to 60.4 tokens/s with the default
    /// [`DEFAULT_READBACK_SPIN`], and resident decode from 211-216 to 224-226 with the naps
    /// after it. Set [`Duration::ZERO`](std::time::Duration::ZERO) to block in the driver
    /// at once, e.g. where CPU power matters more than latency (phones on battery).
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// let model = moestream::Model::builder("models/Qwen3-30B-A3B-4bit")
    ///     .readback_spin(std::time::Duration::ZERO)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn readback_spin(mut self, spin: std::time::Duration) -> Self {
        self.readback_spin = spin;
        self
    }

    /// Calls `f` as the load goes on ([`LoadProgress`]: opened, after each layer's
    /// resident weights, after the expert cache), on the thread that runs
    /// [`build`](Self::build), e.g. to drive a progress bar. Reading a large checkpoint's
    /// weights takes most of a load.
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// use moestream::{model::LoadProgress, Model};
    /// let model = Model::builder("path/to/model")
    ///     .on_progress(|p| {
    ///         if let LoadProgress::Layers { done, total } = p {
    ///             eprint!("\rloading layer {done}/{total}");
    ///         }
    ///     })
    ///     .build()?;
    /// # let _ = model; Ok(()) }
    /// ```
    pub fn on_progress(mut self, f: impl Fn(LoadProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Runs the model on a device the application created (for example the one it renders
    /// with), instead of opening one of its own. `adapter` is the adapter `device` was
    /// requested from; `queue` is the device's queue. The device's limits must cover what
    /// the kernels need: at least [`wgpu::Limits::default()`] (WebGPU's defaults) in its
    /// compute limits and storage buffers per stage, and compute shaders; otherwise
    /// [`build`](Self::build) fails with [`Error::DeviceRequirement`] naming the limit. Its
    /// buffer limits bound what fits ([`plan`](Self::plan) checks them): request the
    /// adapter's [`limits`](wgpu::Adapter::limits) for the largest buffers. The optional
    /// features moestream uses when the device has them: [`wgpu::Features::SUBGROUP`]
    /// (faster quantized kernels) and [`wgpu::Features::TIMESTAMP_QUERY`] (GPU times in
    /// [`SessionStats`](crate::session::SessionStats)). [`adapter`](Self::adapter) is then
    /// ignored.
    ///
    /// moestream installs its own uncaptured-error handler and device-lost callback on the
    /// device (wgpu keeps one of each), so that GPU errors come back typed from its calls;
    /// a lost device is also reported as a `tracing` error event. Work the application
    /// submits to the same queue interleaves with moestream's.
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// use moestream::wgpu;
    /// let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    /// let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
    ///     .map_err(|e| moestream::Error::Adapter(e.to_string()))?;
    /// let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
    ///     required_limits: adapter.limits(),
    ///     ..Default::default()
    /// }))
    /// .map_err(|e| moestream::Error::Adapter(e.to_string()))?;
    /// // ... the application renders with `device` and `queue` ...
    /// let model = moestream::Model::builder("models/Qwen3-30B-A3B-4bit")
    ///     .wgpu_device(&adapter, &device, &queue)
    ///     .build()?;
    /// # let _ = model; Ok(()) }
    /// ```
    pub fn wgpu_device(
        mut self,
        adapter: &wgpu::Adapter,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Self {
        self.device = Some(SharedDevice {
            adapter: adapter.clone(),
            device: device.clone(),
            queue: queue.clone(),
        });
        self
    }

    /// The GPU memory the model will take with these options, from `config.json`, the
    /// checkpoint's headers and the expert store's layouts alone (no weight data read,
    /// nothing allocated), checked against the limits of the device it would run on: the
    /// one given to [`wgpu_device`](Self::wgpu_device), else the adapter
    /// [`adapter`](Self::adapter) picks (whose limits are read; no device is opened). See
    /// [`MemoryPlan`]; [`plan_with_limits`](Self::plan_with_limits) plans for other limits
    /// without a GPU.
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// let builder = moestream::Model::builder("models/Qwen3-30B-A3B-4bit");
    /// let plan = builder.plan()?;
    /// let per_session = plan.session(32768)?.bytes();
    /// if plan.model_bytes() + 2 * per_session < 20 << 30 {
    ///     let model = builder.build()?;
    ///     assert_eq!(model.resident_weight_bytes(), plan.resident_weight_bytes());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn plan(&self) -> Result<MemoryPlan> {
        let limits = match &self.device {
            Some(d) => d.device.limits(),
            None => crate::gpu::pick_adapter(&self.adapter)?.limits(),
        };
        self.plan_with_limits(&limits)
    }

    /// As [`plan`](Self::plan), for a device of `limits` (no GPU is touched): e.g. a
    /// phone's per-buffer cap, lower than what its adapter reports. Fails with
    /// [`Error::DeviceLimit`] naming the first buffer that would not fit.
    pub fn plan_with_limits(&self, limits: &wgpu::Limits) -> Result<MemoryPlan> {
        let opened = Opened::open(&self.dir, self.store.as_ref())?;
        MemoryPlan::new(
            &opened,
            (self.cache_size, self.page_bytes),
            self.planned_kv_dtype()?,
            limits,
        )
    }

    /// The KV cache dtype asked for, if the engine has it at all (whether the adapter can
    /// is checked by [`build`](Self::build)).
    fn planned_kv_dtype(&self) -> Result<DType> {
        match self.kv_cache_dtype {
            None | Some(DType::F32) => Ok(DType::F32),
            Some(DType::F16) => Ok(DType::F16),
            Some(d) => Err(Error::InvalidArgument(format!(
                "KV cache dtype {d:?} is not supported (f32 or f16)"
            ))),
        }
    }

    /// Opens the checkpoint, uploads the resident weights and sets up the expert cache,
    /// allocating what [`plan`](Self::plan) reports (it runs the same plan first, so a
    /// buffer past a device limit fails before any weight is read).
    pub fn build(self) -> Result<Model> {
        let span = tracing::info_span!("moestream::load", dir = %self.dir.display());
        let _entered = span.enter();
        let t0 = std::time::Instant::now();
        let Opened { cfg, ckpt, store } = Opened::open(&self.dir, self.store.as_ref())?;
        if self.io_threads == 0 {
            return Err(Error::InvalidArgument(
                "io_threads must be at least 1".into(),
            ));
        }
        let moe_layers = cfg.moe_layers();
        let f16_prefill = self.f16_prefill.unwrap_or_else(|| {
            std::env::var(crate::gpu::COOPERATIVE_MATRICES_ENV).is_ok_and(|v| v.trim() == "1")
        });
        let mut gpu = match &self.device {
            Some(d) => Gpu::from_device(
                &d.adapter,
                d.device.clone(),
                d.queue.clone(),
                crate::gpu::allowed_variant()?,
            )?,
            None => Gpu::with_options(&self.adapter, crate::gpu::allowed_variant()?, f16_prefill)?,
        };
        // The cooperative-matrix kernels run only when asked for.
        gpu.summary.cooperative_matrices &= f16_prefill;
        gpu.readback_spin = self.readback_spin;
        let gpu_integer_dot = gpu.summary.integer_dot_products;
        // Checked before the weights load, so a bad request fails fast.
        let kv_f16_ok = gpu.variant.f16 && cfg.head_dim % 8 == 0;
        let kv_cache_dtype = match self.planned_kv_dtype()? {
            DType::F16 if !kv_f16_ok => {
                return Err(Error::InvalidArgument(format!(
                    "an f16 KV cache needs kernels with native f16 conversion (adapter {}: {}) and a head_dim that is a multiple of 8 (the model's: {})",
                    gpu.summary.name,
                    gpu.variant.name(),
                    cfg.head_dim
                )))
            }
            d => d,
        };
        let opened = Opened { cfg, ckpt, store };
        let plan = MemoryPlan::new(
            &opened,
            (self.cache_size, self.page_bytes),
            kv_cache_dtype,
            &gpu.limits,
        )?;
        let Opened { cfg, ckpt, store } = opened;
        tracing::debug!(
            resident_weight_bytes = plan.resident_weight_bytes(),
            expert_cache_bytes = plan.expert_cache_bytes(),
            expert_cache_slots = plan.expert_cache_slots(),
            "memory plan"
        );
        let progress = |p: LoadProgress| {
            if let Some(f) = &self.progress {
                f(p);
            }
        };
        progress(LoadProgress::Opened);
        let allocated = gpu.allocated();
        let weights = Weights::load(&gpu, &cfg, &ckpt, store.as_ref(), &progress)?;
        let resident_bytes = gpu.allocated() - allocated;
        if resident_bytes != plan.resident_weight_bytes() {
            return Err(Error::Internal(format!(
                "the resident weights took {resident_bytes} bytes of GPU memory, the memory plan said {}",
                plan.resident_weight_bytes()
            )));
        }
        tracing::debug!(
            bytes = resident_bytes,
            seconds = t0.elapsed().as_secs_f64(),
            "resident weights uploaded"
        );
        // Decode rows stay f32 when asked, without integer dot products, or when no 2- to 6-bit
        // matrix would read the 8+8-bit row (then no norm writes it).
        let reads_q8 =
            |f: WeightFormat| matches!(f, WeightFormat::Affine(q) if reads_q8_activations(q.bits));
        let any_reads_q8 = weights.matrices().any(|m| reads_q8(m.format))
            || moe_layers.iter().any(|&l| {
                store
                    .layout(l)
                    .is_some_and(|lay| lay.tensors.iter().any(|t| reads_q8(t.format)))
            });
        // Models with linear-attention layers keep f32 activations unless asked otherwise:
        // the Gated DeltaNet's L2-normalized q/k and its gated RMSNorm (which divides by
        // small head norms) amplify the 8+8-bit rows' rounding made anywhere upstream. On
        // random 4-bit Qwen3.5 test models (tests/fixtures_qwen35/generate.py, nine seeds)
        // the integer path moved logits by 0.7-3.0e-3 (past golden's 2e-3 on six), f32 rows
        // by ~2e-5; integer rows everywhere but the linear-attention projections still by
        // up to 1.7e-3.
        let hybrid = cfg.layers.iter().any(|p| p.linear_attention().is_some());
        let f32_activations =
            self.f32_activations.unwrap_or(!gpu_integer_dot || hybrid) || !any_reads_q8;
        let cache = match plan.cache() {
            Some(geometry) => {
                let shared_blob = |l: usize| -> Result<Option<Vec<u8>>> {
                    match (weights.cached_shared(l), store.layout(l)) {
                        (true, Some(lay)) => shared_expert_blob(&cfg, &ckpt, l, lay).map(Some),
                        _ => Ok(None),
                    }
                };
                let cache = ExpertCache::new(
                    &gpu,
                    store.clone(),
                    &moe_layers,
                    (cfg.num_hidden_layers, cfg.num_experts),
                    (geometry.slots, self.page_bytes),
                    self.policy,
                    self.io_threads,
                    weights.any_cached_shared().then_some(&shared_blob),
                )?;
                let pages: Vec<usize> = cache
                    .pages
                    .iter()
                    .map(|p| (p.size() / cache.slot_bytes.max(1)) as usize)
                    .collect();
                if cache.bytes() != geometry.bytes()
                    || pages != geometry.pages
                    || cache.has_shared() != (geometry.shared > 0)
                {
                    return Err(Error::Internal(format!(
                        "the expert cache took {} bytes in pages of {pages:?} slots, the memory plan said {} bytes in pages of {:?}",
                        cache.bytes(),
                        geometry.bytes(),
                        geometry.pages
                    )));
                }
                tracing::debug!(
                    slots = cache.slots(),
                    bytes = cache.bytes(),
                    pages = pages.len(),
                    "expert cache allocated"
                );
                Some(cache)
            }
            None => None,
        };
        progress(LoadProgress::ExpertCache);
        tracing::debug!(
            seconds = t0.elapsed().as_secs_f64(),
            adapter = %gpu.summary.name,
            "model loaded"
        );
        Ok(Model {
            inner: Arc::new(ModelInner {
                dir: self.dir,
                cfg,
                gpu,
                weights,
                store,
                cache,
                f32_activations,
                kv_cache_dtype,
                plan,
                resident_bytes,
            }),
        })
    }
}
