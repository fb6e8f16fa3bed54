//! Reading the resident weights of one checkpoint by name: norms, matrices (fused where
//! stored alike), the blocks of each layer, and the shared experts that ride in the expert
//! cache instead (their blobs in the layer's expert layout).

use super::weights::{
    Attention, DenseMlp, GateUp, LinearAttention, LinearConsts, Moe, Qkv, Shared, SharedExpert,
};
use crate::arch::{
    tensor, AttentionSpec, LinearAttentionSpec, MoeSpec, Names, RouterKind, RowSlice,
};
use crate::checkpoint::{Checkpoint, MatrixView};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::gpu::{Gpu, GpuMatrix, GpuVec};
use crate::store::{ExpertLayout, ExpertStore};

/// Uploads the tensors of one checkpoint by name.
pub(super) struct Loader<'a> {
    pub gpu: &'a Gpu,
    pub ckpt: &'a Checkpoint,
    pub store: &'a dyn ExpertStore,
    pub names: &'a Names,
    /// Added to every RMSNorm weight but the gated one's: 1 for the zero-centred norms of
    /// Hugging Face checkpoints of Qwen3.5 (the model multiplies by `1 + w`), else 0.
    pub norm_shift: f32,
}

impl Loader<'_> {
    /// An RMSNorm weight of `n` values, `norm_shift` added.
    pub(super) fn norm(&self, name: &str, n: usize) -> Result<GpuVec> {
        let mut w = self.ckpt.float(name, &[n])?.to_f32();
        if self.norm_shift != 0.0 {
            w.iter_mut().for_each(|v| *v += self.norm_shift);
        }
        Ok(GpuVec::upload(self.gpu, name, &w))
    }

    /// A float tensor of `n` values in any shape whose dims multiply to `n` (conv1d
    /// weights are `[C, 1, K]` or `[C, K, 1]`), as f32.
    pub(super) fn flat(&self, name: &str, n: usize, expected: &[usize]) -> Result<Vec<f32>> {
        let entry = self.ckpt.entry(name)?;
        let shape = entry.shape.clone();
        if shape.iter().product::<usize>() != n {
            return Err(Error::Shape {
                name: name.to_string(),
                path: self.ckpt.path_of(entry).to_path_buf(),
                found: shape,
                expected: expected.to_vec(),
            });
        }
        Ok(self.ckpt.float(name, &shape)?.to_f32())
    }

    /// One matrix of the rows `start..start + count` of each view, in order, uploaded as
    /// `label`; `None` when the views are not stored alike (a mixed-precision recipe), so
    /// the caller keeps them apart.
    pub(super) fn fuse_rows(
        &self,
        label: &str,
        parts: &[(&MatrixView<'_>, usize, usize)],
    ) -> Result<Option<GpuMatrix>> {
        let (first, _, _) = parts[0];
        if parts.iter().any(|(v, _, _)| v.format != first.format) {
            return Ok(None);
        }
        let cat = |part: usize| -> Vec<u8> {
            let mut out = Vec::new();
            for (v, start, count) in parts {
                let bytes = [v.weight, v.scales, v.biases][part];
                let per_row = bytes.len() / v.rows.max(1);
                out.extend_from_slice(&bytes[start * per_row..(start + count) * per_row]);
            }
            out
        };
        let (weight, scales, biases) = (cat(0), cat(1), cat(2));
        let fused = MatrixView {
            format: first.format,
            rows: parts.iter().map(|p| p.2).sum(),
            cols: first.cols,
            weight: &weight,
            scales: &scales,
            biases: &biases,
        };
        GpuMatrix::upload(self.gpu, label, &fused).map(Some)
    }

    /// One matrix made of row slices of the checkpoint's matrices (all of `cols` columns),
    /// in order; an error naming them unless they are stored alike.
    pub(super) fn concat_rows(
        &self,
        label: &str,
        slices: &[RowSlice],
        cols: usize,
    ) -> Result<GpuMatrix> {
        let mut views = Vec::with_capacity(slices.len());
        for s in slices {
            views.push(self.ckpt.matrix(&s.prefix, s.rows, cols)?);
        }
        let parts: Vec<_> = slices
            .iter()
            .zip(&views)
            .map(|(s, v)| (v, s.start, s.count))
            .collect();
        self.fuse_rows(label, &parts)?.ok_or_else(|| {
            let formats: Vec<WeightFormat> = views.iter().map(|v| v.format).collect();
            concat_error(label, slices, &formats)
        })
    }

    /// The Gated DeltaNet layer `l` (`linear_attn.*`), its input projections gathered by
    /// the family's `slices`.
    pub(super) fn linear_attention(
        &self,
        l: usize,
        h: usize,
        spec: &LinearAttentionSpec,
        slices: &[RowSlice],
    ) -> Result<LinearAttention> {
        let n = |path: &str| self.names.weight(l, path);
        let rows: usize = slices.iter().map(|s| s.count).sum();
        if rows != spec.projection_rows() {
            return Err(Error::InvalidArgument(format!(
                "layer {l}: the linear-attention projections give {rows} rows, the config implies {}",
                spec.projection_rows()
            )));
        }
        let conv_len = spec.conv_channels() * spec.conv_kernel;
        let at = LinearConsts::new(conv_len, spec.value_heads, spec.value_dim);
        let mut consts = vec![0f32; at.norm + spec.value_dim];
        let parts = [
            (
                0,
                self.flat(
                    &n(tensor::CONV1D),
                    conv_len,
                    &[spec.conv_channels(), 1, spec.conv_kernel],
                )?,
            ),
            (
                at.a_log,
                self.floats(&self.names.layer(l, tensor::A_LOG), spec.value_heads)?,
            ),
            (
                at.dt_bias,
                self.floats(&self.names.layer(l, tensor::DT_BIAS), spec.value_heads)?,
            ),
            (
                at.norm,
                self.floats(&n(tensor::GATED_NORM), spec.value_dim)?,
            ),
        ];
        for (offset, values) in parts {
            consts[offset..offset + values.len()].copy_from_slice(&values);
        }
        Ok(LinearAttention {
            spec: *spec,
            proj: self.concat_rows(&n(tensor::IN_PROJ), slices, h)?,
            consts: GpuVec::upload(
                self.gpu,
                &format!("layer {l} linear-attention constants"),
                &consts,
            ),
            at,
            out: self.matrix(&n(tensor::OUT_PROJ), h, spec.value_width())?,
        })
    }

    /// A matrix `[rows, cols]` (float, or MLX-quantized `.weight` + `.scales` + `.biases`).
    pub(super) fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<GpuMatrix> {
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let m = self.ckpt.matrix(prefix, rows, cols)?;
        GpuMatrix::upload(self.gpu, name, &m)
    }

    /// A float vector of `n` values, uploaded as f32.
    pub(super) fn vector(&self, name: &str, n: usize) -> Result<GpuVec> {
        Ok(GpuVec::upload(self.gpu, name, &self.floats(name, n)?))
    }

    /// A float vector of `n` values, as f32.
    pub(super) fn floats(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self.ckpt.float(name, &[n])?.to_f32())
    }

    /// A SwiGLU MLP `{prefix}.{gate,up,down}_proj.weight` of width `inter`.
    pub(super) fn dense(&self, prefix: &str, h: usize, inter: usize) -> Result<DenseMlp> {
        Ok(DenseMlp {
            gate: self.matrix(&format!("{prefix}.{}.weight", tensor::GATE_PROJ), inter, h)?,
            up: self.matrix(&format!("{prefix}.{}.weight", tensor::UP_PROJ), inter, h)?,
            down: self.matrix(&format!("{prefix}.{}.weight", tensor::DOWN_PROJ), h, inter)?,
        })
    }

    /// The router (`mlp.gate`) and the shared expert of layer `l`, if any: the shared
    /// expert's gate becomes the router's last row when the two are stored alike.
    pub(super) fn moe(&self, l: usize, h: usize, spec: &MoeSpec) -> Result<Moe> {
        let router = self.names.layer(l, self.names.router);
        let router_bias = if spec.router_bias {
            Some(self.vector(&format!("{router}.bias"), spec.experts)?)
        } else {
            None
        };
        let correction = match spec.router {
            RouterKind::Sigmoid { .. } => {
                Some(self.vector(&self.names.correction_bias(l), spec.experts)?)
            }
            _ => None,
        };
        let Some(inter) = spec.shared_expert else {
            return Ok(Moe {
                spec: *spec,
                router: self.matrix(&format!("{router}.weight"), spec.experts, h)?,
                router_bias,
                correction,
                shared: None,
            });
        };
        if !spec.shared_gate {
            // An ungated shared expert: in the cache when stored like the routed experts
            // (weight 1), else a dense MLP of its own.
            let views = shared_expert_views(self.ckpt, self.names, l, h, inter)?;
            let cached = self
                .store
                .layout(l)
                .is_some_and(|lay| stored_like(&views, lay));
            let shared = if cached {
                Shared::Cached
            } else {
                let p = self.names.layer(l, self.names.shared);
                let up = |k: usize, proj: &str| {
                    GpuMatrix::upload(self.gpu, &format!("{p}.{proj}.weight"), &views[k])
                };
                Shared::Dense(Box::new(DenseMlp {
                    gate: up(0, tensor::GATE_PROJ)?,
                    up: up(1, tensor::UP_PROJ)?,
                    down: up(2, tensor::DOWN_PROJ)?,
                }))
            };
            return Ok(Moe {
                spec: *spec,
                router: self.matrix(&format!("{router}.weight"), spec.experts, h)?,
                router_bias,
                correction,
                shared: Some(shared),
            });
        }
        if router_bias.is_some() {
            // The shared gate rides as the router's last row, which a bias of `experts`
            // values does not cover.
            return Err(Error::InvalidArgument(format!(
                "layer {l}: a router bias together with a shared expert is not supported"
            )));
        }
        let sg = self.names.layer(l, tensor::SHARED_EXPERT_GATE);
        let (rv, gv) = (
            self.ckpt.matrix(&router, spec.experts, h)?,
            self.ckpt.matrix(&sg, 1, h)?,
        );
        let both = [(&rv, 0, spec.experts), (&gv, 0, 1)];
        let fused_label = format!("{router}_and_shared_gate.weight");
        let views = shared_expert_views(self.ckpt, self.names, l, h, inter)?;
        let cached = rv.format == gv.format
            && self
                .store
                .layout(l)
                .is_some_and(|lay| stored_like(&views, lay));
        if cached {
            if let Some(router) = self.fuse_rows(&fused_label, &both)? {
                return Ok(Moe {
                    spec: *spec,
                    router,
                    router_bias,
                    correction,
                    shared: Some(Shared::Cached),
                });
            }
        }
        let mut shared = self.shared_expert(&self.names.layer(l, self.names.shared), &views)?;
        let router = match self.fuse_rows(&fused_label, &both)? {
            Some(fused) => fused,
            None => {
                shared.gate = Some(GpuMatrix::upload(self.gpu, &format!("{sg}.weight"), &gv)?);
                GpuMatrix::upload(self.gpu, &format!("{router}.weight"), &rv)?
            }
        };
        Ok(Moe {
            spec: *spec,
            router,
            router_bias,
            correction,
            shared: Some(Shared::Resident(Box::new(shared))),
        })
    }

    /// The shared expert `{p}.*` as resident matrices (its gate is placed by
    /// [`Loader::moe`]).
    pub(super) fn shared_expert(
        &self,
        p: &str,
        [gv, uv, dv]: &[MatrixView<'_>; 3],
    ) -> Result<SharedExpert> {
        let inter = gv.rows;
        let both = [(gv, 0, inter), (uv, 0, inter)];
        let gate_up = match self
            .fuse_rows(&format!("{p}.{}.weight", tensor::GATE_UP_PROJ), &both)?
        {
            Some(fused) => GateUp::Fused(fused),
            None => GateUp::Separate {
                gate: GpuMatrix::upload(
                    self.gpu,
                    &format!("{p}.{}.weight", tensor::GATE_PROJ),
                    gv,
                )?,
                up: GpuMatrix::upload(self.gpu, &format!("{p}.{}.weight", tensor::UP_PROJ), uv)?,
            },
        };
        Ok(SharedExpert {
            gate_up,
            down: GpuMatrix::upload(self.gpu, &format!("{p}.{}.weight", tensor::DOWN_PROJ), dv)?,
            gate: None,
        })
    }

    /// The attention block of layer `l` (`self_attn.*`).
    pub(super) fn attention(&self, l: usize, h: usize, spec: &AttentionSpec) -> Result<Attention> {
        let (gpu, ckpt) = (self.gpu, self.ckpt);
        let names = self.names;
        let hd = spec.head_dim;
        // With an output gate, q_proj yields `[q | gate]` per head.
        let q_rows = spec.heads * hd * if spec.output_gate { 2 } else { 1 };
        let qd = spec.heads * hd;
        let kvd = spec.kv_heads * hd;
        let opt_vector = |name: &str, len: usize| -> Result<Option<GpuVec>> {
            if spec.bias {
                self.vector(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let views = [
            ckpt.matrix(&names.layer(l, tensor::Q_PROJ), q_rows, h)?,
            ckpt.matrix(&names.layer(l, tensor::K_PROJ), kvd, h)?,
            ckpt.matrix(&names.layer(l, tensor::V_PROJ), kvd, h)?,
        ];
        let bias_names = [
            names.bias(l, tensor::Q_PROJ),
            names.bias(l, tensor::K_PROJ),
            names.bias(l, tensor::V_PROJ),
        ];
        let [q, k, v] = &views;
        let parts = [(q, 0, q_rows), (k, 0, kvd), (v, 0, kvd)];
        let qkv = match self.fuse_rows(&names.weight(l, tensor::QKV_PROJ), &parts)? {
            // Rows of q, then k, then v.
            Some(w) => {
                let bias = if spec.bias {
                    let mut all = ckpt.float(&bias_names[0], &[q_rows])?.to_f32();
                    all.extend(ckpt.float(&bias_names[1], &[kvd])?.to_f32());
                    all.extend(ckpt.float(&bias_names[2], &[kvd])?.to_f32());
                    Some(GpuVec::upload(gpu, &names.bias(l, tensor::QKV_PROJ), &all))
                } else {
                    None
                };
                Qkv::Fused { w, bias }
            }
            None => Qkv::Separate {
                q: GpuMatrix::upload(gpu, &names.weight(l, tensor::Q_PROJ), q)?,
                k: GpuMatrix::upload(gpu, &names.weight(l, tensor::K_PROJ), k)?,
                v: GpuMatrix::upload(gpu, &names.weight(l, tensor::V_PROJ), v)?,
                q_bias: opt_vector(&bias_names[0], q_rows)?,
                k_bias: opt_vector(&bias_names[1], kvd)?,
                v_bias: opt_vector(&bias_names[2], kvd)?,
            },
        };
        Ok(Attention {
            spec: *spec,
            qkv,
            o: self.matrix(&names.weight(l, tensor::O_PROJ), h, qd)?,
            o_bias: if spec.o_bias {
                Some(self.vector(&names.bias(l, tensor::O_PROJ), h)?)
            } else {
                None
            },
            q_norm: if spec.qk_norm {
                let width = if spec.qk_norm_whole { qd } else { hd };
                Some(self.norm(&names.weight(l, tensor::Q_NORM), width)?)
            } else {
                None
            },
            k_norm: if spec.qk_norm {
                let width = if spec.qk_norm_whole { kvd } else { hd };
                Some(self.norm(&names.weight(l, tensor::K_NORM), width)?)
            } else {
                None
            },
            sinks: if spec.sinks {
                Some(self.vector(&names.layer(l, tensor::SINKS), spec.heads)?)
            } else {
                None
            },
        })
    }
}

/// The error of row slices (`slices`, stored in `formats`) that the engine would fuse into
/// one matrix `label` but are not stored alike.
pub(super) fn concat_error(label: &str, slices: &[RowSlice], formats: &[WeightFormat]) -> Error {
    let first = (slices.first(), formats.first());
    let (s, f) = slices
        .iter()
        .zip(formats)
        .find(|(_, f)| Some(*f) != first.1)
        .map_or(first, |(s, f)| (Some(s), Some(f)));
    let name = |s: Option<&RowSlice>| s.map_or("?", |s| s.prefix.as_str()).to_string();
    let fmt = |f: Option<&WeightFormat>| f.map_or_else(|| "?".to_string(), |f| f.to_string());
    Error::InvalidArgument(format!(
        "{label}: {} is stored as {} where {} is {}; the engine fuses them into one matrix and needs them stored alike",
        name(s),
        fmt(f),
        name(first.0),
        fmt(first.1)
    ))
}

/// Layer `l`'s shared expert as stored: gate `[inter, h]`, up `[inter, h]`, down
/// `[h, inter]`.
pub(super) fn shared_expert_views<'a>(
    ckpt: &'a Checkpoint,
    names: &Names,
    l: usize,
    h: usize,
    inter: usize,
) -> Result<[MatrixView<'a>; 3]> {
    let p = names.layer(l, names.shared);
    Ok([
        ckpt.matrix(&format!("{p}.{}", tensor::GATE_PROJ), inter, h)?,
        ckpt.matrix(&format!("{p}.{}", tensor::UP_PROJ), inter, h)?,
        ckpt.matrix(&format!("{p}.{}", tensor::DOWN_PROJ), h, inter)?,
    ])
}

/// Whether gate, up and down `views` are stored exactly as `layout`'s tensors.
pub(super) fn stored_like(views: &[MatrixView<'_>; 3], layout: &ExpertLayout) -> bool {
    views
        .iter()
        .zip(&layout.tensors)
        .all(|(v, t)| v.format == t.format && v.rows == t.rows && v.cols == t.cols)
}

/// Layer `l`'s shared expert as an expert blob in `layout` (for its fixed slot in the
/// expert cache, [`Shared::Cached`]).
pub(crate) fn shared_expert_blob(
    cfg: &ModelConfig,
    ckpt: &Checkpoint,
    l: usize,
    layout: &ExpertLayout,
) -> Result<Vec<u8>> {
    let names = crate::arch::names(cfg, ckpt)?;
    let (h, inter) = (layout.tensors[0].cols, layout.tensors[0].rows);
    let views = shared_expert_views(ckpt, &names, l, h, inter)?;
    if !stored_like(&views, layout) {
        return Err(Error::InvalidArgument(format!(
            "the shared expert of layer {l} is not stored like the layer's routed experts"
        )));
    }
    let mut blob = vec![0u8; layout.bytes];
    for (v, t) in views.iter().zip(&layout.tensors) {
        let bytes = v.rows_bytes(0, v.rows);
        blob[t.offset..t.offset + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(blob)
}
