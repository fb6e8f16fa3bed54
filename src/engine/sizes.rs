//! The resident weights' GPU bytes from the checkpoint's headers alone: the loader's
//! choices (q, k and v fused or apart, shared experts in the expert cache or resident, FP8
//! rows decoded to f32, matrices split into chunks that each fit one binding) made on the
//! tensors' formats and shapes as [`Loader`](super::loader::Loader) makes them, without
//! reading their data or touching a GPU. The memory plan is built on it, and
//! `ModelBuilder::build` checks that the load allocated exactly what it says.

use super::loader::{concat_error, shared_expert_views, stored_like};
use super::weights::LinearConsts;
use crate::arch::{
    tensor, AttentionSpec, Ffn, LinearAttentionSpec, Mixer, MlaSpec, MoeSpec, Names, RouterKind,
    RowSlice,
};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::gpu::matrix_layout;
use crate::gpu::storage_size;
use crate::store::ExpertStore;

/// What the resident weights take on the GPU.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResidentSizes {
    /// Bytes of every resident weight buffer (matrix chunks, norms, biases, constants).
    pub bytes: u64,
    /// The largest of those buffers: its tensor and bytes.
    pub largest: Option<(String, u64)>,
    /// The MoE layers whose shared expert rides in the expert cache (`Shared::Cached`).
    pub cached_shared: Vec<usize>,
}

