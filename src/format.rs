//! How weights are stored: the element types of checkpoint tensors ([`DType`]) and the
//! formats of weight matrices ([`WeightFormat`]: plain floats, MLX affine quantization
//! ([`AffineQuant`]), MXFP4 or block-scaled FP8).

pub use crate::dtype::DType;
use crate::error::{Error, Result};

/// MLX affine quantization of a `[rows, cols]` matrix: each row is split into groups of
/// `group_size` columns; element `q` (an unsigned `bits`-bit integer) of a group with
/// scale `s` and bias `b` stands for `s * q + b`. Each row is a little-endian,
/// least-significant-bit-first bit stream packed into `u32` words (element `i` occupies
/// bits `[i*bits, (i+1)*bits)` of the row), `cols * bits / 32` words per row. Scales and
/// biases are `[rows, cols / group_size]` in `scale_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct AffineQuant {
    /// Bits per element: 2, 3, 4, 5, 6 or 8.
    pub bits: u32,
    /// Columns per group: 32, 64 or 128.
    pub group_size: u32,
    /// Element type of the scales and biases.
    pub scale_dtype: DType,
}

impl AffineQuant {
    /// Checks bits and group size and that `cols` fits them.
    pub fn new(bits: u32, group_size: u32, scale_dtype: DType) -> Result<Self> {
        if ![2, 3, 4, 5, 6, 8].contains(&bits) {
            return Err(Error::InvalidArgument(format!(
                "{bits}-bit quantization is not supported (2, 3, 4, 5, 6 or 8)"
            )));
        }
        if ![32, 64, 128].contains(&group_size) {
            return Err(Error::InvalidArgument(format!(
                "quantization group size {group_size} is not supported (32, 64 or 128)"
            )));
        }
        Ok(AffineQuant {
            bits,
            group_size,
            scale_dtype,
        })
    }
}

/// How one weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WeightFormat {
    /// Plain floating point, row-major.
    Float(DType),
    /// MLX affine quantization.
    Affine(AffineQuant),
    /// MXFP4 (OCP microscaling, as gpt-oss's checkpoints store experts): per row `cols / 2`
    /// bytes of FP4 (e2m1) codes, element `2j` in the low nibble of byte `j`; then, 16-byte
    /// aligned, one e8m0 scale byte (`2^(s - 127)`) per 32 elements of a row. 4.25 bits per
    /// weight; `cols` a multiple of 32.
    Mxfp4,
    /// FP8 (e4m3, DeepSeek-V3's released weights): `rows * cols` code bytes, then, 16-byte
    /// aligned, one f32 scale per `128 x 128` block (`[ceil(rows / 128), ceil(cols /
    /// 128)]`, the last blocks partial), `w = e4m3 * scale`. Not run by the GPU kernels
    /// yet.
    Fp8Block,
}

/// The block edge of [`WeightFormat::Fp8Block`].
pub const FP8_BLOCK: usize = 128;

/// Byte offsets of the parts of a stored matrix, relative to its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts {
    /// Bytes of the weights (floats, or packed words).
    pub weight_bytes: usize,
    /// Offset and bytes of the scales (quantized only).
    pub scales: (usize, usize),
    /// Offset and bytes of the biases (quantized only).
    pub biases: (usize, usize),
    /// Total bytes, 16-byte aligned parts included.
    pub total: usize,
}

fn align16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

