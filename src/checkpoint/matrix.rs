//! Weight matrices as a checkpoint stores them ([`MatrixView`]): float, MLX affine-quantized,
//! FP8 with block scales, MXFP4; found by prefix and shape-checked.

use super::*;

/// A weight matrix as stored: float, or MLX-quantized (`P.weight` u32 codes, `P.scales`,
/// `P.biases`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MatrixView<'a> {
    /// How it is stored.
    pub format: WeightFormat,
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
    /// The weights (floats, or packed codes), row-major.
    pub weight: &'a [u8],
    /// Scales, `[rows, cols / group]` (empty for float).
    pub scales: &'a [u8],
    /// Biases, `[rows, cols / group]` (empty for float).
    pub biases: &'a [u8],
}

impl MatrixView<'_> {
    /// Bytes of rows `r0..r0 + n` laid out as [`WeightFormat::stored_bytes`] describes
    /// (weights, then 16-byte aligned scales and biases).
    pub fn rows_bytes(&self, r0: usize, n: usize) -> Vec<u8> {
        let parts = self.format.parts(n, self.cols);
        let mut out = vec![0u8; parts.total];
        if self.format == WeightFormat::Fp8Block {
            // Block scales cover 128 rows: a slice starts on a block (r0 a multiple of 128).
            let b = crate::format::FP8_BLOCK;
            let bc = self.cols.div_ceil(b);
            let wrow = self.cols;
            out[..parts.weight_bytes].copy_from_slice(&self.weight[r0 * wrow..(r0 + n) * wrow]);
            let (s0, s1) = (r0 / b * bc * 4, (r0 + n).div_ceil(b) * bc * 4);
            out[parts.scales.0..parts.scales.0 + parts.scales.1]
                .copy_from_slice(&self.scales[s0..s1]);
            return out;
        }
        let wrow = self.weight.len() / self.rows.max(1);
        out[..parts.weight_bytes].copy_from_slice(&self.weight[r0 * wrow..(r0 + n) * wrow]);
        if parts.scales.1 > 0 {
            let srow = self.scales.len() / self.rows.max(1);
            out[parts.scales.0..parts.scales.0 + parts.scales.1]
                .copy_from_slice(&self.scales[r0 * srow..(r0 + n) * srow]);
        }
        if parts.biases.1 > 0 {
            let brow = self.biases.len() / self.rows.max(1);
            out[parts.biases.0..parts.biases.0 + parts.biases.1]
                .copy_from_slice(&self.biases[r0 * brow..(r0 + n) * brow]);
        }
        out
    }

    /// The matrix decoded to f32 (dequantized if quantized).
    pub fn to_f32(&self) -> Vec<f32> {
        self.format
            .decode(&self.rows_bytes(0, self.rows), self.rows, self.cols)
    }
}

impl Checkpoint {
    fn bytes_of(&self, e: &TensorEntry) -> &[u8] {
        let start = e.offset as usize;
        &self.files[e.file].map[start..start + e.len]
    }

    /// The bytes of the U8 tensor `name`, checked against `expected` (MXFP4 blocks and
    /// scales).
    pub(crate) fn u8_tensor(&self, name: &str, expected: &[usize]) -> Result<&[u8]> {
        let e = self.entry(name)?;
        if e.shape != expected {
            return Err(Error::Shape {
                name: name.to_string(),
                path: self.path_of(e).to_path_buf(),
                expected: expected.to_vec(),
                found: e.shape.clone(),
            });
        }
        if e.dtype != safetensors::Dtype::U8 {
            return Err(Error::Dtype {
                name: name.to_string(),
                path: self.path_of(e).to_path_buf(),
                found: format!("{:?}", e.dtype),
                expected: "U8",
            });
        }
        Ok(self.bytes_of(e))
    }