/// The resident weights of `cfg`'s checkpoint on a device whose storage bindings hold
/// `limits.0` bytes (`limits.1` names the limit), with `store`'s expert layouts deciding
/// where shared experts run.
pub(crate) fn resident_sizes(
    cfg: &ModelConfig,
    ckpt: &Checkpoint,
    store: &dyn ExpertStore,
    limits: (u64, &'static str),
) -> Result<ResidentSizes> {
    let names = crate::arch::names(cfg, ckpt)?;
    let family = crate::arch::family_of(cfg);
    let mut t = Tally {
        ckpt,
        store,
        names: &names,
        limits,
        out: ResidentSizes::default(),
    };
    let h = cfg.hidden_size;
    t.matrix(&names.embed(), cfg.vocab_size, h)?;
    // The LM head, unless tied to the embedding and absent (`Weights::load`).
    if !cfg.tie_word_embeddings || ckpt.contains(names.lm_head) {
        t.matrix(names.lm_head, cfg.vocab_size, h)?;
    }
    t.vector(&names.final_norm(), h)?;
    for (l, plan) in cfg.layers.iter().enumerate() {
        match &plan.mixer {
            Mixer::Mla(spec) => t.mla(l, h, spec)?,
            Mixer::Attention(spec) => t.attention(l, h, spec)?,
            Mixer::LinearAttention(spec) => {
                let slices = family.linear_projection(&names, l, spec, ckpt)?;
                t.linear_attention(l, h, spec, &slices)?
            }
        }
        match &plan.ffn {
            Ffn::Moe(spec) => t.moe(l, h, spec)?,
            Ffn::Dense { inter } => t.dense(&names.layer(l, tensor::MLP), h, *inter)?,
        }
        t.vector(&names.weight(l, tensor::INPUT_NORM), h)?;
        t.vector(&names.weight(l, tensor::POST_NORM), h)?;
    }
    Ok(t.out)
}

/// Adds up the buffers the loader would upload.
struct Tally<'a> {
    ckpt: &'a Checkpoint,
    store: &'a dyn ExpertStore,
    names: &'a Names,
    limits: (u64, &'static str),
    out: ResidentSizes,
}

impl Tally<'_> {
    fn add(&mut self, label: &str, bytes: u64) {
        self.out.bytes = self.out.bytes.saturating_add(bytes);
        if self.out.largest.as_ref().is_none_or(|(_, b)| bytes > *b) {
            self.out.largest = Some((label.to_string(), bytes));
        }
    }

    /// A matrix of `format` `[rows, cols]` uploaded as `label` (`GpuMatrix::upload`):
    /// its chunks and their bytes.
    fn view(
        &mut self,
        label: &str,
        format: WeightFormat,
        rows: usize,
        cols: usize,
    ) -> Result<(usize, u64)> {
        let (format, chunks) = matrix_layout(label, format, rows, cols, self.limits)?;
        let mut total = 0u64;
        for &(_, n) in &chunks {
            let b = storage_size(format.stored_bytes(n, cols) as u64);
            self.add(label, b);
            total = total.saturating_add(b);
        }
        Ok((chunks.len(), total))
    }

    /// `Loader::matrix`.
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<()> {
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let m = self.ckpt.matrix(prefix, rows, cols)?;
        self.view(name, m.format, m.rows, m.cols).map(|_| ())
    }

    /// `n` f32 values (`GpuVec::upload`).
    fn floats(&mut self, label: &str, n: usize) {
        self.add(label, storage_size((n as u64).saturating_mul(4)));
    }

    /// `Loader::vector` and `Loader::norm`: a float tensor `[n]`, checked, as f32.
    fn vector(&mut self, name: &str, n: usize) -> Result<()> {
        self.ckpt.float(name, &[n])?;
        self.floats(name, n);
        Ok(())
    }

    /// `Loader::dense`.
    fn dense(&mut self, prefix: &str, h: usize, inter: usize) -> Result<()> {
        self.matrix(&format!("{prefix}.{}.weight", tensor::GATE_PROJ), inter, h)?;
        self.matrix(&format!("{prefix}.{}.weight", tensor::UP_PROJ), inter, h)?;
        self.matrix(&format!("{prefix}.{}.weight", tensor::DOWN_PROJ), h, inter)
    }

    /// `Loader::attention`.
    fn attention(&mut self, l: usize, h: usize, spec: &AttentionSpec) -> Result<()> {
        let names = self.names;
        let hd = spec.head_dim;
        let q_rows = spec.heads * hd * if spec.output_gate { 2 } else { 1 };
        let qd = spec.heads * hd;
        let kvd = spec.kv_heads * hd;
        let views = [
            self.ckpt
                .matrix(&names.layer(l, tensor::Q_PROJ), q_rows, h)?,
            self.ckpt.matrix(&names.layer(l, tensor::K_PROJ), kvd, h)?,
            self.ckpt.matrix(&names.layer(l, tensor::V_PROJ), kvd, h)?,
        ];
        let formats = views.each_ref().map(|v| v.format);
        let bias_names = [
            names.bias(l, tensor::Q_PROJ),
            names.bias(l, tensor::K_PROJ),
            names.bias(l, tensor::V_PROJ),
        ];
        let lens = [q_rows, kvd, kvd];
        if formats.iter().all(|&f| f == formats[0]) {
            self.view(
                &names.weight(l, tensor::QKV_PROJ),
                formats[0],
                q_rows + 2 * kvd,
                h,
            )?;
            if spec.bias {
                for (name, n) in bias_names.iter().zip(lens) {
                    self.ckpt.float(name, &[n])?;
                }
                self.floats(&names.bias(l, tensor::QKV_PROJ), q_rows + 2 * kvd);
            }
        } else {
            let weights = [tensor::Q_PROJ, tensor::K_PROJ, tensor::V_PROJ];
            for (v, proj) in views.iter().zip(weights) {
                self.view(&names.weight(l, proj), v.format, v.rows, v.cols)?;
            }
            if spec.bias {
                for (name, n) in bias_names.iter().zip(lens) {
                    self.vector(name, n)?;
                }
            }
        }
        self.matrix(&names.weight(l, tensor::O_PROJ), h, qd)?;
        if spec.o_bias {
            self.vector(&names.bias(l, tensor::O_PROJ), h)?;
        }
        if spec.qk_norm {
            let (q, k) = if spec.qk_norm_whole {
                (qd, kvd)
            } else {
                (hd, hd)
            };
            self.vector(&names.weight(l, tensor::Q_NORM), q)?;
            self.vector(&names.weight(l, tensor::K_NORM), k)?;
        }
        if spec.sinks {
            self.vector(&names.layer(l, tensor::SINKS), spec.heads)?;
        }
        Ok(())
    }

    /// `Loader::mla`.
    fn mla(&mut self, l: usize, h: usize, spec: &MlaSpec) -> Result<()> {
        let names = self.names;
        let (nh, dn, dr, dv, r) = (
            spec.heads,
            spec.qk_nope_head_dim,
            spec.qk_rope_head_dim,
            spec.v_head_dim,
            spec.kv_lora_rank,
        );
        let w = |path: &str| names.weight(l, path);
        match spec.q_lora_rank {
            Some(ql) => {
                self.matrix(&w(tensor::Q_A_PROJ), ql, h)?;
                if spec.bias {
                    self.vector(&names.bias(l, tensor::Q_A_PROJ), ql)?;
                }
                self.vector(&w(tensor::Q_A_NORM), ql)?;
                self.matrix(&w(tensor::Q_B_PROJ), nh * (dn + dr), ql)?;
            }
            None => self.matrix(&w(tensor::Q_PROJ), nh * (dn + dr), h)?,
        }
        // The absorbed per-head projections: as stored (mlx-lm), or split from kv_b_proj
        // in its float dtype (f32 from other formats).
        let absorbed = if self.ckpt.contains(&w(tensor::EMBED_Q)) {
            let e = self
                .ckpt
                .matrix_stacked(&names.layer(l, tensor::EMBED_Q), nh, r, dn)?;
            let u = self
                .ckpt
                .matrix_stacked(&names.layer(l, tensor::UNEMBED_OUT), nh, dv, r)?;
            [(e.format, e.rows, e.cols), (u.format, u.rows, u.cols)]
        } else {
            let kv_b = self
                .ckpt
                .matrix(&names.layer(l, tensor::KV_B_PROJ), nh * (dn + dv), r)?;
            let f = match kv_b.format {
                WeightFormat::Float(d) => WeightFormat::Float(d),
                _ => WeightFormat::Float(DType::F32),
            };
            [(f, nh * r, dn), (f, nh * dv, r)]
        };
        for ((format, rows, cols), path) in absorbed
            .into_iter()
            .zip([tensor::EMBED_Q, tensor::UNEMBED_OUT])
        {
            let (chunks, bytes) = self.view(&w(path), format, rows, cols)?;
            if chunks != 1 {
                return Err(absorbed_too_large(l, rows, cols, bytes, self.limits));
            }
        }
        self.matrix(&w(tensor::KV_A_PROJ), r + dr, h)?;
        if spec.bias {
            self.vector(&names.bias(l, tensor::KV_A_PROJ), r + dr)?;
        }
        self.vector(&w(tensor::KV_A_NORM), r)?;
        self.matrix(&w(tensor::O_PROJ), h, nh * dv)?;
        if spec.bias {
            self.vector(&names.bias(l, tensor::O_PROJ), h)?;
        }
        Ok(())
    }

    /// `Loader::linear_attention`.
    fn linear_attention(
        &mut self,
        l: usize,
        h: usize,
        spec: &LinearAttentionSpec,
        slices: &[RowSlice],
    ) -> Result<()> {
        let n = |path: &str| self.names.weight(l, path);
        let rows: usize = slices.iter().map(|s| s.count).sum();
        if rows != spec.projection_rows() {
            return Err(Error::InvalidArgument(format!(
                "layer {l}: the linear-attention projections give {rows} rows, the config implies {}",
                spec.projection_rows()
            )));
        }
        let conv_len = spec.conv_channels() * spec.conv_kernel;
        let conv = n(tensor::CONV1D);
        let entry = self.ckpt.entry(&conv)?;
        if entry.shape.iter().product::<usize>() != conv_len {
            return Err(Error::Shape {
                name: conv.clone(),
                path: self.ckpt.path_of(entry).to_path_buf(),
                found: entry.shape.clone(),
                expected: vec![spec.conv_channels(), 1, spec.conv_kernel],
            });
        }
        self.ckpt.float(&conv, &entry.shape.clone())?;
        self.ckpt
            .float(&self.names.layer(l, tensor::A_LOG), &[spec.value_heads])?;
        self.ckpt
            .float(&self.names.layer(l, tensor::DT_BIAS), &[spec.value_heads])?;
        self.ckpt.float(&n(tensor::GATED_NORM), &[spec.value_dim])?;
        let label = n(tensor::IN_PROJ);
        let mut formats = Vec::with_capacity(slices.len());
        for s in slices {
            formats.push(self.ckpt.matrix(&s.prefix, s.rows, h)?.format);
        }
        if formats.iter().any(|&f| Some(f) != formats.first().copied()) {
            return Err(concat_error(&label, slices, &formats));
        }
        if let Some(&f) = formats.first() {
            self.view(&label, f, rows, h)?;
        }
        let at = LinearConsts::new(conv_len, spec.value_heads, spec.value_dim);
        self.floats(
            &format!("layer {l} linear-attention constants"),
            at.norm + spec.value_dim,
        );
        self.matrix(&n(tensor::OUT_PROJ), h, spec.value_width())
    }

    /// `Loader::moe`, noting the layers whose shared expert rides in the expert cache.
    fn moe(&mut self, l: usize, h: usize, spec: &MoeSpec) -> Result<()> {
        let names = self.names;
        let router = names.layer(l, names.router);
        if spec.router_bias {
            self.vector(&format!("{router}.bias"), spec.experts)?;
        }
        if let RouterKind::Sigmoid { .. } = spec.router {
            self.vector(&names.correction_bias(l), spec.experts)?;
        }
        let Some(inter) = spec.shared_expert else {
            return self.matrix(&format!("{router}.weight"), spec.experts, h);
        };
        let stored_like_experts = |views: &[_; 3]| {
            self.store
                .layout(l)
                .is_some_and(|lay| stored_like(views, lay))
        };
        if !spec.shared_gate {
            let views = shared_expert_views(self.ckpt, names, l, h, inter)?;
            if stored_like_experts(&views) {
                self.out.cached_shared.push(l);
            } else {
                let p = names.layer(l, names.shared);
                let projs = [tensor::GATE_PROJ, tensor::UP_PROJ, tensor::DOWN_PROJ];
                for (v, proj) in views.iter().zip(projs) {
                    self.view(&format!("{p}.{proj}.weight"), v.format, v.rows, v.cols)?;
                }
            }
            return self.matrix(&format!("{router}.weight"), spec.experts, h);
        }
        if spec.router_bias {
            return Err(Error::InvalidArgument(format!(
                "layer {l}: a router bias together with a shared expert is not supported"
            )));
        }
        let sg = names.layer(l, tensor::SHARED_EXPERT_GATE);
        let (rv, gv) = (
            self.ckpt.matrix(&router, spec.experts, h)?,
            self.ckpt.matrix(&sg, 1, h)?,
        );
        let fused_label = format!("{router}_and_shared_gate.weight");
        let views = shared_expert_views(self.ckpt, names, l, h, inter)?;
        if rv.format == gv.format && stored_like_experts(&views) {
            self.out.cached_shared.push(l);
            return self
                .view(&fused_label, rv.format, spec.experts + 1, h)
                .map(|_| ());
        }
        // `Loader::shared_expert`: gate and up fused when stored alike.
        let p = names.layer(l, names.shared);
        let [g, u, d] = &views;
        if g.format == u.format {
            let label = format!("{p}.{}.weight", tensor::GATE_UP_PROJ);
            self.view(&label, g.format, g.rows + u.rows, h)?;
        } else {
            self.view(
                &format!("{p}.{}.weight", tensor::GATE_PROJ),
                g.format,
                g.rows,
                g.cols,
            )?;
            self.view(
                &format!("{p}.{}.weight", tensor::UP_PROJ),
                u.format,
                u.rows,
                u.cols,
            )?;
        }
        self.view(
            &format!("{p}.{}.weight", tensor::DOWN_PROJ),
            d.format,
            d.rows,
            d.cols,
        )?;
        if rv.format == gv.format {
            self.view(&fused_label, rv.format, spec.experts + 1, h)?;
        } else {
            self.view(&format!("{sg}.weight"), gv.format, 1, h)?;
            self.view(&format!("{router}.weight"), rv.format, spec.experts, h)?;
        }
        Ok(())
    }
}

/// The error of an absorbed latent-attention projection (`embed_q`, `unembed_out`) that
/// does not fit one binding: their batched mat-vec binds each whole.
pub(crate) fn absorbed_too_large(
    l: usize,
    rows: usize,
    cols: usize,
    bytes: u64,
    (limit, limit_name): (u64, &'static str),
) -> Error {
    Error::DeviceLimit {
        what: format!("layer {l}: an absorbed latent-attention projection of {rows} x {cols}"),
        requested: bytes,
        limit_name,
        limit,
    }
}
