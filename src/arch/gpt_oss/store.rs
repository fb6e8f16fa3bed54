//! gpt-oss's experts as a store reads them: one expert's slices of the stacked checkpoint
//! tensors, rearranged into the engine's blob ([`ExpertLayout::swiglu_biased`]).
//!
//! - Hugging Face, unquantized (`gate_up_proj` `[E, H, 2I]`, input-major, gate and up
//!   interleaved by column; `down_proj` `[E, I, H]`): transposed to rows of outputs, gate
//!   and up split. (A transpose per read: pack such a checkpoint once, `pack_experts`, to
//!   stream it.)
//! - Hugging Face MXFP4, as released (`*_blocks` / `*_scales`, output-major, gate and up
//!   interleaved by row): the rows of codes and scales copied as stored, gate rows (even)
//!   and up rows (odd) split; the experts stay 4.25 bits per weight.
//! - mlx-lm (`mlp.experts.{gate,up,down}_proj.{weight,scales,biases}` stacked over the
//!   experts, output-major, MXFP4, affine or float; `.bias` beside them): each
//!   expert's slices copied as stored.
//!
//! Biases (`gate_up_proj_bias` `[E, 2I]` interleaved as the matrix, `down_proj_bias`
//! `[E, H]`; or mlx-lm's per projection) become f32 after each matrix.

use crate::checkpoint::{read_exact_at, Checkpoint, TensorEntry};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::store::{ExpertLayout, ExpertTensor};

use super::super::Names;

/// A float tensor's entry and dtype.
type Float = (TensorEntry, DType);

/// How a layer's experts are stored.
#[derive(Debug)]
enum Kind {
    /// Hugging Face, unquantized, input-major.
    Float {
        gate_up: Float,
        down: Float,
        gate_up_bias: Float,
        down_bias: Float,
    },
    /// Hugging Face MXFP4 (codes and scales of gate_up and of down).
    Mxfp4 {
        gate_up: [TensorEntry; 2],
        down: [TensorEntry; 2],
        gate_up_bias: Float,
        down_bias: Float,
    },
    /// mlx-lm: per projection (gate, up, down) its entries (weight, scales, biases) as
    /// `Checkpoint::matrix_entries` found them, and its bias.
    Mlx {
        parts: Box<[[Option<TensorEntry>; 3]; 3]>,
        biases: [Float; 3],
    },
}

/// The tensors of one MoE layer and how to turn an expert's slices into a blob.
#[derive(Debug)]
pub(crate) struct GptOssLayer {
    ne: usize,
    h: usize,
    i: usize,
    kind: Kind,
}

