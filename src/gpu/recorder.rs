//! Records kernel dispatches into a command encoder, with their uniform parameters packed
//! into a reusable arena, and submits them.

use std::collections::HashMap;
use std::sync::Arc;

use super::kernels::Kernel;
use super::measure::{profiling, skipped};
use super::readback::PendingRead;
use super::Gpu;
use crate::dtype::DType;
use crate::error::Result;

const BLOCK: u64 = 64 * 1024;

/// Uniform parameter blocks owned by one session, reused every submit.
#[derive(Debug, Default)]
pub(crate) struct ParamArena {
    blocks: Vec<(wgpu::Buffer, Vec<u8>)>,
    block: usize,
    offset: u64,
    /// Bind groups already created, by everything they bind. A session records the same
    /// dispatches at the same arena offsets every step, so these are reused.
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
}

/// Everything a bind group binds: the pipeline, the uniform block and offset, and each
/// buffer range.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: usize,
    block: usize,
    offset: u64,
    size: u64,
    buffers: Vec<(wgpu::Buffer, u64, Option<u64>)>,
}

/// Bind groups kept per session before the cache is cleared.
const MAX_BIND_GROUPS: usize = 16384;

impl ParamArena {
    fn push(&mut self, gpu: &Gpu, data: &[u8]) -> (usize, u64) {
        let align = gpu.uniform_align.max(16);
        let size = (data.len() as u64).div_ceil(16) * 16;
        if self.offset + size > BLOCK {
            self.block += 1;
            self.offset = 0;
        }
        if self.block == self.blocks.len() {
            let buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: BLOCK,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.blocks.push((buf, vec![0u8; BLOCK as usize]));
        }
        let at = self.offset;
        let host = &mut self.blocks[self.block].1;
        host[at as usize..at as usize + data.len()].copy_from_slice(data);
        self.offset = (at + size).div_ceil(align) * align;
        (self.block, at)
    }

    /// Uploads the parameters recorded since the last flush (queued before the next
    /// submit) and starts the arena over.
    pub(crate) fn flush(&mut self, gpu: &Gpu) {
        for (i, (buf, host)) in self.blocks.iter().enumerate() {
            if i > self.block {
                break;
            }
            let used = if i == self.block { self.offset } else { BLOCK };
            if used > 0 {
                gpu.queue
                    .write_buffer(buf, 0, &host[..used.min(BLOCK) as usize]);
            }
        }
        self.block = 0;
        self.offset = 0;
    }
}

/// A buffer range bound to a kernel.
#[derive(Clone, Copy)]
pub(crate) struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: Option<u64>,
}

impl<'a> From<&'a wgpu::Buffer> for Bind<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Bind {
            buffer,
            offset: 0,
            size: None,
        }
    }
}

/// How many workgroups a dispatch runs: a grid, or one read on the GPU from a buffer at a
/// byte offset (three u32: x, y, z), as written by an earlier kernel.
pub(crate) enum Size<'a> {
    Direct((u32, u32)),
    /// A 3-D grid (the batched per-head mat-vecs: rows, heads, tokens).
    Direct3((u32, u32, u32)),
    Indirect(&'a wgpu::Buffer, u64),
}

/// Splits a count of workgroups into a 2-D grid within the 65535-per-dimension limit,
/// rows as even as possible: `x * y` exceeds `n` by less than `y` (a grid of (65535, 2)
/// for 65536 workgroups would launch 65534 idle ones, which cost the 256 MB copy
/// baseline 20% on an H200).
pub(crate) fn grid_of(n: u32) -> (u32, u32) {
    let y = n.div_ceil(65535).max(1);
    (n.div_ceil(y).max(1), y)
}

/// GPU timestamps around compute passes, where the adapter supports timestamp queries.
pub(crate) struct Timer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    used: u32,
    /// More passes than queries, or no room to read them back: the total is incomplete.
    overflow: bool,
    /// While profiling: the kernel of each timed pass.
    labels: Vec<&'static str>,
}

impl Timer {
    const QUERIES: u32 = 4096;

