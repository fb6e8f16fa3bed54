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

/// How a matrix `[rows, cols]` stored in `format` lies on a device whose storage bindings
/// hold `max_binding` bytes: the format its buffers hold (FP8 rows whose width is not a
/// multiple of 32 are decoded to f32: the FP8 kernels read blocks of 32 codes) and its
/// chunks of rows (first row, count), each one buffer that fits one binding. Shared by
/// [`GpuMatrix::upload`] and the memory plan, so the two cannot disagree.
pub(crate) fn matrix_layout(
    name: &str,
    format: WeightFormat,
    rows: usize,
    cols: usize,
    limits: (u64, &'static str),
) -> Result<(WeightFormat, Vec<(usize, usize)>)> {
    let (max_binding, limit_name) = limits;
    let format = if format == WeightFormat::Fp8Block && cols % 32 != 0 {
        WeightFormat::Float(crate::dtype::DType::F32)
    } else {
        format
    };
    let row_bytes = format.stored_bytes(1, cols).max(1) as u64;
    // Rows per chunk: as many as fit one binding (parts are 16-byte aligned, hence the
    // slack), even for 16-bit floats with an odd column count so that every chunk starts
    // on a whole word.
    let mut per_chunk =
        usize::try_from(max_binding.saturating_sub(64) / row_bytes).unwrap_or(usize::MAX);
    if let WeightFormat::Float(d) = format {
        if d.size() == 2 && cols % 2 == 1 {
            per_chunk -= per_chunk % 2;
        }
    }
    // FP8 block scales cover 128 rows: chunks start on a row of blocks.
    if format == WeightFormat::Fp8Block {
        per_chunk -= per_chunk % crate::format::FP8_BLOCK;
    }
    if per_chunk == 0 {
        return Err(Error::DeviceLimit {
            what: format!("one row of tensor {name}"),
            requested: row_bytes,
            limit_name,
            limit: max_binding,
        });
    }
    let mut chunks = Vec::with_capacity(rows.div_ceil(per_chunk));
    let mut r = 0;
    while r < rows {
        let n = per_chunk.min(rows - r);
        chunks.push((r, n));
        r += n;
    }
    Ok((format, chunks))
}

impl GpuMatrix {
    pub fn upload(gpu: &Gpu, name: &str, m: &MatrixView<'_>) -> Result<Self> {
        let (rows, cols) = (m.rows, m.cols);
        let (format, layout) = matrix_layout(
            name,
            m.format,
            rows,
            cols,
            super::binding_limit(&gpu.limits),
        )?;
        if format != m.format {
            // FP8 rows the kernels cannot read: decoded to f32.
            let bytes: Vec<u8> = m.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect();
            let f = MatrixView {
                format,
                rows,
                cols,
                weight: &bytes,
                scales: &[],
                biases: &[],
            };
            return Self::upload(gpu, name, &f);
        }
        let chunks = layout
            .into_iter()
            .map(|(r, n)| (gpu.upload(name, &m.rows_bytes(r, n)), r, n))
            .collect();
        Ok(GpuMatrix {
            format,
            rows,
            cols,
            chunks,
        })
    }

    /// Bytes of the matrix's buffers on the GPU.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.0.size()).sum()
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
