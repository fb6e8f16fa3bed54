//! Running one kernel on host data, for kernel tests and tools. Not part of the stable API.

use super::kernels::{Kernel, Variant};
use super::{Bind, Gpu, ParamArena, Recorder};
use crate::dtype::DType;
use crate::error::Result;
use crate::gpu::AdapterChoice;

/// A GPU device for running single kernels.
pub struct KernelRunner {
    gpu: Gpu,
}

impl std::fmt::Debug for KernelRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelRunner")
            .field("adapter", &self.gpu.summary)
            .finish()
    }
}

impl KernelRunner {
    /// Opens the default adapter (honouring `MOESTREAM_ADAPTER`).
    pub fn new() -> Result<Self> {
        Ok(KernelRunner {
            gpu: Gpu::new(&AdapterChoice::Auto)?,
        })
    }

    /// Opens the default adapter using at most the optional features of `allow` (e.g.
    /// [`Variant::PORTABLE`] to test the portable kernels on an adapter that has more).
    pub fn with_variant(allow: Variant) -> Result<Self> {
        Ok(KernelRunner {
            gpu: Gpu::with_variant(&AdapterChoice::Auto, allow)?,
        })
    }

    /// Opens the default adapter with kernel parameters passed as immediate data (the
    /// `MOESTREAM_IMMEDIATES` path); `None` where the adapter does not offer them.
    pub fn with_immediates() -> Result<Option<Self>> {
        let mut gpu = Gpu::new(&AdapterChoice::Auto)?;
        Ok(gpu.use_immediates().then_some(KernelRunner { gpu }))
    }

    /// Opens the default adapter with kernels compiled with only the runtime checks
    /// `checks` (the `MOESTREAM_SHADER_CHECKS` path).
    pub fn with_shader_checks(checks: super::ShaderChecks) -> Result<Self> {
        let mut gpu = Gpu::new(&AdapterChoice::Auto)?;
        gpu.set_shader_checks(checks);
        Ok(KernelRunner { gpu })
    }

    /// The adapter's name.
    pub fn adapter_name(&self) -> &str {
        &self.gpu.summary.name
    }

    /// Whether the adapter runs the cooperative-matrix kernels
    /// ([`crate::AdapterSummary::cooperative_matrices`]).
    pub fn cooperative_matrices(&self) -> bool {
        self.gpu.summary.cooperative_matrices
    }

    /// The kernel variant this runner compiles.
    pub fn variant(&self) -> Variant {
        self.gpu.variant
    }

    /// The team size the engine passes to the team kernels for rows of `cols` codes.
    pub fn team(&self, cols: usize) -> u32 {
        self.gpu.team(cols)
    }

    /// The team size the engine passes to [`Kernel::QMatVec`] for `rows` rows of `cols`
    /// codes.
    pub fn qmatvec_team(&self, rows: usize, cols: usize) -> u32 {
        self.gpu.qmatvec_team(rows, cols)
    }

    /// The team size the engine passes to the expert kernels for `count` assignments of
    /// experts of `rows` rows of `cols` codes per projection, `rows_per_team` rows per team.
    pub fn expert_team(&self, rows: usize, cols: usize, count: usize, rows_per_team: u32) -> u32 {
        self.gpu.expert_team(rows, cols, count, rows_per_team)
    }

    /// Runs `kernel` once. `params` fill the uniform at binding 0; `buffers[i]` is the
    /// initial content of binding `i + 1` (an empty slice binds a 16-byte dummy buffer).
    /// `groups` is the workgroup grid. Returns the final content of every buffer.
    pub fn run(
        &self,
        kernel: Kernel,
        wdt: Option<DType>,
        params: &[u32],
        buffers: &[&[u8]],
        groups: (u32, u32),
    ) -> Result<Vec<Vec<u8>>> {
        self.run_q(kernel, wdt, None, params, buffers, groups)
    }

    /// As [`run`](Self::run), for a quantized kernel: `quant` = (bits, group) sets the
    /// `BITS` and `GROUP` override constants; `wdt` is then the scale dtype.
    pub fn run_q(
        &self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        params: &[u32],
        buffers: &[&[u8]],
        groups: (u32, u32),
    ) -> Result<Vec<Vec<u8>>> {
        self.run_q_rows(kernel, wdt, quant, 0, params, buffers, groups)
    }