    pub fn new(gpu: &Gpu) -> Option<Timer> {
        if !gpu.timestamps {
            return None;
        }
        Some(Timer {
            set: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: Self::QUERIES,
            }),
            resolve: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: Self::QUERIES as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            used: 0,
            overflow: false,
            labels: Vec::new(),
        })
    }

    /// Bytes of readback space the timer may need.
    pub const READBACK_BYTES: u64 = Self::QUERIES as u64 * 8;
}

/// Records one stretch of GPU work between submits. Consecutive dispatches share one
/// compute pass (wgpu orders their storage accesses); copies and submits end the pass.
pub(crate) struct Recorder<'a> {
    pub gpu: &'a Gpu,
    encoder: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    params: &'a mut ParamArena,
    timer: Option<&'a mut Timer>,
    /// GPU nanoseconds of the passes read back so far.
    gpu_ns: f64,
    /// Host time spent recording and submitting work.
    pub record_time: std::time::Duration,
    /// Host time spent waiting for the GPU (readbacks).
    pub wait_time: std::time::Duration,
    /// Recording ahead: [`Recorder::submit`] keeps recording into one encoder and
    /// [`Recorder::read_begin`] finishes it without submitting (see
    /// [`PendingRead::launch`]).
    deferred: bool,
}

fn new_encoder(gpu: &Gpu) -> wgpu::CommandEncoder {
    gpu.device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("step"),
        })
}

impl<'a> Recorder<'a> {
    pub fn new(gpu: &'a Gpu, params: &'a mut ParamArena, timer: Option<&'a mut Timer>) -> Self {
        Recorder {
            gpu,
            encoder: new_encoder(gpu),
            pass: None,
            params,
            timer,
            gpu_ns: 0.0,
            record_time: std::time::Duration::ZERO,
            wait_time: std::time::Duration::ZERO,
            deferred: false,
        }
    }

    /// A recorder whose work is recorded ahead and submitted later, all at once, by
    /// [`PendingRead::launch`]: its submits only end the compute pass, and its read
    /// finishes the encoder instead of submitting it. The parameters stay in `params` until
    /// the launch uploads them.
    pub fn deferred(
        gpu: &'a Gpu,
        params: &'a mut ParamArena,
        timer: Option<&'a mut Timer>,
    ) -> Self {
        let mut r = Recorder::new(gpu, params, timer);
        r.deferred = true;
        r
    }

    /// GPU time of the passes read back so far, if the adapter has timestamp queries and
    /// every pass was timed.
    pub fn gpu_time(&self) -> Option<std::time::Duration> {
        match &self.timer {
            Some(t) if !t.overflow => Some(std::time::Duration::from_nanos(self.gpu_ns as u64)),
            _ => None,
        }
    }

