//! The resident (non-expert) weights, uploaded to the GPU once per model.

use crate::arch::{AttentionSpec, Ffn, LinearAttentionSpec, Mixer, MoeSpec, Names, RowSlice};
use crate::checkpoint::{Checkpoint, MatrixView};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuMatrix, GpuVec};

/// The q, k and v projections: one matrix of `q_dim + 2 * kv_dim` rows (q, then k, then v)
/// when the three are stored alike, so a step runs one mat-vec for all three; separate
/// matrices otherwise (mixed-precision recipes quantize v_proj differently).
pub(crate) enum Qkv {
    Fused {
        w: GpuMatrix,
        bias: Option<GpuVec>,
    },
    Separate {
        q: GpuMatrix,
        k: GpuMatrix,
        v: GpuMatrix,
        q_bias: Option<GpuVec>,
        k_bias: Option<GpuVec>,
        v_bias: Option<GpuVec>,
    },
}

pub(crate) struct Attention {
    pub spec: AttentionSpec,
    pub qkv: Qkv,
    pub o: GpuMatrix,
    pub o_bias: Option<GpuVec>,
    pub q_norm: GpuVec,
    pub k_norm: GpuVec,
}

/// A dense SwiGLU MLP.
pub(crate) struct DenseMlp {
    pub gate: GpuMatrix,
    pub up: GpuMatrix,
    pub down: GpuMatrix,
}

/// The shared expert of a MoE block and its gate (`[1, hidden]`): its output is scaled by
/// `sigmoid(gate . x)` per token.
pub(crate) struct SharedExpert {
    /// gate_proj and up_proj: one matrix of `2 inter` rows (gate, then up) when stored
    /// alike, so a step runs one mat-vec for both; separate otherwise.
    pub gate_up: GateUp,
    pub down: GpuMatrix,
    /// `shared_expert_gate`, `[1, hidden]`; `None` when it is the router's last row
    /// ([`Moe::router`]), so one mat-vec computes both.
    pub gate: Option<GpuMatrix>,
}

/// The gate and up projections of a SwiGLU MLP.
pub(crate) enum GateUp {
    Fused(GpuMatrix),
    Separate { gate: GpuMatrix, up: GpuMatrix },
}

/// The resident part of a MoE block (the routed experts stream through the cache).
pub(crate) struct Moe {
    pub spec: MoeSpec,
    /// `mlp.gate`, `[experts, hidden]`, or `[experts + 1, hidden]` with the shared expert's
    /// gate as its last row when the two are stored alike.
    pub router: GpuMatrix,
    pub shared: Option<SharedExpert>,
}

/// A Gated DeltaNet layer's weights.
pub(crate) struct LinearAttention {
    pub spec: LinearAttentionSpec,
    /// The input projections as one matrix, rows `[q | k | v | z | b | a]`.
    pub proj: GpuMatrix,
    /// The depthwise convolution, `[channels, conv_kernel]`, f32.
    pub conv: GpuVec,
    /// `A_log` and `dt_bias`, `[value_heads]` each.
    pub a_log: GpuVec,
    pub dt_bias: GpuVec,
    /// The gated RMSNorm's weight, `[value_dim]` (plain, not zero-centred).
    pub norm: GpuVec,
    /// `out_proj`, `[hidden, value_heads * value_dim]`.
    pub out: GpuMatrix,
}

/// A layer's token mixer, as its plan says.
pub(crate) enum MixerWeights {
    Attention(Attention),
    LinearAttention(LinearAttention),
}

/// A layer's feed-forward block, as its plan says.
pub(crate) enum FfnWeights {
    Dense(DenseMlp),
    Moe(Moe),
}

pub(crate) struct Layer {
    pub input_norm: GpuVec,
    pub post_norm: GpuVec,
    pub mixer: MixerWeights,
    pub ffn: FfnWeights,
}

