//! gpt-oss's experts as Hugging Face stores them unquantized: per layer
//! `mlp.experts.gate_up_proj` `[E, H, 2I]` (input-major; column `2k` is gate row `k`,
//! column `2k + 1` up row `k`), `gate_up_proj_bias` `[E, 2I]` (interleaved alike),
//! `down_proj` `[E, I, H]` (input-major) and `down_proj_bias` `[E, H]`.

use crate::checkpoint::Checkpoint;
use crate::error::Result;

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
    let gu = t("gate_up_proj", &[ne, h, 2 * i])?;
    let gub = t("gate_up_proj_bias", &[ne, 2 * i])?;
    let dn = t("down_proj", &[ne, i, h])?;
    let dnb = t("down_proj_bias", &[ne, h])?;
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