    /// As [`run_q`](Self::run_q), with the `ROWS` override constant (rows per team of
    /// [`Kernel::QMatVec`]) set to `rows` unless it is 0.
    #[allow(clippy::too_many_arguments)]
    pub fn run_q_rows(
        &self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        rows: u32,
        params: &[u32],
        buffers: &[&[u8]],
        groups: (u32, u32),
    ) -> Result<Vec<Vec<u8>>> {
        self.run_grid(
            kernel,
            wdt,
            quant,
            rows,
            params,
            buffers,
            (groups.0, groups.1, 1),
        )
    }

    /// As [`run_q_rows`](Self::run_q_rows), over a 3-D grid (the batched per-head
    /// mat-vecs: [`super::kernels::head_batch_groups`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run_grid(
        &self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        rows: u32,
        params: &[u32],
        buffers: &[&[u8]],
        groups: (u32, u32, u32),
    ) -> Result<Vec<Vec<u8>>> {
        let code = wdt.map_or(0, DType::shader_code);
        self.run_with(buffers, |rec, binds| {
            rec.record(
                kernel,
                code,
                quant,
                rows,
                params,
                binds,
                super::Size::Direct3(groups),
            )
        })
    }

    /// As [`run_q_rows`](Self::run_q_rows), for a quantized kernel over MXFP4 weights
    /// (`WDT` [`WDT_MXFP4`](super::kernels::WDT_MXFP4), `BITS` 4, `GROUP` 32).
    pub fn run_mxfp4(
        &self,
        kernel: Kernel,
        rows: u32,
        params: &[u32],
        buffers: &[&[u8]],
        groups: (u32, u32),
    ) -> Result<Vec<Vec<u8>>> {
        self.run_with(buffers, |rec, binds| {
            rec.dispatch_mxfp4(kernel, rows, params, binds, super::Size::Direct(groups))
        })
    }

    /// As [`run_grid`](Self::run_grid) with the `WDT` code given as is (a quantized
    /// format's: [`WDT_MXFP4`](super::kernels::WDT_MXFP4),
    /// [`WDT_FP8`](super::kernels::WDT_FP8)) and a 2-D grid.
    #[allow(clippy::too_many_arguments)]
    pub fn run_code(
        &self,
        kernel: Kernel,
        code: u32,
        quant: (u32, u32),
        rows: u32,
        params: &[u32],
        buffers: &[&[u8]],
        groups: (u32, u32),
    ) -> Result<Vec<Vec<u8>>> {
        self.run_with(buffers, |rec, binds| {
            rec.record(
                kernel,
                code,
                Some(quant),
                rows,
                params,
                binds,
                super::Size::Direct(groups),
            )
        })
    }

    fn run_with(
        &self,
        buffers: &[&[u8]],
        dispatch: impl FnOnce(&mut Recorder<'_>, &[Bind<'_>]),
    ) -> Result<Vec<Vec<u8>>> {
        let gpu = &self.gpu;
        let bufs: Vec<wgpu::Buffer> = buffers
            .iter()
            .map(|b| gpu.upload("test input", b))
            .collect();
        let total: u64 = buffers
            .iter()
            .map(|b| (b.len() as u64).max(16).div_ceil(16) * 16)
            .sum();
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("test readback"),
            size: total.max(16),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut arena = ParamArena::default();
        let mut rec = Recorder::new(gpu, &mut arena, None);
        let binds: Vec<Bind<'_>> = bufs.iter().map(Bind::from).collect();
        dispatch(&mut rec, &binds);
        let parts: Vec<(&wgpu::Buffer, u64, u64)> = bufs
            .iter()
            .zip(buffers)
            .map(|(b, host)| (b, 0, host.len() as u64))
            .collect();
        rec.read(&parts, &staging)
    }
}

/// A buffer resident on the benchmark device.
pub struct DeviceBuffer(wgpu::Buffer);

impl DeviceBuffer {
    /// Bytes of the buffer.
    pub fn size(&self) -> u64 {
        self.0.size()
    }
}

/// Times kernels on device-resident buffers, for benchmarks.
pub struct GpuBench {
    gpu: Gpu,
}

impl std::fmt::Debug for GpuBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBench")
            .field("adapter", &self.gpu.summary)
            .finish()
    }
}

impl GpuBench {
    /// Opens the default adapter (honouring `MOESTREAM_ADAPTER`).
    pub fn new() -> Result<Self> {
        Ok(GpuBench {
            gpu: Gpu::new(&AdapterChoice::Auto)?,
        })
    }

