//! How a layer's experts are laid out in a cache slot and which kernels read them
//! (`ExpertKernels`: the gate/up and down slots by weight format, the epilogue of biases
//! and activation), checked against the store's layout once per layer pass.

use crate::arch::ExpertActivation;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::gpu::kernels;
use crate::gpu::params::{EXPERT_BIAS, EXPERT_CLAMPED};
use crate::store::{ExpertLayout, ExpertTensor};

/// Where an expert's gate and up projections sit in a cache slot, by weight format.
#[derive(Debug, Clone, Copy)]
pub(super) enum GateUpSlot {
    /// Float weights ([`Kernel::MoeGateUp`](kernels::Kernel::MoeGateUp)): element offsets of gate and up, elements per
    /// slot.
    Float {
        dtype: DType,
        gate_off: u32,
        up_off: u32,
        slot_elems: u32,
    },
    /// Quantized weights ([`Kernel::MoeGateUpQ`](kernels::Kernel::MoeGateUpQ), [`Kernel::MoeGateUpQmm`](kernels::Kernel::MoeGateUpQmm)): words per slot
    /// and the word offsets of gate's and up's codes, scales and biases.
    Quant {
        scale_dtype: DType,
        quant: (u32, u32),
        /// The `WDT` code of a format other than MLX affine: MXFP4
        /// ([`kernels::WDT_MXFP4`]) or FP8 ([`kernels::WDT_FP8`]); `scale_dtype` then unused.
        code: Option<u32>,
        slot_words: u32,
        gate: [u32; 3],
        up: [u32; 3],
    },
}

impl GateUpSlot {
    /// (bits, group size) of quantized weights.
    pub fn quant(&self) -> Option<(u32, u32)> {
        match self {
            GateUpSlot::Float { .. } => None,
            GateUpSlot::Quant { quant, .. } => Some(*quant),
        }
    }
}

/// Where an expert's down projection sits in a cache slot, by weight format.
#[derive(Debug, Clone, Copy)]
pub(super) enum DownSlot {
    /// Float weights ([`Kernel::MoeDown`](kernels::Kernel::MoeDown)): element offset of down, elements per slot.
    Float {
        dtype: DType,
        down_off: u32,
        slot_elems: u32,
    },
    /// Quantized weights ([`Kernel::MoeDownQ`](kernels::Kernel::MoeDownQ), [`Kernel::MoeDownQmm`](kernels::Kernel::MoeDownQmm)): words per slot and
    /// the word offsets of down's codes, scales and biases.
    Quant {
        scale_dtype: DType,
        quant: (u32, u32),
        /// The `WDT` code of a format other than MLX affine: MXFP4
        /// ([`kernels::WDT_MXFP4`]) or FP8 ([`kernels::WDT_FP8`]); `scale_dtype` then unused.
        code: Option<u32>,
        slot_words: u32,
        down: [u32; 3],
    },
}

impl DownSlot {
    /// (bits, group size) of quantized weights.
    pub fn quant(&self) -> Option<(u32, u32)> {
        match self {
            DownSlot::Float { .. } => None,
            DownSlot::Quant { quant, .. } => Some(*quant),
        }
    }

    /// Whether the weights are 2- to 6-bit affine codes, which can be dotted with h in the
    /// quad 8+8-bit layout.
    pub(super) fn reads_quads(&self) -> bool {
        matches!(self, DownSlot::Quant { quant: (bits, _), code: None, .. }
            if kernels::reads_q8_activations(*bits))
    }
}

/// The biases and activation of an expert's projections: the kernels' `act` word, the
/// word offsets of the gate, up and down biases inside a slot, alpha and limit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Epilogue {
    pub act: u32,
    pub gate_bias: u32,
    pub up_bias: u32,
    pub down_bias: u32,
    pub alpha: f32,
    pub limit: f32,
}

/// Checks that the expert kernels run experts of layer `l` laid out as `lay` (at
/// `Model::build`, and again where the kernels are chosen): an
/// [`Error::InvalidArgument`] naming what they do not take.
pub(crate) fn check_layout(l: usize, lay: &ExpertLayout) -> Result<()> {
    let [g, u, _] = &lay.tensors;
    if g.format != u.format {
        return Err(Error::InvalidArgument(format!(
            "layer {l}: expert gate ({}) and up ({}) projections in different formats are not supported",
            g.format, u.format
        )));
    }
    // The FP8 kernels read rows in blocks of 32 codes (as every quantized format's).
    if let Some(t) = lay
        .tensors
        .iter()
        .find(|t| t.format == WeightFormat::Fp8Block && t.cols % 32 != 0)
    {
        return Err(Error::InvalidArgument(format!(
            "layer {l}: FP8 experts of {} x {}: the GPU kernels need FP8 expert rows of a multiple of 32 values",
            t.rows, t.cols
        )));
    }
    Ok(())
}

