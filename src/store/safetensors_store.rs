//! Experts read in place from a checkpoint's safetensors files with positioned reads.

use std::sync::Arc;

use super::{ExpertLayout, ExpertStore};
use crate::checkpoint::{read_exact_at, Checkpoint};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::names;

/// One contiguous byte range of a checkpoint file.
#[derive(Debug, Clone, Copy)]
struct Extent {
    file: usize,
    offset: u64,
    len: usize,
}

/// Reads experts straight from the checkpoint's safetensors shards (`pread`, no mmap), so
/// the OS page cache is the only cache below the engine's own.
///
/// Both layouts transformers writes are understood: one tensor per expert and projection
/// (`mlp.experts.{e}.gate_proj.weight`, ...) and fused per-layer tensors
/// (`mlp.experts.gate_up_proj` `[E, 2I, H]`, `mlp.experts.down_proj` `[E, H, I]`).
#[derive(Debug)]
pub struct SafetensorsStore {
    ckpt: Arc<Checkpoint>,
    /// Per decoder layer: the experts' layout (`None` for dense layers).
    layouts: Vec<Option<ExpertLayout>>,
    /// Per decoder layer: `None` for dense layers, else `[gate, up, down]` per expert.
    extents: Vec<Option<Vec<[Extent; 3]>>>,
}

impl SafetensorsStore {
    /// Indexes every expert of every MoE layer, checking shapes and dtypes.
    pub fn new(ckpt: Arc<Checkpoint>, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let i = cfg.moe_intermediate_size;
        let ne = cfg.num_experts;
        let mut dtype: Option<DType> = None;
        let mut extents = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            if !cfg.is_moe_layer(l) {
                extents.push(None);
                continue;
            }
            let mut check_dtype = |name: &str, d: DType| -> Result<()> {
                match dtype {
                    None => dtype = Some(d),
                    Some(first) if first != d => {
                        return Err(Error::Dtype {
                            name: name.to_string(),
                            path: ckpt.path_of(ckpt.entry(name)?).to_path_buf(),
                            found: d.to_string(),
                            expected: "the same dtype for every expert tensor",
                        })
                    }
                    _ => {}
                }
                Ok(())
            };
            let fused_gu = names::fused_experts(l, "gate_up_proj");
            let mut layer = Vec::with_capacity(ne);
            if ckpt.contains(&fused_gu) {
                let fused_down = names::fused_experts(l, "down_proj");
                let gu = ckpt.float(&fused_gu, &[ne, 2 * i, h])?;
                check_dtype(&fused_gu, gu.dtype)?;
                let dn = ckpt.float(&fused_down, &[ne, h, i])?;
                check_dtype(&fused_down, dn.dtype)?;
                let gu_e = ckpt.entry(&fused_gu)?;
                let dn_e = ckpt.entry(&fused_down)?;
                let part = i * h * gu.dtype.size();
                for e in 0..ne {
                    let base = gu_e.offset + (e * 2 * part) as u64;
                    layer.push([
                        Extent {
                            file: gu_e.file,
                            offset: base,
                            len: part,
                        },
                        Extent {
                            file: gu_e.file,
                            offset: base + part as u64,
                            len: part,
                        },
                        Extent {
                            file: dn_e.file,
                            offset: dn_e.offset + (e * part) as u64,
                            len: part,
                        },
                    ]);
                }
            } else {
                for e in 0..ne {
                    let mut parts = [Extent {
                        file: 0,
                        offset: 0,
                        len: 0,
                    }; 3];
                    for (k, (proj, shape)) in [
                        ("gate_proj", [i, h]),
                        ("up_proj", [i, h]),
                        ("down_proj", [h, i]),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let name = names::expert(l, e, proj);
                        let view = ckpt.float(&name, &shape)?;
                        check_dtype(&name, view.dtype)?;
                        let entry = ckpt.entry(&name)?;
                        parts[k] = Extent {
                            file: entry.file,
                            offset: entry.offset,
                            len: entry.len,
                        };
                    }
                    layer.push(parts);
                }
            }
            extents.push(Some(layer));
        }
        let layout = ExpertLayout::swiglu(dtype.unwrap_or(DType::F32), h, i);
        let layouts = extents
            .iter()
            .map(|e| e.as_ref().map(|_| layout.clone()))
            .collect();
        Ok(SafetensorsStore {
            layouts,
            ckpt,
            extents,
        })
    }
}

impl ExpertStore for SafetensorsStore {
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.layouts.get(layer).and_then(Option::as_ref)
    }

    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
        let parts = self
            .extents
            .get(layer)
            .and_then(|l| l.as_ref())
            .and_then(|l| l.get(expert))
            .ok_or_else(|| Error::ExpertRead {
                layer,
                expert,
                reason: "no such MoE layer or expert in this checkpoint".into(),
                source: None,
            })?;
        let layout = self.layout(layer).ok_or_else(|| Error::ExpertRead {
            layer,
            expert,
            reason: "not a MoE layer".into(),
            source: None,
        })?;
        if dst.len() < layout.bytes {
            return Err(Error::InvalidArgument(format!(
                "destination is {} bytes, an expert is {}",
                dst.len(),
                layout.bytes
            )));
        }
        for (part, t) in parts.iter().zip(&layout.tensors) {
            let f = &self.ckpt.files()[part.file];
            read_exact_at(
                &f.file,
                &mut dst[t.offset..t.offset + part.len],
                part.offset,
            )
            .map_err(|e| Error::ExpertRead {
                layer,
                expert,
                reason: format!(
                    "reading {} bytes at offset {} of {}",
                    part.len,
                    part.offset,
                    f.path.display()
                ),
                source: Some(Box::new(e)),
            })?;
        }
        Ok(())
    }
}