    /// The format of the matrix `prefix` (`prefix.weight`, and `prefix.scales` /
    /// `prefix.biases` when MLX-quantized) with `lead` leading dimensions (e.g. `[E]` for
    /// stacked experts) and `[rows, cols]` matrices, inferring bits and group size from the
    /// shapes. Returns the format and the entries (weight, scales, biases).
    pub(crate) fn matrix_entries(
        &self,
        prefix: &str,
        lead: &[usize],
        rows: usize,
        cols: usize,
    ) -> Result<(WeightFormat, [Option<&TensorEntry>; 3])> {
        let wname = format!("{prefix}.weight");
        let sname = format!("{prefix}.scales");
        let w = self.entry(&wname)?;
        let path = self.path_of(w).to_path_buf();
        let with_lead =
            |tail: &[usize]| -> Vec<usize> { lead.iter().chain(tail).copied().collect() };
        let shape_err = |name: &str, expected: Vec<usize>, found: &[usize]| Error::Shape {
            name: name.to_string(),
            path: path.clone(),
            expected,
            found: found.to_vec(),
        };
        if w.dtype == safetensors::Dtype::F8_E4M3 {
            return self.fp8_entries(prefix, lead, rows, cols, w);
        }
        let Some(s) = self.tensors.get(&sname) else {
            // Plain float matrix.
            if w.shape != with_lead(&[rows, cols]) {
                return Err(shape_err(&wname, with_lead(&[rows, cols]), &w.shape));
            }
            let dtype = DType::from_safetensors(w.dtype).ok_or_else(|| Error::Dtype {
                name: wname.clone(),
                path: path.clone(),
                found: format!("{:?}", w.dtype),
                expected: "F32, F16 or BF16 (or U32 with .scales and .biases)",
            })?;
            return Ok((WeightFormat::Float(dtype), [Some(w), None, None]));
        };
        let bname = format!("{prefix}.biases");
        if s.dtype == safetensors::Dtype::U8 && !self.tensors.contains_key(&bname) {
            return self.mxfp4_entries(prefix, lead, rows, cols, w, s);
        }
        let b = self.entry(&bname)?;
        if w.dtype != safetensors::Dtype::U32 {
            return Err(Error::Dtype {
                name: wname,
                path,
                found: format!("{:?}", w.dtype),
                expected: "U32 (packed codes of a quantized matrix)",
            });
        }
        let n = lead.len();
        let words = match w.shape.get(n + 1) {
            Some(&words)
                if w.shape.len() == n + 2 && w.shape[..n] == *lead && w.shape[n] == rows =>
            {
                words
            }
            _ => return Err(shape_err(&wname, with_lead(&[rows, cols / 8]), &w.shape)),
        };
        let groups = match s.shape.get(n + 1) {
            Some(&g) if s.shape.len() == n + 2 && s.shape[..n] == *lead && s.shape[n] == rows => g,
            _ => return Err(shape_err(&sname, with_lead(&[rows, cols / 64]), &s.shape)),
        };
        if b.shape != s.shape {
            return Err(shape_err(&bname, s.shape.clone(), &b.shape));
        }
        let bad = |reason: String| Error::Quantization {
            name: wname.clone(),
            path: path.clone(),
            reason,
        };
        // `cols` is the caller's and `words` the file's: neither may divide by zero or
        // overflow (a `[0, 2^60]` tensor holds no bytes yet names a huge width).
        let bits = words
            .checked_mul(32)
            .filter(|&w| cols != 0 && groups != 0 && cols % groups == 0 && w % cols == 0)
            .map(|w| w / cols)
            .ok_or_else(|| {
                bad(format!(
                    "{words} words and {groups} groups per row do not describe a quantization of {cols} columns"
                ))
            })?;
        let bits = u32::try_from(bits).unwrap_or(u32::MAX);
        let group = u32::try_from(cols / groups).unwrap_or(u32::MAX);
        let sdt = DType::from_safetensors(s.dtype).ok_or_else(|| Error::Dtype {
            name: sname.clone(),
            path: path.clone(),
            found: format!("{:?}", s.dtype),
            expected: "F32, F16 or BF16",
        })?;
        if b.dtype != s.dtype {
            return Err(Error::Dtype {
                name: bname,
                path: path.clone(),
                found: format!("{:?}", b.dtype),
                expected: "the dtype of the scales",
            });
        }
        let q = AffineQuant::new(bits, group, sdt).map_err(|e| bad(e.to_string()))?;
        Ok((WeightFormat::Affine(q), [Some(w), Some(s), Some(b)]))
    }

