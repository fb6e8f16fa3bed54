//! Weights resident on the GPU.

use super::recorder::Bind;
use super::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// A weight matrix `[rows, cols]` in its stored dtype, split by rows into chunks that each
/// fit one storage binding.
#[derive(Debug)]
pub(crate) struct GpuMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// (buffer, first row, row count)
    pub chunks: Vec<(wgpu::Buffer, usize, usize)>,
}

impl GpuMatrix {
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        dtype: DType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self> {
        let row_bytes = (cols * dtype.size()) as u64;
        let mut per_chunk = (gpu.max_binding.saturating_sub(16) / row_bytes.max(1)) as usize;
        // Chunks must start on a 4-byte boundary of the data.
        if dtype.size() == 2 && cols % 2 == 1 {
            per_chunk -= per_chunk % 2;
        }
        if per_chunk == 0 {
            return Err(Error::Gpu(format!(
                "tensor {name}: one row is {row_bytes} bytes, more than the device's largest storage binding ({} bytes)",
                gpu.max_binding
            )));
        }
        let mut chunks = Vec::new();
        let mut r = 0;
        while r < rows {
            let n = per_chunk.min(rows - r);
            let a = r * row_bytes as usize;
            let b = a + n * row_bytes as usize;
            chunks.push((gpu.upload(name, &bytes[a..b]), r, n));
            r += n;
        }
        Ok(GpuMatrix {
            dtype,
            rows,
            cols,
            chunks,
        })
    }
}

/// A small f32 vector (norm weights, biases).
#[derive(Debug)]
pub(crate) struct GpuVec {
    pub buffer: wgpu::Buffer,
}

impl GpuVec {
    pub fn upload(gpu: &Gpu, name: &str, values: &[f32]) -> Self {
        GpuVec {
            buffer: gpu.upload(name, bytemuck::cast_slice(values)),
        }
    }

    pub fn bind(&self) -> Bind<'_> {
        (&self.buffer).into()
    }
}