pub(crate) struct Weights {
    pub embed: GpuMatrix,
    /// `None` when the LM head is tied to the embedding.
    pub lm_head: Option<GpuMatrix>,
    pub final_norm: GpuVec,
    pub layers: Vec<Layer>,
}

impl Weights {
    pub fn lm_head(&self) -> &GpuMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Every resident matrix (the embedding and LM head, each layer's projections).
    pub fn matrices(&self) -> impl Iterator<Item = &GpuMatrix> {
        let layers = self.layers.iter().flat_map(|l| {
            let mixer: Vec<&GpuMatrix> = match &l.mixer {
                MixerWeights::Attention(a) => match &a.qkv {
                    Qkv::Fused { w, .. } => vec![w, &a.o],
                    Qkv::Separate { q, k, v, .. } => vec![q, k, v, &a.o],
                },
                MixerWeights::LinearAttention(a) => vec![&a.proj, &a.out],
            };
            let ffn: Vec<&GpuMatrix> = match &l.ffn {
                FfnWeights::Dense(d) => vec![&d.gate, &d.up, &d.down],
                FfnWeights::Moe(m) => {
                    let mut v = vec![&m.router];
                    if let Some(sh) = &m.shared {
                        match &sh.gate_up {
                            GateUp::Fused(gu) => v.push(gu),
                            GateUp::Separate { gate, up } => v.extend([gate, up]),
                        }
                        v.push(&sh.down);
                        v.extend(&sh.gate);
                    }
                    v
                }
            };
            mixer.into_iter().chain(ffn)
        });
        std::iter::once(&self.embed)
            .chain(self.lm_head.as_ref())
            .chain(layers)
    }

    /// Bytes of resident weights on the GPU.
    pub fn bytes(&self) -> u64 {
        self.matrices().map(GpuMatrix::bytes).sum()
    }

    pub fn load(gpu: &Gpu, cfg: &ModelConfig, ckpt: &Checkpoint) -> Result<Weights> {
        let names = crate::arch::names(cfg, ckpt)?;
        let family = crate::arch::family_of(cfg);
        let ld = Loader {
            gpu,
            ckpt,
            names: &names,
            norm_shift: if family.zero_centred_norms() && !is_mlx(ckpt, cfg, &names) {
                1.0
            } else {
                0.0
            },
        };
        let h = cfg.hidden_size;
        let embed = ld.matrix(&names.embed(), cfg.vocab_size, h)?;
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains(names.lm_head) {
            None
        } else {
            Some(ld.matrix(names.lm_head, cfg.vocab_size, h)?)
        };
        let final_norm = ld.norm(&names.final_norm(), h)?;
        let mut layers = Vec::with_capacity(cfg.layers.len());
        for (l, plan) in cfg.layers.iter().enumerate() {
            let n = |rest: &str| names.layer(l, rest);
            let mixer = match &plan.mixer {
                Mixer::Attention(spec) => MixerWeights::Attention(ld.attention(l, h, spec)?),
                Mixer::LinearAttention(spec) => {
                    MixerWeights::LinearAttention(ld.linear_attention(
                        l,
                        h,
                        spec,
                        &family.linear_projection(&names, l, spec, ckpt)?,
                    )?)
                }
            };
            let ffn = match &plan.ffn {
                Ffn::Moe(spec) => FfnWeights::Moe(ld.moe(&n("mlp"), h, spec)?),
                Ffn::Dense { inter } => FfnWeights::Dense(ld.dense(&n("mlp"), h, *inter)?),
            };
            layers.push(Layer {
                input_norm: ld.norm(&n("input_layernorm.weight"), h)?,
                post_norm: ld.norm(&n("post_attention_layernorm.weight"), h)?,
                mixer,
                ffn,
            });
        }
        gpu.check()?;
        Ok(Weights {
            embed,
            lm_head,
            final_norm,
            layers,
        })
    }
}

/// Whether a checkpoint of a zero-centred-norm family was written by mlx-lm's converter,
/// which stores the norms as `1 + w` (and the conv1d weights as `[C, K, 1]` instead of
/// `[C, 1, K]`, which tells them apart); also any MLX-named checkpoint.
pub(crate) fn is_mlx(ckpt: &Checkpoint, cfg: &ModelConfig, names: &Names) -> bool {
    if names.prefix.starts_with("language_model.") {
        return true;
    }
    let linear = cfg
        .layers
        .iter()
        .position(|p| p.linear_attention().is_some());
    match linear {
        Some(l) => ckpt
            .entry(&names.layer(l, "linear_attn.conv1d.weight"))
            .is_ok_and(|e| e.shape.len() == 3 && e.shape[1] != 1 && e.shape[2] == 1),
        None => false,
    }
}

/// Uploads the tensors of one checkpoint by name.
struct Loader<'a> {
    gpu: &'a Gpu,
    ckpt: &'a Checkpoint,
    names: &'a Names,
    /// Added to every RMSNorm weight but the gated one's: 1 for the zero-centred norms of
    /// Hugging Face checkpoints of Qwen3.5 (the model multiplies by `1 + w`), else 0.
    norm_shift: f32,
}