    /// As [`new`](Self::new), using at most the optional features of `allow`.
    pub fn with_variant(allow: Variant) -> Result<Self> {
        Ok(GpuBench {
            gpu: Gpu::with_variant(&AdapterChoice::Auto, allow)?,
        })
    }

    /// The adapter.
    pub fn adapter(&self) -> &crate::gpu::AdapterSummary {
        &self.gpu.summary
    }

    /// The team size the engine passes to the team kernels for rows of `cols` codes.
    pub fn team(&self, cols: usize) -> u32 {
        self.gpu.team(cols)
    }

    /// The team size the engine passes to [`Kernel::QMatVec`] for `rows` rows of `cols`
    /// codes.
    pub fn qmatvec_team(&self, rows: usize, cols: usize) -> u32 {
        self.gpu.qmatvec_team(rows, cols)
    }

    /// The team size the engine passes to the expert kernels for `count` assignments of
    /// experts of `rows` rows of `cols` codes per projection, `rows_per_team` rows per team.
    pub fn expert_team(&self, rows: usize, cols: usize, count: usize, rows_per_team: u32) -> u32 {
        self.gpu.expert_team(rows, cols, count, rows_per_team)
    }

    /// Whether times come from GPU timestamp queries (else from the wall clock).
    pub fn has_timestamps(&self) -> bool {
        self.gpu.timestamps
    }

    /// The copy kernel's streaming bandwidth in bytes read + written per second, for
    /// copies of 64, 128 and 256 MB (each capped at the largest binding): `(bytes, B/s)`
    /// per size. Benchmarks take the best as the device's copy bandwidth. The sources hold
    /// pseudo-random bytes (a GPU that compresses memory must not see zeros).
    pub fn copy_bandwidths(&self) -> Result<Vec<(u64, f64)>> {
        let mut out = Vec::new();
        for mb in [64u64, 128, 256] {
            let bytes = (mb << 20).min(self.adapter().max_binding_bytes & !0xffff);
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ bytes;
            let data: Vec<u8> = (0..bytes / 8)
                .flat_map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state ^ (state >> 29)).to_le_bytes()
                })
                .collect();
            let src = self.upload(&data);
            drop(data);
            let dst = self.zeros(bytes);
            let words = (bytes / 16) as u32;
            let p = super::params::CopyParams {
                n: words,
                ..Default::default()
            };
            let t = self.time(
                Kernel::Copy,
                None,
                None,
                p.words(),
                &[&src, &dst],
                super::kernels::copy_groups(words),
                50,
            )?;
            out.push((bytes, 2.0 * bytes as f64 / t));
        }
        Ok(out)
    }

    /// A device buffer holding `bytes`.
    pub fn upload(&self, bytes: &[u8]) -> DeviceBuffer {
        DeviceBuffer(self.gpu.upload("bench", bytes))
    }

    /// A zeroed device buffer of `len` bytes.
    pub fn zeros(&self, len: u64) -> DeviceBuffer {
        DeviceBuffer(self.gpu.storage_buffer("bench", len))
    }

    /// Seconds per dispatch of `kernel`, from `iters` back-to-back dispatches in one pass
    /// (after an untimed warm-up: one pass, then `4 * iters` dispatches submitted just
    /// before the timed ones, so that they run at the clocks of steady work). GPU time when the adapter has timestamp queries,
    /// else wall-clock time including submission.
    #[allow(clippy::too_many_arguments)]
    pub fn time(
        &self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        params: &[u32],
        bufs: &[&DeviceBuffer],
        groups: (u32, u32),
        iters: u32,
    ) -> Result<f64> {
        self.time_rotating(kernel, wdt, quant, params, &[bufs.to_vec()], groups, iters)
    }

    /// As [`time`](Self::time), cycling through several sets of buffers (e.g. copies of the
    /// weights larger together than the GPU's caches, so that reads come from memory).
    #[allow(clippy::too_many_arguments)]
    pub fn time_rotating(
        &self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        params: &[u32],
        sets: &[Vec<&DeviceBuffer>],
        groups: (u32, u32),
        iters: u32,
    ) -> Result<f64> {
        self.time_rotating_rows(kernel, wdt, quant, 0, params, sets, groups, iters)
    }

    /// As [`time_rotating`](Self::time_rotating), with the `ROWS` override constant (rows
    /// per team of [`Kernel::QMatVec`]) set to `rows` unless it is 0.
    #[allow(clippy::too_many_arguments)]
    pub fn time_rotating_rows(
        &self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        rows: u32,
        params: &[u32],
        sets: &[Vec<&DeviceBuffer>],
        groups: (u32, u32),
        iters: u32,
    ) -> Result<f64> {
        let gpu = &self.gpu;
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench readback"),
            size: super::Timer::READBACK_BYTES,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let sets: Vec<Vec<Bind<'_>>> = sets
            .iter()
            .map(|bufs| bufs.iter().map(|b| Bind::from(&b.0)).collect())
            .collect();
        if sets.is_empty() {
            return Err(crate::Error::InvalidArgument("no buffers to time".into()));
        }
        let mut arena = ParamArena::default();
        // Warm-up: compile and run each set once.
        let mut rec = Recorder::new(gpu, &mut arena, None);
        for binds in &sets {
            rec.dispatch_q_rows(kernel, wdt, quant, rows, params, binds, groups);
        }
        rec.read(&[], &staging)?;
        // Keep the GPU busy right up to the timed run: 4x its dispatches, submitted without
        // waiting, so that the timed ones run at the clocks of steady work (short bursts
        // after idle gaps ran up to 2x slower on the H200).
        // `count` dispatches cycling through the sets.
        let record = |rec: &mut Recorder<'_>, count: usize| {
            for i in 0..count {
                let binds = &sets[i % sets.len()];
                rec.dispatch_q_rows(kernel, wdt, quant, rows, params, binds, groups);
            }
        };
        let iters = iters.max(1);
        let mut arena = ParamArena::default();
        let mut rec = Recorder::new(gpu, &mut arena, None);
        record(&mut rec, 4 * iters as usize);
        rec.submit();
        let mut timer = super::Timer::new(gpu);
        let mut arena = ParamArena::default();
        let t0 = std::time::Instant::now();
        let mut rec = Recorder::new(gpu, &mut arena, timer.as_mut());
        record(&mut rec, iters as usize);
        rec.read(&[], &staging)?;
        let wall = t0.elapsed().as_secs_f64();
        let total = rec.gpu_time().map_or(wall, |d| d.as_secs_f64());
        Ok(total / iters as f64)
    }
}

