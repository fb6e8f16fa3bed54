//! Records kernel dispatches into a command encoder, with their uniform parameters packed
//! into a reusable arena, and submits them.

use super::kernels::Kernel;
use super::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};

const BLOCK: u64 = 64 * 1024;

/// Uniform parameter blocks owned by one session, reused every submit.
#[derive(Debug, Default)]
pub(crate) struct ParamArena {
    blocks: Vec<(wgpu::Buffer, Vec<u8>)>,
    block: usize,
    offset: u64,
}

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

    fn flush(&mut self, gpu: &Gpu) {
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

/// Splits a count of workgroups into a 2-D grid within the 65535-per-dimension limit.
pub(crate) fn grid_of(n: u32) -> (u32, u32) {
    let x = n.clamp(1, 65535);
    (x, n.div_ceil(x).max(1))
}

/// Records one stretch of GPU work between submits.
pub(crate) struct Recorder<'a> {
    pub gpu: &'a Gpu,
    encoder: wgpu::CommandEncoder,
    params: &'a mut ParamArena,
    pending: usize,
}

impl<'a> Recorder<'a> {
    pub fn new(gpu: &'a Gpu, params: &'a mut ParamArena) -> Self {
        let encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        Recorder {
            gpu,
            encoder,
            params,
            pending: 0,
        }
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
        let pipeline = self.gpu.pipeline(kernel, wdt);
        let (block, offset) = self.params.push(self.gpu, bytemuck::cast_slice(params));
        let psize = ((params.len() * 4) as u64).div_ceil(16) * 16;
        let mut entries = Vec::with_capacity(bufs.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.params.blocks[block].0,
                offset,
                size: wgpu::BufferSize::new(psize),
            }),
        });
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
        let bind_group = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.name()),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.name()),
                timestamp_writes: None,
            });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
        drop(pass);
        self.pending += 1;
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
            self.encoder
                .copy_buffer_to_buffer(src, src_off, dst, dst_off, size);
            self.pending += 1;
        }
    }

    /// Submits what was recorded and starts a new encoder.
    pub fn submit(&mut self) {
        let encoder = std::mem::replace(
            &mut self.encoder,
            self.gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                }),
        );
        self.params.flush(self.gpu);
        self.gpu.queue.submit(Some(encoder.finish()));
        self.pending = 0;
    }

    /// Copies each `(buffer, offset, size)` into the mappable `staging` buffer, submits
    /// everything recorded, waits, and returns the bytes of each part.
    pub fn read(
        &mut self,
        parts: &[(&wgpu::Buffer, u64, u64)],
        staging: &wgpu::Buffer,
    ) -> Result<Vec<Vec<u8>>> {
        let mut at = 0u64;
        let mut spans = Vec::with_capacity(parts.len());
        for &(src, offset, size) in parts {
            let size4 = size.div_ceil(4) * 4;
            self.copy(src, offset, staging, at, size4);
            spans.push((at as usize, size as usize));
            at += size4;
        }
        self.submit();
        if at == 0 {
            return Ok(vec![Vec::new(); parts.len()]);
        }
        let slice = staging.slice(0..at);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("mapping a readback buffer: {e}"))),
            Err(_) => return Err(Error::Gpu("readback callback was dropped".into())),
        }
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
            spans
                .iter()
                .map(|&(a, n)| view[a..a + n].to_vec())
                .collect()
        };
        staging.unmap();
        self.gpu.check()?;
        Ok(out)
    }
}