impl GptOssLayer {
    /// Finds and checks layer `l`'s expert tensors; returns their blob layout.
    pub(crate) fn new(
        ckpt: &Checkpoint,
        names: &Names,
        l: usize,
        (ne, h, i): (usize, usize, usize),
    ) -> Result<(ExpertLayout, Self)> {
        let name = |which: &str| names.fused_experts(l, which);
        let float = |which: &str, shape: &[usize]| -> Result<Float> {
            let v = ckpt.float(&name(which), shape)?;
            Ok((ckpt.entry(&name(which))?.clone(), v.dtype))
        };
        let layer = |kind| GptOssLayer { ne, h, i, kind };
        if names.mlx_stacked_experts(ckpt, l) {
            let mut formats = [WeightFormat::Float(DType::F32); 3];
            let mut parts: [[Option<TensorEntry>; 3]; 3] = Default::default();
            let mut biases = Vec::with_capacity(3);
            let projections = [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)];
            for (k, (proj, rows, cols)) in projections.into_iter().enumerate() {
                let (f, entries) = ckpt.matrix_entries(&name(proj), &[ne], rows, cols)?;
                formats[k] = f;
                parts[k] = entries.map(|e| e.cloned());
                biases.push(float(&format!("{proj}.bias"), &[ne, rows])?);
            }
            let [g, u, d] = [0, 1, 2].map(|k| biases[k].clone());
            let layout = ExpertLayout::swiglu_biased(formats, h, i)?;
            let (parts, biases) = (Box::new(parts), [g, u, d]);
            return Ok((layout, layer(Kind::Mlx { parts, biases })));
        }
        let gate_up_bias = float("gate_up_proj_bias", &[ne, 2 * i])?;
        let down_bias = float("down_proj_bias", &[ne, h])?;
        if ckpt.contains(&name("gate_up_proj_blocks")) {
            if h % 32 != 0 || i % 32 != 0 {
                return Err(Error::Config {
                    path: ckpt.dir().join("config.json"),
                    reason: format!(
                        "layer {l}: MXFP4 experts need hidden_size ({h}) and intermediate_size ({i}) that are multiples of 32"
                    ),
                });
            }
            let raw = |which: &str, shape: &[usize]| -> Result<TensorEntry> {
                ckpt.u8_tensor(&name(which), shape)?;
                Ok(ckpt.entry(&name(which))?.clone())
            };
            let gate_up = [
                raw("gate_up_proj_blocks", &[ne, 2 * i, h / 32, 16])?,
                raw("gate_up_proj_scales", &[ne, 2 * i, h / 32])?,
            ];
            let down = [
                raw("down_proj_blocks", &[ne, h, i / 32, 16])?,
                raw("down_proj_scales", &[ne, h, i / 32])?,
            ];
            let f = WeightFormat::Mxfp4;
            let layout = ExpertLayout::swiglu_biased([f, f, f], h, i)?;
            let kind = Kind::Mxfp4 {
                gate_up,
                down,
                gate_up_bias,
                down_bias,
            };
            return Ok((layout, layer(kind)));
        }
        let gate_up = float("gate_up_proj", &[ne, h, 2 * i])?;
        let down = float("down_proj", &[ne, i, h])?;
        if down.1 != gate_up.1 {
            return Err(Error::Dtype {
                name: name("down_proj"),
                path: ckpt.path_of(&down.0).to_path_buf(),
                found: down.1.to_string(),
                expected: "the dtype of gate_up_proj",
            });
        }
        let f = WeightFormat::Float(gate_up.1);
        let layout = ExpertLayout::swiglu_biased([f, f, f], h, i)?;
        let kind = Kind::Float {
            gate_up,
            down,
            gate_up_bias,
            down_bias,
        };
        Ok((layout, layer(kind)))
    }

    /// Experts in the layer.
    pub(crate) fn experts(&self) -> usize {
        self.ne
    }

    /// Fills `dst` (at least `layout.bytes` long) with expert `e`'s blob.
    pub(crate) fn read(
        &self,
        ckpt: &Checkpoint,
        layout: &ExpertLayout,
        (layer, e): (usize, usize),
        dst: &mut [u8],
    ) -> Result<()> {
        // Expert e's slice of a tensor stacked over the experts.
        let slice = |t: &TensorEntry| -> Result<Vec<u8>> {
            let len = t.len / self.ne;
            let mut buf = vec![0u8; len];
            let f = &ckpt.files()[t.file];
            let offset = t.offset + (e * len) as u64;
            read_exact_at(&f.file, &mut buf, offset).map_err(|err| Error::ExpertRead {
                layer,
                expert: e,
                reason: format!(
                    "reading {len} bytes at offset {offset} of {}",
                    f.path.display()
                ),
                cause: Some(Box::new(err)),
            })?;
            Ok(buf)
        };
        let floats = |t: &Float| -> Result<Vec<f32>> { Ok(t.1.decode(&slice(&t.0)?)) };
        let (h, i) = (self.h, self.i);
        let [g, u, d] = &layout.tensors;
        let (gate_bias, up_bias, down_bias) = match &self.kind {
            Kind::Mxfp4 {
                gate_up,
                down,
                gate_up_bias,
                down_bias,
            } => {
                // Rows of H/2 code bytes and H/32 scale bytes, gate and up interleaved.
                let (codes, scales) = (slice(&gate_up[0])?, slice(&gate_up[1])?);
                for (t, parity) in [(g, 0), (u, 1)] {
                    let parts = t.format.parts(t.rows, t.cols);
                    let (rc, rs) = (h / 2, h / 32);
                    for k in 0..i {
                        let r = 2 * k + parity;
                        dst[t.offset + k * rc..t.offset + (k + 1) * rc]
                            .copy_from_slice(&codes[r * rc..(r + 1) * rc]);
                        let s0 = t.offset + parts.scales.0 + k * rs;
                        dst[s0..s0 + rs].copy_from_slice(&scales[r * rs..(r + 1) * rs]);
                    }
                }
                let parts = d.format.parts(d.rows, d.cols);
                let (codes, scales) = (slice(&down[0])?, slice(&down[1])?);
                dst[d.offset..d.offset + codes.len()].copy_from_slice(&codes);
                let s0 = d.offset + parts.scales.0;
                dst[s0..s0 + scales.len()].copy_from_slice(&scales);
                let gub = floats(gate_up_bias)?;
                let (gb, ub) = deinterleave(&gub);
                (gb, ub, floats(down_bias)?)
            }
            Kind::Float {
                gate_up,
                down,
                gate_up_bias,
                down_bias,
            } => {
                // [H, 2I] -> gate, up [I, H]; [I, H] -> down [H, I].
                let es = gate_up.1.size();
                let gu = slice(&gate_up.0)?;
                for (t, parity) in [(g, 0), (u, 1)] {
                    for k in 0..i {
                        for r in 0..h {
                            let src = (r * 2 * i + 2 * k + parity) * es;
                            let at = t.offset + (k * h + r) * es;
                            dst[at..at + es].copy_from_slice(&gu[src..src + es]);
                        }
                    }
                }
                let dn = slice(&down.0)?;
                for r in 0..h {
                    for c in 0..i {
                        let src = (c * h + r) * es;
                        let at = d.offset + (r * i + c) * es;
                        dst[at..at + es].copy_from_slice(&dn[src..src + es]);
                    }
                }
                let gub = floats(gate_up_bias)?;
                let (gb, ub) = deinterleave(&gub);
                (gb, ub, floats(down_bias)?)
            }
            Kind::Mlx { parts, biases } => {
                for (t, entries) in layout.tensors.iter().zip(parts.iter()) {
                    let p = t.format.parts(t.rows, t.cols);
                    for (entry, at) in entries.iter().zip([0, p.scales.0, p.biases.0]) {
                        if let Some(entry) = entry {
                            let bytes = slice(entry)?;
                            let at = t.offset + at;
                            dst[at..at + bytes.len()].copy_from_slice(&bytes);
                        }
                    }
                }
                let [gb, ub, db] = biases;
                (floats(gb)?, floats(ub)?, floats(db)?)
            }
        };
        for (t, values) in [(g, gate_bias), (u, up_bias), (d, down_bias)] {
            put_bias(dst, t, &values);
        }
        Ok(())
    }
}

/// Even and odd entries of an interleaved gate/up vector.
fn deinterleave(v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    (
        v.iter().step_by(2).copied().collect(),
        v.iter().skip(1).step_by(2).copied().collect(),
    )
}

/// Writes a projection's bias (f32) where its layout puts it.
fn put_bias(dst: &mut [u8], t: &ExpertTensor, values: &[f32]) {
    if let Some(o) = t.bias {
        for (j, v) in values.iter().enumerate() {
            dst[o + 4 * j..o + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}