    /// [`matrix_entries`](Self::matrix_entries) of an FP8 matrix as DeepSeek-V3 ships it:
    /// `.weight` F8_E4M3 `[.., rows, cols]` and `.weight_scale_inv` F32 `[.., ceil(rows /
    /// 128), ceil(cols / 128)]`.
    fn fp8_entries<'a>(
        &'a self,
        prefix: &str,
        lead: &[usize],
        rows: usize,
        cols: usize,
        w: &'a TensorEntry,
    ) -> Result<(WeightFormat, [Option<&'a TensorEntry>; 3])> {
        use crate::format::FP8_BLOCK;
        let with_lead =
            |tail: &[usize]| -> Vec<usize> { lead.iter().chain(tail).copied().collect() };
        let sname = format!("{prefix}.weight_scale_inv");
        let s = self.entry(&sname)?;
        self.check_parts(
            [
                (
                    w,
                    format!("{prefix}.weight"),
                    safetensors::Dtype::F8_E4M3,
                    with_lead(&[rows, cols]),
                ),
                (
                    s,
                    sname,
                    safetensors::Dtype::F32,
                    with_lead(&[rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)]),
                ),
            ],
            "F8_E4M3 codes and F32 block scales (FP8)",
        )?;
        Ok((WeightFormat::Fp8Block, [Some(w), Some(s), None]))
    }

    /// [`matrix_entries`](Self::matrix_entries) of an MLX MXFP4 matrix (`mode: "mxfp4"`):
    /// `.weight` U32 `[.., rows, cols / 8]` (FP4 codes, the first element lowest) and
    /// `.scales` U8 `[.., rows, cols / 32]` (e8m0), no biases.
    fn mxfp4_entries<'a>(
        &'a self,
        prefix: &str,
        lead: &[usize],
        rows: usize,
        cols: usize,
        w: &'a TensorEntry,
        s: &'a TensorEntry,
    ) -> Result<(WeightFormat, [Option<&'a TensorEntry>; 3])> {
        let with_lead =
            |tail: &[usize]| -> Vec<usize> { lead.iter().chain(tail).copied().collect() };
        if cols % 32 != 0 {
            return Err(Error::Quantization {
                name: format!("{prefix}.weight"),
                path: self.path_of(w).to_path_buf(),
                reason: format!("MXFP4 needs a multiple of 32 columns, not {cols}"),
            });
        }
        self.check_parts(
            [
                (
                    w,
                    format!("{prefix}.weight"),
                    safetensors::Dtype::U32,
                    with_lead(&[rows, cols / 8]),
                ),
                (
                    s,
                    format!("{prefix}.scales"),
                    safetensors::Dtype::U8,
                    with_lead(&[rows, cols / 32]),
                ),
            ],
            "U32 codes and U8 scales (MXFP4)",
        )?;
        Ok((WeightFormat::Mxfp4, [Some(w), Some(s), None]))
    }

    /// Checks each (tensor, name, dtype, shape) of a coded matrix's parts: a wrong dtype
    /// is an [`Error::Dtype`] saying `expected` of the format, a wrong shape an
    /// [`Error::Shape`].
    fn check_parts(
        &self,
        parts: [(&TensorEntry, String, safetensors::Dtype, Vec<usize>); 2],
        expected: &'static str,
    ) -> Result<()> {
        for (t, name, dtype, shape) in parts {
            if t.dtype != dtype {
                return Err(Error::Dtype {
                    path: self.path_of(t).to_path_buf(),
                    name,
                    found: format!("{:?}", t.dtype),
                    expected,
                });
            }
            if t.shape != shape {
                return Err(Error::Shape {
                    path: self.path_of(t).to_path_buf(),
                    name,
                    expected: shape,
                    found: t.shape.clone(),
                });
            }
        }
        Ok(())
    }

    /// A weight matrix `[rows, cols]` named `prefix` (without `.weight`), float or
    /// MLX-quantized, checked against the expected shape.
    pub fn matrix(&self, prefix: &str, rows: usize, cols: usize) -> Result<MatrixView<'_>> {
        self.matrix_stacked(prefix, 1, rows, cols)
    }

    /// `count` matrices `[rows, cols]` stacked in one tensor `[count, rows, cols]` (with
    /// `count` 1: `[rows, cols]`), as one matrix of `count * rows` rows (mlx-lm's
    /// per-head `embed_q` / `unembed_out` of latent attention).
    pub fn matrix_stacked(
        &self,
        prefix: &str,
        count: usize,
        rows: usize,
        cols: usize,
    ) -> Result<MatrixView<'_>> {
        let lead: &[usize] = if count == 1 { &[] } else { &[count] };
        let (format, [w, s, b]) = self.matrix_entries(prefix, lead, rows, cols)?;
        let bytes = |e: Option<&TensorEntry>| e.map_or(&[][..], |e| self.bytes_of(e));
        Ok(MatrixView {
            format,
            rows: count * rows,
            cols,
            weight: bytes(w),
            scales: bytes(s),
            biases: bytes(b),
        })
    }
}