/// How a layer's experts are computed, from their layout in a cache slot.
pub(super) struct ExpertKernels {
    pub gate_up: GateUpSlot,
    pub down: DownSlot,
    pub epilogue: Epilogue,
    /// Width of an expert (rows of gate and up).
    pub inter: usize,
    /// The gate's weight format, which says how the gate/up kernel reads x
    /// ([`Pass::expert_x_layout`]).
    pub gate_format: WeightFormat,
}

impl ExpertKernels {
    pub(super) fn new(
        l: usize,
        lay: &ExpertLayout,
        slot_bytes: u64,
        activation: ExpertActivation,
    ) -> Result<Self> {
        check_layout(l, lay)?;
        let [g, u, d] = &lay.tensors;
        let slot_words = (slot_bytes / 4) as u32;
        // Word offsets of a quantized tensor's codes, scales and biases in a slot.
        let q_offsets = |t: &ExpertTensor| -> [u32; 3] {
            let parts = t.format.parts(t.rows, t.cols);
            [
                (t.offset / 4) as u32,
                ((t.offset + parts.scales.0) / 4) as u32,
                ((t.offset + parts.biases.0) / 4) as u32,
            ]
        };
        let gate_up = match (g.format, u.format) {
            (WeightFormat::Float(a), WeightFormat::Float(b)) if a == b => {
                let es = a.size();
                GateUpSlot::Float {
                    dtype: a,
                    gate_off: (g.offset / es) as u32,
                    up_off: (u.offset / es) as u32,
                    slot_elems: (slot_bytes as usize / es) as u32,
                }
            }
            (WeightFormat::Affine(a), WeightFormat::Affine(b)) if a == b => GateUpSlot::Quant {
                scale_dtype: a.scale_dtype,
                quant: (a.bits, a.group_size),
                code: None,
                slot_words,
                gate: q_offsets(g),
                up: q_offsets(u),
            },
            (a, b) if a == b && matches!(a, WeightFormat::Mxfp4 | WeightFormat::Fp8Block) => {
                let (code, quant) = super::linear::quant_constants(a);
                GateUpSlot::Quant {
                    scale_dtype: DType::F32,
                    quant: quant.unwrap_or((8, 128)),
                    code: Some(code),
                    slot_words,
                    gate: q_offsets(g),
                    up: q_offsets(u),
                }
            }
            (a, b) => {
                return Err(Error::InvalidArgument(format!(
                    "layer {l}: expert gate ({a}) and up ({b}) projections in different formats are not supported"
                )))
            }
        };
        let down = match d.format {
            WeightFormat::Float(a) => {
                let es = a.size();
                DownSlot::Float {
                    dtype: a,
                    down_off: (d.offset / es) as u32,
                    slot_elems: (slot_bytes as usize / es) as u32,
                }
            }
            WeightFormat::Affine(q) => DownSlot::Quant {
                scale_dtype: q.scale_dtype,
                quant: (q.bits, q.group_size),
                code: None,
                slot_words,
                down: q_offsets(d),
            },
            f @ (WeightFormat::Mxfp4 | WeightFormat::Fp8Block) => {
                let (code, quant) = super::linear::quant_constants(f);
                DownSlot::Quant {
                    scale_dtype: DType::F32,
                    quant: quant.unwrap_or((8, 128)),
                    code: Some(code),
                    slot_words,
                    down: q_offsets(d),
                }
            }
        };
        let mut epilogue = Epilogue::default();
        match (g.bias, u.bias, d.bias) {
            (Some(gb), Some(ub), Some(db)) => {
                epilogue.act |= EXPERT_BIAS;
                epilogue.gate_bias = (gb / 4) as u32;
                epilogue.up_bias = (ub / 4) as u32;
                epilogue.down_bias = (db / 4) as u32;
            }
            (None, None, None) => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "layer {l}: expert biases on some projections only are not supported"
                )))
            }
        }
        match activation {
            ExpertActivation::SwiGlu => {}
            ExpertActivation::ClampedSwiGlu { alpha, limit } => {
                epilogue.act |= EXPERT_CLAMPED;
                epilogue.alpha = alpha;
                epilogue.limit = limit;
            }
        }
        Ok(ExpertKernels {
            gate_up,
            down,
            epilogue,
            inter: g.rows,
            gate_format: g.format,
        })
    }
}
