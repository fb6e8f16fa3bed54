//! The byte layout of one expert: what tensors it has and where they sit in its blob.

use crate::dtype::DType;

/// Which projection of an expert a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpertRole {
    /// `gate_proj`, `[moe_intermediate, hidden]`.
    Gate,
    /// `up_proj`, `[moe_intermediate, hidden]`.
    Up,
    /// `down_proj`, `[hidden, moe_intermediate]`.
    Down,
}

/// One tensor inside an expert blob.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpertTensor {
    /// Which projection it is.
    pub role: ExpertRole,
    /// Element type.
    pub dtype: DType,
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
    /// Byte offset in the blob (a multiple of 16).
    pub offset: usize,
}

impl ExpertTensor {
    /// Bytes of the tensor.
    pub fn len(&self) -> usize {
        self.rows * self.cols * self.dtype.size()
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Layout of one expert's bytes, identical for all experts of a model.
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
    /// The layout of a SwiGLU expert with weights in `dtype`: gate `[inter, hidden]`, up
    /// `[inter, hidden]`, down `[hidden, inter]`, each starting on a 16-byte boundary.
    pub fn swiglu(dtype: DType, hidden: usize, inter: usize) -> Self {
        let mut offset = 0;
        let mut next = |role, rows, cols| {
            let t = ExpertTensor {
                role,
                dtype,
                rows,
                cols,
                offset,
            };
            offset = align_up(offset + t.len(), BLOB_ALIGN);
            t
        };
        let tensors = [
            next(ExpertRole::Gate, inter, hidden),
            next(ExpertRole::Up, inter, hidden),
            next(ExpertRole::Down, hidden, inter),
        ];
        ExpertLayout {
            tensors,
            bytes: offset,
        }
    }

    /// The tensor of a role.
    pub fn tensor(&self, role: ExpertRole) -> &ExpertTensor {
        match role {
            ExpertRole::Gate => &self.tensors[0],
            ExpertRole::Up => &self.tensors[1],
            ExpertRole::Down => &self.tensors[2],
        }
    }

    /// The weight dtype (all three tensors share it).
    pub fn dtype(&self) -> DType {
        self.tensors[0].dtype
    }
}
