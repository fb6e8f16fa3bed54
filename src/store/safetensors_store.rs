//! Experts read in place from a checkpoint's safetensors files with positioned reads.

use std::sync::Arc;

use super::{ExpertLayout, ExpertStore};
use crate::arch::gpt_oss::store::GptOssLayer;
use crate::arch::tensor;
use crate::checkpoint::{read_exact_at, Checkpoint, TensorEntry};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::format::WeightFormat;

/// One contiguous byte range of a checkpoint file and where it goes in the blob.
#[derive(Debug, Clone, Copy)]
struct Piece {
    file: usize,
    offset: u64,
    len: usize,
    dst: usize,
}

/// Reads experts straight from the checkpoint's safetensors shards (`pread`, no mmap), so
/// the OS page cache is the only cache below the engine's own.
///
/// Understood layouts:
/// - one tensor per expert and projection, as transformers writes them
///   (`mlp.experts.{e}.gate_proj.weight`, ...);
/// - fused per-layer tensors (`mlp.experts.gate_up_proj` `[E, 2I, H]`, gate rows first,
///   and `mlp.experts.down_proj` `[E, H, I]`);
/// - MLX stacked experts (`mlp.switch_mlp.{gate,up,down}_proj.{weight,scales,biases}`
///   with a leading expert dimension), float or affine-quantized, each expert's slice
///   copied unchanged;
/// - gpt-oss's stacked experts with biases, unquantized (transposed on each read) or
///   MXFP4 (copied by rows).
#[derive(Debug)]
pub struct SafetensorsStore {
    ckpt: Arc<Checkpoint>,
    /// Per decoder layer: the experts' layout (`None` for dense layers).
    layouts: Vec<Option<ExpertLayout>>,
    /// Per decoder layer: where its experts' bytes come from.
    sources: Vec<Option<Source>>,
}

/// Where a layer's expert blobs come from.
#[derive(Debug)]
enum Source {
    /// Copied as stored: per expert, the pieces to copy.
    Pieces(Vec<Vec<Piece>>),
    /// Rearranged from gpt-oss's stacked tensors.
    GptOss(Box<GptOssLayer>),
}

/// The byte range of expert `e`'s slice of a tensor stacked over `ne` experts.
fn slice(t: &TensorEntry, e: usize, ne: usize, dst: usize) -> Piece {
    let len = t.len / ne;
    Piece {
        file: t.file,
        offset: t.offset + (e * len) as u64,
        len,
        dst,
    }
}