/// The per-kernel GPU profile gathered while `MOESTREAM_PROFILE` is set: (kernel,
/// dispatches, GPU seconds), by time descending. Clears it.
pub fn take_profile() -> Vec<(String, u64, f64)> {
    super::measure::take_profile()
}

/// Leaves every dispatch of the named kernels (the profile's labels) out of what is
/// recorded from now on, process-wide; an empty list records everything again. Results
/// are wrong while any kernel is skipped: for measuring the GPU time a kernel costs inside
/// a real step (`cargo bench --bench decode -- --ablate`). Returns the names that are no
/// kernel.
pub fn skip_kernels(names: &[&str]) -> Vec<String> {
    super::measure::skip_kernels(names)
}

/// A row of values (a multiple of 32) in the 8+8-bit layout of
/// `kernels/include/interleave.wgsl`, quantized as the `rmsnorm` kernel does it, and the
/// values that the layout stands for (`t * (254 hi + lo)` per value): the input of the
/// quantized kernels' integer dot products, for their tests and benchmarks.
pub fn q8_row(x: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let nb = x.len() / 32;
    let mut words = vec![0u32; 18 * nb];
    let mut values = vec![0f32; nb * 32];
    for (b, block) in x.chunks_exact(32).enumerate() {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let k = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let t = amax / (127.0 * 254.0);
        let mut hi = [0i32; 32];
        let mut lo = [0i32; 32];
        for (j, &v) in block.iter().enumerate() {
            (hi[j], lo[j]) = split_8_8(v, k);
            values[32 * b + j] = t * (254 * hi[j] + lo[j]) as f32;
        }
        let pack = |q: &[i32; 32], j0: usize| -> u32 {
            (0..4).fold(0u32, |w, i| {
                w | (((q[j0 + 2 * i] as u32) & 0xff) << (8 * i))
            })
        };
        for k8 in 0..4 {
            for (half, j) in [(0, 8 * k8), (1, 8 * k8 + 1)] {
                let word = 2 * k8 + half; // word of the block's 8 hi (or lo) words
                let (vec, comp) = (word / 4, word % 4);
                words[4 * (vec * nb + b) + comp] = pack(&hi, j);
                words[4 * ((2 + vec) * nb + b) + comp] = pack(&lo, j);
            }
        }
        words[16 * nb + 2 * b] = t.to_bits();
        let codes: i32 = (0..32).map(|j| 254 * hi[j] + lo[j]).sum();
        words[16 * nb + 2 * b + 1] = (codes as f32 * t).to_bits();
    }
    (words, values)
}

