//! gpt-oss's experts as Hugging Face stores them: unquantized, per layer
//! `mlp.experts.gate_up_proj` `[E, H, 2I]` (input-major; column `2k` is gate row `k`,
//! column `2k + 1` up row `k`), `gate_up_proj_bias` `[E, 2I]` (interleaved alike),
//! `down_proj` `[E, I, H]` (input-major) and `down_proj_bias` `[E, H]`; or MXFP4, as the
//! released checkpoints ship them: `gate_up_proj_blocks` `[E, 2I, H/32, 16]` and
//! `gate_up_proj_scales` `[E, 2I, H/32]` (output-major; row `2k` gate, `2k + 1` up),
//! `down_proj_blocks` `[E, H, I/32, 16]`, `down_proj_scales` `[E, H, I/32]`
//! (`crate::format::mxfp4_decode`), the biases as above.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::format::mxfp4_decode;

use super::super::Names;

/// One expert in the engine's orientation, f32: gate and up `[I, H]`, down `[H, I]`
/// (rows are outputs), and their biases.
pub(crate) struct ExpertF32 {
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
    pub gate_bias: Vec<f32>,
    pub up_bias: Vec<f32>,
    pub down_bias: Vec<f32>,
}

/// Every expert of layer `l`, de-interleaved and transposed to rows of outputs.
pub(crate) fn experts_f32(
    ckpt: &Checkpoint,
    names: &Names,
    l: usize,
    (ne, h, i): (usize, usize, usize),
) -> Result<Vec<ExpertF32>> {
    let t = |which: &str, shape: &[usize]| -> Result<Vec<f32>> {
        Ok(ckpt.float(&names.fused_experts(l, which), shape)?.to_f32())
    };
    let gub = t("gate_up_proj_bias", &[ne, 2 * i])?;
    let dnb = t("down_proj_bias", &[ne, h])?;
    if ckpt.contains(&names.fused_experts(l, "gate_up_proj_blocks")) {
        return mxfp4_experts(ckpt, names, l, (ne, h, i), &gub, &dnb);
    }
    let gu = t("gate_up_proj", &[ne, h, 2 * i])?;
    let dn = t("down_proj", &[ne, i, h])?;
    Ok((0..ne)
        .map(|e| {
            let gu = &gu[e * h * 2 * i..(e + 1) * h * 2 * i];
            let dn = &dn[e * i * h..(e + 1) * i * h];
            let b = &gub[e * 2 * i..(e + 1) * 2 * i];
            // Row k of gate (up): column 2k (2k + 1) of the [H, 2I] matrix.
            let column = |c: usize| (0..h).map(move |r| gu[r * 2 * i + c]);
            ExpertF32 {
                gate: (0..i).flat_map(|k| column(2 * k)).collect(),
                up: (0..i).flat_map(|k| column(2 * k + 1)).collect(),
                down: (0..h)
                    .flat_map(|r| (0..i).map(move |c| dn[c * h + r]))
                    .collect(),
                gate_bias: (0..i).map(|k| b[2 * k]).collect(),
                up_bias: (0..i).map(|k| b[2 * k + 1]).collect(),
                down_bias: dnb[e * h..(e + 1) * h].to_vec(),
            }
        })
        .collect())
}

/// [`experts_f32`] of an MXFP4 checkpoint (`h` and `i` multiples of 32).
fn mxfp4_experts(
    ckpt: &Checkpoint,
    names: &Names,
    l: usize,
    (ne, h, i): (usize, usize, usize),
    gub: &[f32],
    dnb: &[f32],
) -> Result<Vec<ExpertF32>> {
    if h % 32 != 0 || i % 32 != 0 {
        return Err(Error::InvalidArgument(format!(
            "layer {l}: MXFP4 experts need hidden ({h}) and intermediate ({i}) sizes that are multiples of 32"
        )));
    }
    let raw = |which: &str, shape: &[usize]| ckpt.u8_tensor(&names.fused_experts(l, which), shape);
    let gu_b = raw("gate_up_proj_blocks", &[ne, 2 * i, h / 32, 16])?;
    let gu_s = raw("gate_up_proj_scales", &[ne, 2 * i, h / 32])?;
    let dn_b = raw("down_proj_blocks", &[ne, h, i / 32, 16])?;
    let dn_s = raw("down_proj_scales", &[ne, h, i / 32])?;
    let (gu_eb, gu_es) = (i * h, 2 * i * h / 32);
    let (dn_eb, dn_es) = (h * i / 2, h * i / 32);
    Ok((0..ne)
        .map(|e| {
            // [2I, H], rows interleaved gate / up.
            let gu = mxfp4_decode(
                &gu_b[e * gu_eb..(e + 1) * gu_eb],
                &gu_s[e * gu_es..(e + 1) * gu_es],
                2 * i,
                h,
            );
            let b = &gub[e * 2 * i..(e + 1) * 2 * i];
            let rows = |parity: usize| -> Vec<f32> {
                (0..i)
                    .flat_map(|k| {
                        gu[(2 * k + parity) * h..(2 * k + parity + 1) * h]
                            .iter()
                            .copied()
                    })
                    .collect()
            };
            ExpertF32 {
                gate: rows(0),
                up: rows(1),
                down: mxfp4_decode(
                    &dn_b[e * dn_eb..(e + 1) * dn_eb],
                    &dn_s[e * dn_es..(e + 1) * dn_es],
                    h,
                    i,
                ),
                gate_bias: (0..i).map(|k| b[2 * k]).collect(),
                up_bias: (0..i).map(|k| b[2 * k + 1]).collect(),
                down_bias: dnb[e * h..(e + 1) * h].to_vec(),
            }
        })
        .collect())
}