impl SafetensorsStore {
    /// Indexes every expert of every MoE layer, checking shapes and dtypes.
    pub fn new(ckpt: Arc<Checkpoint>, cfg: &ModelConfig) -> Result<Self> {
        let (h, i, ne) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts);
        let shapes = [
            (tensor::GATE_PROJ, i, h),
            (tensor::UP_PROJ, i, h),
            (tensor::DOWN_PROJ, h, i),
        ];
        let names = crate::arch::names(cfg, &ckpt)?;
        let mut layouts = Vec::with_capacity(cfg.num_hidden_layers);
        let mut sources = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            if !cfg.is_moe_layer(l) {
                layouts.push(None);
                sources.push(None);
                continue;
            }
            if cfg.layers[l].moe().is_some_and(|m| m.expert_bias) {
                let (layout, layer) = GptOssLayer::new(&ckpt, &names, l, (ne, h, i))?;
                layouts.push(Some(layout));
                sources.push(Some(Source::GptOss(Box::new(layer))));
                continue;
            }
            let stacked = names.weight(l, &names.switch_mlp(tensor::GATE_PROJ));
            let fused = names.fused_experts(l, tensor::GATE_UP_PROJ);
            let (layout, layer) = if ckpt.contains(&stacked) {
                // MLX: [E, rows, ...] codes, scales, biases per projection.
                let mut formats = Vec::with_capacity(3);
                let mut entries = Vec::with_capacity(3);
                for (proj, rows, cols) in shapes {
                    let prefix = names.layer(l, &names.switch_mlp(proj));
                    let (f, e) = ckpt.matrix_entries(&prefix, &[ne], rows, cols)?;
                    formats.push(f);
                    entries.push(e);
                }
                let layout = ExpertLayout::swiglu_with([formats[0], formats[1], formats[2]], h, i)?;
                let layer = (0..ne)
                    .map(|e| {
                        let mut p = Vec::with_capacity(9);
                        for (t, parts) in layout.tensors.iter().zip(&entries) {
                            let off = t.format.parts(t.rows, t.cols);
                            let dsts = [t.offset, t.offset + off.scales.0, t.offset + off.biases.0];
                            for (entry, dst) in parts.iter().zip(dsts) {
                                if let Some(entry) = entry {
                                    p.push(slice(entry, e, ne, dst));
                                }
                            }
                        }
                        p
                    })
                    .collect::<Vec<_>>();
                (layout, layer)
            } else if ckpt.contains(&fused) {
                let down = names.fused_experts(l, tensor::DOWN_PROJ);
                let gu = ckpt.float(&fused, &[ne, 2 * i, h])?;
                let dn = ckpt.float(&down, &[ne, h, i])?;
                if dn.dtype != gu.dtype {
                    return Err(Error::Dtype {
                        name: down.clone(),
                        path: ckpt.path_of(ckpt.entry(&down)?).to_path_buf(),
                        found: dn.dtype.to_string(),
                        expected: "the dtype of gate_up_proj",
                    });
                }
                let layout = ExpertLayout::swiglu(gu.dtype, h, i);
                let (gu_e, dn_e) = (ckpt.entry(&fused)?, ckpt.entry(&down)?);
                let part = layout.tensors[0].len();
                let layer = (0..ne)
                    .map(|e| {
                        let g = slice(gu_e, e, ne, layout.tensors[0].offset);
                        let gate = Piece { len: part, ..g };
                        let up = Piece {
                            offset: g.offset + part as u64,
                            len: part,
                            dst: layout.tensors[1].offset,
                            ..g
                        };
                        vec![gate, up, slice(dn_e, e, ne, layout.tensors[2].offset)]
                    })
                    .collect();
                (layout, layer)
            } else {
                // One tensor per expert and projection.
                let mut layout: Option<ExpertLayout> = None;
                let mut layer = Vec::with_capacity(ne);
                for e in 0..ne {
                    let mut formats = Vec::with_capacity(3);
                    let mut entries = Vec::with_capacity(3);
                    for (proj, rows, cols) in shapes {
                        let prefix = names.expert(l, e, proj);
                        let prefix = prefix.strip_suffix(".weight").unwrap_or(&prefix);
                        let (f, ents) = ckpt.matrix_entries(prefix, &[], rows, cols)?;
                        formats.push(f);
                        entries.push(ents);
                    }
                    let this =
                        ExpertLayout::swiglu_with([formats[0], formats[1], formats[2]], h, i)?;
                    match &layout {
                        None => layout = Some(this.clone()),
                        Some(first) if *first != this => {
                            let k = (0..3)
                                .find(|&k| first.tensors[k].format != this.tensors[k].format)
                                .unwrap_or(0);
                            let name = names.expert(l, e, shapes[k].0);
                            return Err(Error::Dtype {
                                path: ckpt.path_of(ckpt.entry(&name)?).to_path_buf(),
                                name,
                                found: this.tensors[k].format.to_string(),
                                expected: "the same format for every expert of a layer",
                            });
                        }
                        _ => {}
                    }
                    let mut p = Vec::with_capacity(3);
                    for (t, parts) in this.tensors.iter().zip(&entries) {
                        let off = t.format.parts(t.rows, t.cols);
                        let dsts = [t.offset, t.offset + off.scales.0, t.offset + off.biases.0];
                        for (entry, dst) in parts.iter().zip(dsts) {
                            if let Some(entry) = entry {
                                p.push(slice(entry, 0, 1, dst));
                            }
                        }
                    }
                    layer.push(p);
                }
                let layout = layout.ok_or_else(|| Error::Config {
                    path: ckpt.dir().join("config.json"),
                    reason: "a MoE layer needs at least one expert".into(),
                })?;
                (layout, layer)
            };
            layouts.push(Some(layout));
            sources.push(Some(Source::Pieces(layer)));
        }
        tracing::debug!(
            dir = %ckpt.dir().display(),
            moe_layers = layouts.iter().flatten().count(),
            "expert store opened on the checkpoint's safetensors files"
        );
        Ok(SafetensorsStore {
            ckpt,
            layouts,
            sources,
        })
    }

    /// The formats of a layer's expert tensors (gate, up, down).
    pub fn formats(&self, layer: usize) -> Option<[WeightFormat; 3]> {
        self.layout(layer).map(|l| {
            [
                l.tensors[0].format,
                l.tensors[1].format,
                l.tensors[2].format,
            ]
        })
    }
}

impl ExpertStore for SafetensorsStore {
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.layouts.get(layer).and_then(Option::as_ref)
    }

    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
        let not_found = || Error::ExpertRead {
            layer,
            expert,
            reason: "no such MoE layer or expert in this checkpoint".into(),
            cause: None,
        };
        let source = self
            .sources
            .get(layer)
            .and_then(|l| l.as_ref())
            .ok_or_else(not_found)?;
        let layout = self.layout(layer).ok_or_else(not_found)?;
        if dst.len() < layout.bytes {
            return Err(Error::InvalidArgument(format!(
                "destination is {} bytes, an expert is {}",
                dst.len(),
                layout.bytes
            )));
        }
        let pieces = match source {
            Source::Pieces(experts) => experts.get(expert).ok_or_else(not_found)?,
            Source::GptOss(g) => {
                if expert >= g.experts() {
                    return Err(not_found());
                }
                return g.read(&self.ckpt, layout, (layer, expert), dst);
            }
        };
        for p in pieces {
            let f = &self.ckpt.files()[p.file];
            read_exact_at(&f.file, &mut dst[p.dst..p.dst + p.len], p.offset).map_err(|e| {
                Error::ExpertRead {
                    layer,
                    expert,
                    reason: format!(
                        "reading {} bytes at offset {} of {}",
                        p.len,
                        p.offset,
                        f.path.display()
                    ),
                    cause: Some(Box::new(e)),
                }
            })?;
        }
        Ok(())
    }
}
