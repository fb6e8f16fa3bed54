//! The byte layout of one expert: what tensors it has and where they sit in its blob.

use crate::dtype::DType;
use crate::error::Result;
use crate::format::WeightFormat;

/// Which projection of an expert a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExpertRole {
    /// `gate_proj`, `[moe_intermediate, hidden]`.
    Gate,
    /// `up_proj`, `[moe_intermediate, hidden]`.
    Up,
    /// `down_proj`, `[hidden, moe_intermediate]`.
    Down,
}

/// One weight matrix inside an expert blob.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpertTensor {
    /// Which projection it is.
    pub role: ExpertRole,
    /// How it is stored (float, or quantized with scales and biases after the weights).
    pub format: WeightFormat,
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
    /// Byte offset in the blob (a multiple of 16).
    pub offset: usize,
    /// Byte offset in the blob (a multiple of 16) of the projection's bias, `rows` f32
    /// values added to its outputs (gpt-oss's experts), if it has one.
    pub bias: Option<usize>,
}

impl ExpertTensor {
    /// Bytes of the tensor (all its parts).
    pub fn len(&self) -> usize {
        self.format.stored_bytes(self.rows, self.cols)
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor's bytes within a blob.
    pub fn bytes<'a>(&self, blob: &'a [u8]) -> &'a [u8] {
        &blob[self.offset..self.offset + self.len()]
    }

    /// Bytes of the bias (`rows` f32 values), if the tensor has one.
    pub fn bias_bytes<'a>(&self, blob: &'a [u8]) -> Option<&'a [u8]> {
        self.bias.map(|o| &blob[o..o + 4 * self.rows])
    }
}

/// Layout of one expert's bytes, identical for all experts of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpertLayout {
    /// Gate, up and down, in that order.
    pub tensors: [ExpertTensor; 3],
    /// Total bytes of one expert blob (a multiple of 16).
    pub bytes: usize,
}

/// Alignment of tensors inside a blob and of the blob size.
pub(crate) const BLOB_ALIGN: usize = 16;

pub(crate) fn align_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

impl ExpertLayout {
    /// A SwiGLU expert: gate `[inter, hidden]`, up `[inter, hidden]`, down `[hidden, inter]`
    /// in the given formats, each starting on a 16-byte boundary.
    pub fn swiglu_with(formats: [WeightFormat; 3], hidden: usize, inter: usize) -> Result<Self> {
        formats[0].check(hidden)?;
        formats[1].check(hidden)?;
        formats[2].check(inter)?;
        Ok(Self::place(formats, hidden, inter, false))
    }

    /// [`swiglu_with`](Self::swiglu_with) with a bias after each matrix (f32, one per
    /// output row, 16-byte aligned), as gpt-oss's experts have.
    pub fn swiglu_biased(formats: [WeightFormat; 3], hidden: usize, inter: usize) -> Result<Self> {
        formats[0].check(hidden)?;
        formats[1].check(hidden)?;
        formats[2].check(inter)?;
        Ok(Self::place(formats, hidden, inter, true))
    }

    fn place(formats: [WeightFormat; 3], hidden: usize, inter: usize, biased: bool) -> Self {
        let mut offset = 0;
        let mut next = |role, format, rows, cols| {
            let mut t = ExpertTensor {
                role,
                format,
                rows,
                cols,
                offset,
                bias: None,
            };
            offset = align_up(offset + t.len(), BLOB_ALIGN);
            if biased {
                t.bias = Some(offset);
                offset = align_up(offset + 4 * rows, BLOB_ALIGN);
            }
            t
        };
        let [fg, fu, fd] = formats;
        let tensors = [
            next(ExpertRole::Gate, fg, inter, hidden),
            next(ExpertRole::Up, fu, inter, hidden),
            next(ExpertRole::Down, fd, hidden, inter),
        ];
        ExpertLayout {
            tensors,
            bytes: offset,
        }
    }

    /// A SwiGLU expert with all three matrices in float `dtype`.
    pub fn swiglu(dtype: DType, hidden: usize, inter: usize) -> Self {
        let f = WeightFormat::Float(dtype);
        Self::place([f, f, f], hidden, inter, false)
    }

    /// Whether the projections carry biases.
    pub fn has_biases(&self) -> bool {
        self.tensors.iter().any(|t| t.bias.is_some())
    }

    /// The tensor of a role.
    pub fn tensor(&self, role: ExpertRole) -> &ExpertTensor {
        match role {
            ExpertRole::Gate => &self.tensors[0],
            ExpertRole::Up => &self.tensors[1],
            ExpertRole::Down => &self.tensors[2],
        }
    }
}