    fn begin_pass(&mut self, label: &'static str) -> wgpu::ComputePass<'static> {
        let mut index = None;
        if let Some(t) = self.timer.as_deref_mut() {
            if t.used + 2 <= Timer::QUERIES {
                index = Some(t.used);
                t.used += 2;
                t.labels.push(label);
            } else {
                t.overflow = true;
            }
        }
        let set = self.timer.as_deref().map(|t| &t.set);
        let timestamp_writes = match (index, set) {
            (Some(i), Some(query_set)) => Some(wgpu::ComputePassTimestampWrites {
                query_set,
                beginning_of_pass_write_index: Some(i),
                end_of_pass_write_index: Some(i + 1),
            }),
            _ => None,
        };
        self.encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("kernels"),
                timestamp_writes,
            })
            .forget_lifetime()
    }

    fn end_pass(&mut self) {
        self.pass = None;
    }

    /// Records one dispatch: uniform `params` at binding 0, `bufs` at bindings 1.. .
    pub fn dispatch(
        &mut self,
        kernel: Kernel,
        wdt: Option<DType>,
        params: &[u32],
        bufs: &[Bind<'_>],
        groups: (u32, u32),
    ) {
        self.dispatch_q(kernel, wdt, None, params, bufs, groups);
    }

    /// As [`dispatch`](Self::dispatch), for a quantized kernel: `quant` = (bits, group).
    pub fn dispatch_q(
        &mut self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        params: &[u32],
        bufs: &[Bind<'_>],
        groups: (u32, u32),
    ) {
        let code = wdt.map_or(0, DType::shader_code);
        self.record(kernel, code, quant, 0, params, bufs, Size::Direct(groups));
    }

    /// As [`dispatch_q`](Self::dispatch_q), with the `ROWS` override constant (rows per
    /// team of the team kernels) set to `rows` (0: the kernel's default).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_q_rows(
        &mut self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        rows: u32,
        params: &[u32],
        bufs: &[Bind<'_>],
        groups: (u32, u32),
    ) {
        let code = wdt.map_or(0, DType::shader_code);
        self.record(
            kernel,
            code,
            quant,
            rows,
            params,
            bufs,
            Size::Direct(groups),
        );
    }

    /// As [`dispatch_q_rows`](Self::dispatch_q_rows), with the grid given as a [`Size`]
    /// (direct, or read on the GPU).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_sized(
        &mut self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
        rows: u32,
        params: &[u32],
        bufs: &[Bind<'_>],
        size: Size<'_>,
    ) {
        let code = wdt.map_or(0, DType::shader_code);
        self.record(kernel, code, quant, rows, params, bufs, size);
    }

    /// As [`dispatch_sized`](Self::dispatch_sized), for a quantized kernel over MXFP4
    /// weights (`WDT` = [`WDT_MXFP4`](super::kernels::WDT_MXFP4), `BITS` 4, `GROUP` 32).
    pub fn dispatch_mxfp4(
        &mut self,
        kernel: Kernel,
        rows: u32,
        params: &[u32],
        bufs: &[Bind<'_>],
        size: Size<'_>,
    ) {
        let quant = Some((4, 32));
        self.record(
            kernel,
            super::kernels::WDT_MXFP4,
            quant,
            rows,
            params,
            bufs,
            size,
        );
    }

    /// Records a dispatch of a pipeline given by its `WDT` code (a dtype's shader code, or
    /// [`WDT_MXFP4`](super::kernels::WDT_MXFP4)), `quant` = (bits, group) and `ROWS`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        kernel: Kernel,
        wdt: u32,
        quant: Option<(u32, u32)>,
        rows: u32,
        params: &[u32],
        bufs: &[Bind<'_>],
        size: Size<'_>,
    ) {
        if skipped(kernel) {
            return;
        }
        let t0 = std::time::Instant::now();
        let pipeline = self.gpu.pipeline_for(kernel, wdt, quant, rows, params);
        // Parameters as immediate data (set below), or in the arena's uniform blocks.
        let immediates = self.gpu.immediates;
        let (block, offset, psize) = if immediates {
            (0, 0, 0)
        } else {
            let (block, offset) = self.params.push(self.gpu, bytemuck::cast_slice(params));
            (block, offset, ((params.len() * 4) as u64).div_ceil(16) * 16)
        };
        let key = BindKey {
            pipeline: Arc::as_ptr(&pipeline) as usize,
            block,
            offset,
            size: psize,
            buffers: bufs
                .iter()
                .map(|b| (b.buffer.clone(), b.offset, b.size))
                .collect(),
        };
        if self.params.bind_groups.len() >= MAX_BIND_GROUPS {
            self.params.bind_groups.clear();
        }
        let gpu = self.gpu;
        let bind_group = match self.params.bind_groups.get(&key) {
            Some(bg) => bg.clone(),
            None => {
                // Only a bind group not seen before needs its entries.
                let mut entries = Vec::with_capacity(bufs.len() + 1);
                if !immediates {
                    entries.push(wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &self.params.blocks[block].0,
                            offset,
                            size: wgpu::BufferSize::new(psize),
                        }),
                    });
                }
                for (i, b) in bufs.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: b.buffer,
                            offset: b.offset,
                            size: b.size.and_then(wgpu::BufferSize::new),
                        }),
                    });
                }
                let bg = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(kernel.name()),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                self.params.bind_groups.insert(key, bg.clone());
                bg
            }
        };
        if profiling() && self.timer.is_some() {
            self.end_pass();
        }
        if self.pass.is_none() {
            self.pass = Some(self.begin_pass(kernel.name()));
        }
        if let Some(pass) = self.pass.as_mut() {
            pass.set_pipeline(&pipeline);
            if immediates {
                pass.set_immediates(0, bytemuck::cast_slice(params));
            }
            pass.set_bind_group(0, &bind_group, &[]);
            match size {
                Size::Direct((x, y)) => pass.dispatch_workgroups(x, y, 1),
                Size::Direct3((x, y, z)) => pass.dispatch_workgroups(x, y, z),
                Size::Indirect(args, offset) => pass.dispatch_workgroups_indirect(args, offset),
            }
        }
        self.record_time += t0.elapsed();
    }

    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        size: u64,
    ) {
        if size > 0 {
            self.end_pass();
            self.encoder
                .copy_buffer_to_buffer(src, src_off, dst, dst_off, size);
        }
    }

    /// Zeroes a whole buffer.
    pub fn clear(&mut self, buf: &wgpu::Buffer) {
        self.end_pass();
        self.encoder.clear_buffer(buf, 0, None);
    }

    /// Submits what was recorded and starts a new encoder (a deferred recorder only ends
    /// the compute pass).
    pub fn submit(&mut self) {
        let t0 = std::time::Instant::now();
        self.end_pass();
        if self.deferred {
            self.record_time += t0.elapsed();
            return;
        }
        let encoder = std::mem::replace(&mut self.encoder, new_encoder(self.gpu));
        self.params.flush(self.gpu);
        self.gpu.queue.submit(Some(encoder.finish()));
        self.record_time += t0.elapsed();
    }

    /// Copies each `(buffer, offset, size)` into the mappable `staging` buffer, submits
    /// everything recorded, waits, and returns the bytes of each part. Timestamps of the
    /// passes since the last read are read back along with them.
    pub fn read(
        &mut self,
        parts: &[(&wgpu::Buffer, u64, u64)],
        staging: &wgpu::Buffer,
    ) -> Result<Vec<Vec<u8>>> {
        let pending = self.read_begin(parts, staging);
        let t0 = std::time::Instant::now();
        let result = pending.wait(self.gpu);
        self.wait_time += t0.elapsed();
        let (out, ns) = result?;
        self.gpu_ns += ns;
        Ok(out)
    }

    /// GPU nanoseconds of the passes read back so far, if the adapter has timestamp
    /// queries and every pass was timed.
    pub fn gpu_ns(&self) -> Option<f64> {
        match &self.timer {
            Some(t) if !t.overflow => Some(self.gpu_ns),
            _ => None,
        }
    }

    /// The first half of [`read`](Self::read): records the copies into `staging` (and the
    /// timestamps), then submits everything recorded and starts mapping `staging`; a
    /// deferred recorder instead finishes its encoder into the returned read, which
    /// [`PendingRead::launch`] submits later.
    pub fn read_begin(
        &mut self,
        parts: &[(&wgpu::Buffer, u64, u64)],
        staging: &wgpu::Buffer,
    ) -> PendingRead {
        let t0 = std::time::Instant::now();
        let mut at = 0u64;
        let mut spans = Vec::with_capacity(parts.len());
        for &(src, offset, size) in parts {
            let size4 = size.div_ceil(4) * 4;
            self.copy(src, offset, staging, at, size4);
            spans.push((at as usize, size as usize));
            at += size4;
        }
        self.end_pass();
        let mut stamps: Option<(usize, usize)> = None;
        if let Some(t) = self.timer.as_deref_mut() {
            let bytes = t.used as u64 * 8;
            if t.used > 0 && at + bytes <= staging.size() {
                self.encoder
                    .resolve_query_set(&t.set, 0..t.used, &t.resolve, 0);
                self.encoder
                    .copy_buffer_to_buffer(&t.resolve, 0, staging, at, bytes);
                stamps = Some((at as usize, bytes as usize));
                at += bytes;
            } else if t.used > 0 {
                t.overflow = true;
            }
            t.used = 0;
        }
        let labels = self
            .timer
            .as_deref_mut()
            .map(|t| std::mem::take(&mut t.labels))
            .unwrap_or_default();
        let layout = (staging.clone(), spans, stamps, labels, at);
        if self.deferred {
            let encoder = std::mem::replace(&mut self.encoder, new_encoder(self.gpu));
            let pending = PendingRead::new(layout, Some(encoder.finish()));
            self.record_time += t0.elapsed();
            pending
        } else {
            self.record_time += t0.elapsed();
            self.submit();
            let mut pending = PendingRead::new(layout, None);
            pending.map();
            pending
        }
    }
}
