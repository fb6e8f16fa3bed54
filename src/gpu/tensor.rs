//! Weights resident on the GPU.

use super::recorder::Bind;
use super::Gpu;
use crate::checkpoint::MatrixView;
use crate::error::{Error, Result};
use crate::format::WeightFormat;

/// A weight matrix `[rows, cols]` in its stored format (float, or quantized with its
/// scales and biases), split by rows into chunks that each fit one storage binding. Each
/// chunk's buffer holds its rows laid out as [`WeightFormat::parts`] describes.
#[derive(Debug)]
pub(crate) struct GpuMatrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    /// (buffer, first row, row count)
    pub chunks: Vec<(wgpu::Buffer, usize, usize)>,
}

impl GpuMatrix {
    pub fn upload(gpu: &Gpu, name: &str, m: &MatrixView<'_>) -> Result<Self> {
        let (rows, cols) = (m.rows, m.cols);
        // The FP8 kernels read rows in blocks of 32 codes: other widths are decoded to f32.
        if m.format == WeightFormat::Fp8Block && cols % 32 != 0 {
            let bytes: Vec<u8> = m.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect();
            let f = MatrixView {
                format: WeightFormat::Float(crate::dtype::DType::F32),
                rows,
                cols,
                weight: &bytes,
                scales: &[],
                biases: &[],
            };
            return Self::upload(gpu, name, &f);
        }
        let row_bytes = m.format.stored_bytes(1, cols).max(1) as u64;
        // Rows per chunk: as many as fit one binding (parts are 16-byte aligned, hence
        // the slack), even for 16-bit floats with an odd column count so that every chunk
        // starts on a whole word.
        let mut per_chunk = (gpu.max_binding.saturating_sub(64) / row_bytes) as usize;
        if let WeightFormat::Float(d) = m.format {
            if d.size() == 2 && cols % 2 == 1 {
                per_chunk -= per_chunk % 2;
            }
        }
        // FP8 block scales cover 128 rows: chunks start on a row of blocks.
        if m.format == WeightFormat::Fp8Block {
            per_chunk -= per_chunk % crate::format::FP8_BLOCK;
        }
        if per_chunk == 0 {
            return Err(Error::DeviceLimit {
                what: format!("one row of tensor {name}"),
                requested: row_bytes,
                limit_name: "largest storage binding",
                limit: gpu.max_binding,
            });
        }
        let mut chunks = Vec::new();
        let mut r = 0;
        while r < rows {
            let n = per_chunk.min(rows - r);
            chunks.push((gpu.upload(name, &m.rows_bytes(r, n)), r, n));
            r += n;
        }
        Ok(GpuMatrix {
            format: m.format,
            rows,
            cols,
            chunks,
        })
    }

    /// Bytes of the matrix on the GPU.
    pub fn bytes(&self) -> u64 {
        self.format.stored_bytes(self.rows, self.cols) as u64
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