impl WeightFormat {
    /// Checks that a `[rows, cols]` matrix can be stored in this format.
    pub fn check(&self, cols: usize) -> Result<()> {
        if *self == WeightFormat::Mxfp4 && cols % 32 != 0 {
            return Err(Error::InvalidArgument(format!(
                "{cols} columns cannot be stored in MXFP4 (blocks of 32)"
            )));
        }
        if let WeightFormat::Affine(q) = self {
            let g = q.group_size as usize;
            // `cols` may come from a file (a pack index): no overflow.
            let bits = cols.checked_mul(q.bits as usize);
            if cols % g != 0 || bits.is_none_or(|b| b % 32 != 0) {
                return Err(Error::InvalidArgument(format!(
                    "{cols} columns cannot be quantized in groups of {g} at {} bits",
                    q.bits
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn parts(&self, rows: usize, cols: usize) -> Parts {
        match self {
            WeightFormat::Float(d) => {
                let n = rows * cols * d.size();
                Parts {
                    weight_bytes: n,
                    scales: (n, 0),
                    biases: (n, 0),
                    total: n,
                }
            }
            WeightFormat::Affine(q) => {
                let wb = rows * cols * q.bits as usize / 8;
                let sb = rows * (cols / q.group_size as usize) * q.scale_dtype.size();
                let so = align16(wb);
                let bo = so + align16(sb);
                Parts {
                    weight_bytes: wb,
                    scales: (so, sb),
                    biases: (bo, sb),
                    total: bo + sb,
                }
            }
            WeightFormat::Fp8Block => {
                let wb = rows * cols;
                let so = align16(wb);
                let sb = rows.div_ceil(FP8_BLOCK) * cols.div_ceil(FP8_BLOCK) * 4;
                Parts {
                    weight_bytes: wb,
                    scales: (so, sb),
                    biases: (so + sb, 0),
                    total: so + sb,
                }
            }
            WeightFormat::Mxfp4 => {
                let wb = rows * cols / 2;
                let so = align16(wb);
                let sb = rows * cols / 32;
                Parts {
                    weight_bytes: wb,
                    scales: (so, sb),
                    biases: (so + sb, 0),
                    total: so + sb,
                }
            }
        }
    }

    /// Bytes a `[rows, cols]` matrix takes in this format (parts 16-byte aligned).
    pub fn stored_bytes(&self, rows: usize, cols: usize) -> usize {
        self.parts(rows, cols).total
    }

    /// Decodes a stored `[rows, cols]` matrix (as laid out by [`stored_bytes`]) into f32.
    ///
    /// [`stored_bytes`]: WeightFormat::stored_bytes
    pub fn decode(&self, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let p = self.parts(rows, cols);
        match self {
            WeightFormat::Float(d) => d.decode(&bytes[..p.weight_bytes]),
            WeightFormat::Affine(q) => {
                let scales = q
                    .scale_dtype
                    .decode(&bytes[p.scales.0..p.scales.0 + p.scales.1]);
                let biases = q
                    .scale_dtype
                    .decode(&bytes[p.biases.0..p.biases.0 + p.biases.1]);
                dequantize(&bytes[..p.weight_bytes], &scales, &biases, rows, cols, q)
            }
            WeightFormat::Mxfp4 => mxfp4_decode(
                &bytes[..p.weight_bytes],
                &bytes[p.scales.0..p.scales.0 + p.scales.1],
                rows,
                cols,
            ),
            WeightFormat::Fp8Block => {
                let scales = DType::F32.decode(&bytes[p.scales.0..p.scales.0 + p.scales.1]);
                let bc = cols.div_ceil(FP8_BLOCK);
                (0..rows * cols)
                    .map(|i| {
                        let (r, c) = (i / cols, i % cols);
                        e4m3(bytes[i]) * scales[(r / FP8_BLOCK) * bc + c / FP8_BLOCK]
                    })
                    .collect()
            }
        }
    }
}

/// Dequantizes MLX affine data: `packed` holds `rows * cols * bits / 8` bytes.
pub(crate) fn dequantize(
    packed: &[u8],
    scales: &[f32],
    biases: &[f32],
    rows: usize,
    cols: usize,
    q: &AffineQuant,
) -> Vec<f32> {
    let bits = q.bits as usize;
    let g = q.group_size as usize;
    let words_per_row = cols * bits / 32;
    let mask = (1u64 << bits) - 1;
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let row = &packed[r * words_per_row * 4..(r + 1) * words_per_row * 4];
        for c in 0..cols {
            let bit = c * bits;
            let w = bit / 32;
            let lo =
                u32::from_le_bytes([row[4 * w], row[4 * w + 1], row[4 * w + 2], row[4 * w + 3]])
                    as u64;
            let hi = if w + 1 < words_per_row {
                u32::from_le_bytes([
                    row[4 * w + 4],
                    row[4 * w + 5],
                    row[4 * w + 6],
                    row[4 * w + 7],
                ]) as u64
            } else {
                0
            };
            let v = (((hi << 32) | lo) >> (bit % 32)) & mask;
            let gi = r * (cols / g) + c / g;
            out.push(scales[gi] * v as f32 + biases[gi]);
        }
    }
    out
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightFormat::Float(d) => write!(f, "{d}"),
            WeightFormat::Affine(q) => write!(
                f,
                "affine {}-bit, group {}, {} scales",
                q.bits, q.group_size, q.scale_dtype
            ),
            WeightFormat::Mxfp4 => write!(f, "mxfp4"),
            WeightFormat::Fp8Block => write!(f, "fp8 e4m3, 128x128 block scales"),
        }
    }
}

/// The value of an FP8 e4m3 (OCP `e4m3fn`) code: sign bit 7, exponent bits 6..3 (bias
/// 7), mantissa bits 2..0; exponent 0 is subnormal (`m / 8 * 2^-6`); `0x7f` / `0xff` are
/// NaN (no infinities).
pub(crate) fn e4m3(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (i32::from((code >> 3) & 0xf), f32::from(code & 7));
    if e == 15 && m == 7.0 {
        return f32::NAN;
    }
    let v = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    sign * v
}

/// The values of the FP4 (e2m1) codes of MXFP4, bit 3 the sign.
const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Decodes an MXFP4 matrix `[rows, cols]` (OCP microscaling, as gpt-oss's checkpoints store
/// experts): `blocks` holds `cols / 2` bytes per row, byte `j` of a row the codes of
/// elements `2j` (low nibble) and `2j + 1` (high nibble); `scales` one e8m0 byte per 32
/// elements of a row, the value `2^(s - 127)` (as transformers' `ldexp`: 0 stays 0, a
/// scale of 255 makes the rest infinite). `cols` must be a multiple of 32 and the slices
/// exactly that long.
pub(crate) fn mxfp4_decode(blocks: &[u8], scales: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    debug_assert!(cols % 32 == 0 && blocks.len() == rows * cols / 2);
    debug_assert!(scales.len() == rows * cols / 32);
    let mut out = Vec::with_capacity(rows * cols);
    for (g, &s) in scales.iter().enumerate() {
        // In f64, where 2^(s - 127) and its products with the codes are exact; rounded once.
        let scale = 2.0f64.powi(i32::from(s) - 127);
        let value = |code: u8| (f64::from(FP4_VALUES[usize::from(code)]) * scale) as f32;
        for &b in &blocks[g * 16..(g + 1) * 16] {
            out.push(value(b & 0x0f));
            out.push(value(b >> 4));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mxfp4_decodes_nibbles_low_first_with_e8m0_scales() {
        // One row of 32: byte j holds elements 2j (low nibble) and 2j + 1 (high).
        let mut blocks = [0u8; 16];
        blocks[0] = 0x71; // 0.5, then 6.0
        blocks[1] = 0xf8; // -0.0, then -6.0
        blocks[15] = 0x2a; // -1.0, then 1.0
                           // Scale 2^(128 - 127) = 2.
        let v = mxfp4_decode(&blocks, &[128], 1, 32);
        assert_eq!(&v[..4], &[1.0, 12.0, -0.0, -12.0]);
        assert!(v[2].is_sign_negative());
        assert_eq!(&v[30..], &[-2.0, 2.0]);
        assert!(v[4..30].iter().all(|&x| x == 0.0));
        // Extreme scales: 2^-127 (subnormal, exact) and 2^128 (0.5 of it finite, 6 of it
        // infinite; zeros stay zero).
        let v = mxfp4_decode(&blocks, &[0], 1, 32);
        assert_eq!(v[1], 6.0 * 2f32.powi(-127));
        let v = mxfp4_decode(&blocks, &[255], 1, 32);
        assert_eq!((v[0], v[1], v[4]), (2f32.powi(127), f32::INFINITY, 0.0));
        // Two rows, a scale per 32 elements each.
        let two = mxfp4_decode(&[blocks, blocks].concat(), &[127, 126], 2, 32);
        assert_eq!((two[1], two[33]), (6.0, 3.0));
    }

    #[test]
    fn packing_is_lsb_first_and_straddles_words() {
        // 3-bit values 0..=7 repeated over 32 columns: 96 bits = 3 words per row.
        let q = AffineQuant::new(3, 32, DType::F32).unwrap();
        let vals: Vec<u64> = (0..32).map(|i| i % 8).collect();
        let mut words = Vec::new();
        let mut acc: u128 = 0;
        let mut n = 0;
        for v in &vals {
            acc |= (*v as u128) << n;
            n += 3;
        }
        for w in 0..3 {
            words.extend_from_slice(&((acc >> (32 * w)) as u32).to_le_bytes());
        }
        let out = dequantize(&words, &[2.0], &[-1.0], 1, 32, &q);
        let want: Vec<f32> = vals.iter().map(|&v| 2.0 * v as f32 - 1.0).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn parts_are_aligned() {
        let f = WeightFormat::Affine(AffineQuant::new(4, 64, DType::BF16).unwrap());
        let p = f.parts(3, 128);
        assert_eq!(p.weight_bytes, 3 * 128 / 2);
        assert_eq!(p.scales, (192, 12));
        assert_eq!(p.biases, (208, 12));
        assert_eq!(p.total, 220);
        assert!(f.check(100).is_err());
        let m = WeightFormat::Mxfp4;
        let p = m.parts(3, 96);
        assert_eq!((p.weight_bytes, p.scales, p.total), (144, (144, 9), 153));
        assert!(m.check(48).is_err() && m.check(64).is_ok());
        let f8 = WeightFormat::Fp8Block;
        let p = f8.parts(130, 200);
        assert_eq!(
            (p.weight_bytes, p.scales, p.total),
            (26000, (26000, 16), 26016)
        );
    }

    #[test]
    fn e4m3_codes() {
        assert_eq!(e4m3(0x00), 0.0);
        assert_eq!(e4m3(0x38), 1.0); // e 7, m 0
        assert_eq!(e4m3(0x3c), 1.5);
        assert_eq!(e4m3(0xb8), -1.0);
        assert_eq!(e4m3(0x7e), 448.0); // the largest finite
        assert_eq!(e4m3(0x01), 2f32.powi(-9)); // the smallest subnormal
        assert!(e4m3(0x7f).is_nan() && e4m3(0xff).is_nan());
    }
}