impl Loader<'_> {
    /// An RMSNorm weight of `n` values, `norm_shift` added.
    fn norm(&self, name: &str, n: usize) -> Result<GpuVec> {
        let mut w = self.ckpt.float(name, &[n])?.to_f32();
        if self.norm_shift != 0.0 {
            w.iter_mut().for_each(|v| *v += self.norm_shift);
        }
        Ok(GpuVec::upload(self.gpu, name, &w))
    }

    /// A float tensor of `n` values in any shape whose dims multiply to `n` (conv1d
    /// weights are `[C, 1, K]` or `[C, K, 1]`), as f32.
    fn flat(&self, name: &str, n: usize, expected: &[usize]) -> Result<GpuVec> {
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
        let t = self.ckpt.float(name, &shape)?;
        Ok(GpuVec::upload(self.gpu, name, &t.to_f32()))
    }

    /// One matrix made of row slices of the checkpoint's matrices (all of `cols` columns
    /// and stored alike), in order.
    fn concat_rows(&self, label: &str, slices: &[RowSlice], cols: usize) -> Result<GpuMatrix> {
        let mut views = Vec::with_capacity(slices.len());
        for s in slices {
            views.push(self.ckpt.matrix(&s.prefix, s.rows, cols)?);
        }
        let format = views[0].format;
        if let Some((s, v)) = slices.iter().zip(&views).find(|(_, v)| v.format != format) {
            return Err(Error::InvalidArgument(format!(
                "{label}: {} is stored as {} where {} is {format}; the engine fuses them into one matrix and needs them stored alike",
                s.prefix, v.format, slices[0].prefix
            )));
        }
        let rows: usize = slices.iter().map(|s| s.count).sum();
        let cat = |part: usize| -> Vec<u8> {
            let mut out = Vec::new();
            for (s, v) in slices.iter().zip(&views) {
                let bytes = [v.weight, v.scales, v.biases][part];
                let per_row = bytes.len() / s.rows.max(1);
                out.extend_from_slice(&bytes[s.start * per_row..(s.start + s.count) * per_row]);
            }
            out
        };
        let (weight, scales, biases) = (cat(0), cat(1), cat(2));
        let fused = MatrixView {
            format,
            rows,
            cols,
            weight: &weight,
            scales: &scales,
            biases: &biases,
        };
        GpuMatrix::upload(self.gpu, label, &fused)
    }

    /// The Gated DeltaNet layer `l` (`linear_attn.*`), its input projections gathered by
    /// the family's `slices`.
    fn linear_attention(
        &self,
        l: usize,
        h: usize,
        spec: &LinearAttentionSpec,
        slices: &[RowSlice],
    ) -> Result<LinearAttention> {
        let n = |rest: &str| self.names.layer(l, &format!("linear_attn.{rest}"));
        let rows: usize = slices.iter().map(|s| s.count).sum();
        if rows != spec.projection_rows() {
            return Err(Error::InvalidArgument(format!(
                "layer {l}: the linear-attention projections give {rows} rows, the config implies {}",
                spec.projection_rows()
            )));
        }
        Ok(LinearAttention {
            spec: *spec,
            proj: self.concat_rows(&n("in_proj.weight"), slices, h)?,
            conv: self.flat(
                &n("conv1d.weight"),
                spec.conv_channels() * spec.conv_kernel,
                &[spec.conv_channels(), 1, spec.conv_kernel],
            )?,
            a_log: self.vector(&n("A_log"), spec.value_heads)?,
            dt_bias: self.vector(&n("dt_bias"), spec.value_heads)?,
            norm: self.vector(&n("norm.weight"), spec.value_dim)?,
            out: self.matrix(&n("out_proj.weight"), h, spec.value_width())?,
        })
    }

    /// A matrix `[rows, cols]` (float, or MLX-quantized `.weight` + `.scales` + `.biases`).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<GpuMatrix> {
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let m = self.ckpt.matrix(prefix, rows, cols)?;
        GpuMatrix::upload(self.gpu, name, &m)
    }

    /// A float vector of `n` values, uploaded as f32.
    fn vector(&self, name: &str, n: usize) -> Result<GpuVec> {
        let t = self.ckpt.float(name, &[n])?;
        Ok(GpuVec::upload(self.gpu, name, &t.to_f32()))
    }

    /// A SwiGLU MLP `{prefix}.{gate,up,down}_proj.weight` of width `inter`.
    fn dense(&self, prefix: &str, h: usize, inter: usize) -> Result<DenseMlp> {
        Ok(DenseMlp {
            gate: self.matrix(&format!("{prefix}.gate_proj.weight"), inter, h)?,
            up: self.matrix(&format!("{prefix}.up_proj.weight"), inter, h)?,
            down: self.matrix(&format!("{prefix}.down_proj.weight"), h, inter)?,
        })
    }

    /// The router `{prefix}.gate` and the shared expert, if any: the shared expert's gate
    /// becomes the router's last row when the two are stored alike.
    fn moe(&self, prefix: &str, h: usize, spec: &MoeSpec) -> Result<Moe> {
        let router = format!("{prefix}.gate");
        let Some(inter) = spec.shared_expert else {
            return Ok(Moe {
                spec: *spec,
                router: self.matrix(&format!("{router}.weight"), spec.experts, h)?,
                shared: None,
            });
        };
        let mut shared = self.shared_expert(prefix, h, inter)?;
        let sg = format!("{prefix}.shared_expert_gate");
        let (rv, gv) = (
            self.ckpt.matrix(&router, spec.experts, h)?,
            self.ckpt.matrix(&sg, 1, h)?,
        );
        let router = if rv.format == gv.format {
            let slices = [
                RowSlice {
                    prefix: router.clone(),
                    rows: spec.experts,
                    start: 0,
                    count: spec.experts,
                },
                RowSlice {
                    prefix: sg,
                    rows: 1,
                    start: 0,
                    count: 1,
                },
            ];
            self.concat_rows(&format!("{router}_and_shared_gate.weight"), &slices, h)?
        } else {
            shared.gate = Some(GpuMatrix::upload(self.gpu, &format!("{sg}.weight"), &gv)?);
            GpuMatrix::upload(self.gpu, &format!("{router}.weight"), &rv)?
        };
        Ok(Moe {
            spec: *spec,
            router,
            shared: Some(shared),
        })
    }

    /// The shared expert `{prefix}.shared_expert.*` of width `inter` (its gate is placed
    /// by [`Loader::moe`]).
    fn shared_expert(&self, prefix: &str, h: usize, inter: usize) -> Result<SharedExpert> {
        let p = format!("{prefix}.shared_expert");
        let (g, u) = (format!("{p}.gate_proj"), format!("{p}.up_proj"));
        let (gv, uv) = (
            self.ckpt.matrix(&g, inter, h)?,
            self.ckpt.matrix(&u, inter, h)?,
        );
        let gate_up = if gv.format == uv.format {
            let slice = |prefix: &str| RowSlice {
                prefix: prefix.to_string(),
                rows: inter,
                start: 0,
                count: inter,
            };
            GateUp::Fused(self.concat_rows(
                &format!("{p}.gate_up_proj.weight"),
                &[slice(&g), slice(&u)],
                h,
            )?)
        } else {
            GateUp::Separate {
                gate: GpuMatrix::upload(self.gpu, &format!("{g}.weight"), &gv)?,
                up: GpuMatrix::upload(self.gpu, &format!("{u}.weight"), &uv)?,
            }
        };
        Ok(SharedExpert {
            gate_up,
            down: self.matrix(&format!("{p}.down_proj.weight"), h, inter)?,
            gate: None,
        })
    }

    /// The attention block of layer `l` (`self_attn.*`).
    fn attention(&self, l: usize, h: usize, spec: &AttentionSpec) -> Result<Attention> {
        let (gpu, ckpt) = (self.gpu, self.ckpt);
        let n = |rest: &str| self.names.layer(l, rest);
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
            ckpt.matrix(&n("self_attn.q_proj"), q_rows, h)?,
            ckpt.matrix(&n("self_attn.k_proj"), kvd, h)?,
            ckpt.matrix(&n("self_attn.v_proj"), kvd, h)?,
        ];
        let bias_names = [
            n("self_attn.q_proj.bias"),
            n("self_attn.k_proj.bias"),
            n("self_attn.v_proj.bias"),
        ];
        let qkv = if views.iter().all(|v| v.format == views[0].format) {
            // Rows of q, then k, then v, for each part (codes, scales, biases).
            let cat = |part: usize| -> Vec<u8> {
                views
                    .iter()
                    .flat_map(|v| [v.weight, v.scales, v.biases][part].iter().copied())
                    .collect()
            };
            let (weight, scales, biases) = (cat(0), cat(1), cat(2));
            let fused = MatrixView {
                format: views[0].format,
                rows: q_rows + 2 * kvd,
                cols: h,
                weight: &weight,
                scales: &scales,
                biases: &biases,
            };
            let bias = if spec.bias {
                let mut all = ckpt.float(&bias_names[0], &[q_rows])?.to_f32();
                all.extend(ckpt.float(&bias_names[1], &[kvd])?.to_f32());
                all.extend(ckpt.float(&bias_names[2], &[kvd])?.to_f32());
                Some(GpuVec::upload(gpu, &n("self_attn.qkv_proj.bias"), &all))
            } else {
                None
            };
            Qkv::Fused {
                w: GpuMatrix::upload(gpu, &n("self_attn.qkv_proj.weight"), &fused)?,
                bias,
            }
        } else {
            let [q, k, v] = views;
            Qkv::Separate {
                q: GpuMatrix::upload(gpu, &n("self_attn.q_proj.weight"), &q)?,
                k: GpuMatrix::upload(gpu, &n("self_attn.k_proj.weight"), &k)?,
                v: GpuMatrix::upload(gpu, &n("self_attn.v_proj.weight"), &v)?,
                q_bias: opt_vector(&bias_names[0], q_rows)?,
                k_bias: opt_vector(&bias_names[1], kvd)?,
                v_bias: opt_vector(&bias_names[2], kvd)?,
            }
        };
        Ok(Attention {
            spec: *spec,
            qkv,
            o: self.matrix(&n("self_attn.o_proj.weight"), h, qd)?,
            o_bias: opt_vector(&n("self_attn.o_proj.bias"), h)?,
            q_norm: self.norm(&n("self_attn.q_norm.weight"), hd)?,
            k_norm: self.norm(&n("self_attn.k_norm.weight"), hd)?,
        })
    }
}