/// The 8+8-bit split of `v` for a block or quad whose largest magnitude is `127 / k`:
/// `hi = round(v k)`, `lo = round(254 v k - 254 hi)`, both in [-127, 127], as the kernels
/// compute them.
fn split_8_8(v: f32, k: f32) -> (i32, i32) {
    let h = (v * k).round().clamp(-127.0, 127.0);
    let l = (v * (254.0 * k) - 254.0 * h).round().clamp(-127.0, 127.0);
    (h as i32, l as i32)
}

/// The position of value `r` of quad `quad` in a row, and the word of field `f` (0: hi,
/// 1: lo, 2: t, 3: sum) of that quad in a row of `nb` blocks, in the quad 8+8-bit layout
/// of `kernels/include/interleave.wgsl`.
fn quad_value(quad: usize, r: usize) -> usize {
    32 * (quad / 8) + 8 * ((quad % 8) / 2) + quad % 2 + 2 * r
}

fn quad_word(quad: usize, f: usize, nb: usize) -> usize {
    4 * ((2 * f + (quad % 8) / 4) * nb + quad / 8) + quad % 4
}

/// A row of h (a multiple of 32 values) in the quad 8+8-bit layout of
/// `kernels/include/interleave.wgsl`, quantized as the `moe_gate_up_q` kernel writes it,
/// and the values that the layout stands for: the input of the down projection's integer
/// dot products, for its tests and benchmarks.
pub fn quad_q8_row(h: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let nb = h.len() / 32;
    let mut words = vec![0u32; h.len()];
    let mut values = vec![0f32; h.len()];
    for quad in 0..h.len() / 4 {
        let v: [f32; 4] = std::array::from_fn(|r| h[quad_value(quad, r)]);
        let amax = v.iter().fold(0f32, |m, v| m.max(v.abs()));
        let k = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let t = amax / (127.0 * 254.0);
        let (mut hi, mut lo, mut sum) = (0u32, 0u32, 0i32);
        for (r, &x) in v.iter().enumerate() {
            let (qh, ql) = split_8_8(x, k);
            hi |= ((qh as u32) & 0xff) << (8 * r);
            lo |= ((ql as u32) & 0xff) << (8 * r);
            sum += 254 * qh + ql;
            values[quad_value(quad, r)] = t * (254 * qh + ql) as f32;
        }
        words[quad_word(quad, 0, nb)] = hi;
        words[quad_word(quad, 1, nb)] = lo;
        words[quad_word(quad, 2, nb)] = t.to_bits();
        words[quad_word(quad, 3, nb)] = (sum as f32 * t).to_bits();
    }
    (words, values)
}

/// The values that a row in the quad 8+8-bit layout stands for (the inverse of
/// [`quad_q8_row`] up to its rounding), with the fields' consistency checked: `Err` names
/// the first quad whose sum does not match its codes.
pub fn quad_q8_values(words: &[u32]) -> Result<Vec<f32>, String> {
    let nb = words.len() / 32;
    let mut values = vec![0f32; words.len()];
    for quad in 0..words.len() / 4 {
        let [hi, lo, t, s] = [0, 1, 2, 3].map(|f| words[quad_word(quad, f, nb)]);
        let t = f32::from_bits(t);
        let mut sum = 0i32;
        for r in 0..4 {
            let qh = i32::from((hi >> (8 * r)) as u8 as i8);
            let ql = i32::from((lo >> (8 * r)) as u8 as i8);
            sum += 254 * qh + ql;
            values[quad_value(quad, r)] = t * (254 * qh + ql) as f32;
        }
        let want = sum as f32 * t;
        let got = f32::from_bits(s);
        if (got - want).abs() > 1e-6 * want.abs().max(t) {
            return Err(format!("quad {quad}: sum {got}, its codes give {want}"));
        }
    }
    Ok(values)
}
