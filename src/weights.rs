//! The resident (non-expert) weights, uploaded to the GPU once per model.

use crate::checkpoint::{Checkpoint, MatrixView};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::gpu::{Gpu, GpuMatrix, GpuVec};
use crate::names;

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
    pub qkv: Qkv,
    pub o: GpuMatrix,
    pub o_bias: Option<GpuVec>,
    pub q_norm: GpuVec,
    pub k_norm: GpuVec,
}

pub(crate) enum Mlp {
    Dense {
        gate: GpuMatrix,
        up: GpuMatrix,
        down: GpuMatrix,
    },
    Moe {
        router: GpuMatrix,
    },
}

pub(crate) struct Layer {
    pub input_norm: GpuVec,
    pub post_norm: GpuVec,
    pub attn: Attention,
    pub mlp: Mlp,
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
            let qkv: Vec<&GpuMatrix> = match &l.attn.qkv {
                Qkv::Fused { w, .. } => vec![w],
                Qkv::Separate { q, k, v, .. } => vec![q, k, v],
            };
            let mlp: Vec<&GpuMatrix> = match &l.mlp {
                Mlp::Dense { gate, up, down } => vec![gate, up, down],
                Mlp::Moe { router } => vec![router],
            };
            qkv.into_iter().chain([&l.attn.o]).chain(mlp)
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
        let h = cfg.hidden_size;
        let hd = cfg.head_dim;
        let qd = cfg.num_attention_heads * hd;
        let kvd = cfg.num_key_value_heads * hd;
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<GpuMatrix> {
            let prefix = name.strip_suffix(".weight").unwrap_or(name);
            let m = ckpt.matrix(prefix, rows, cols)?;
            GpuMatrix::upload(gpu, name, &m)
        };
        let vector = |name: &str, n: usize| -> Result<GpuVec> {
            let t = ckpt.float(name, &[n])?;
            Ok(GpuVec::upload(gpu, name, &t.to_f32()))
        };
        let opt_vector = |name: &str, n: usize| -> Result<Option<GpuVec>> {
            if cfg.attention_bias {
                vector(name, n).map(Some)
            } else {
                Ok(None)
            }
        };
        let embed = matrix(names::EMBED, cfg.vocab_size, h)?;
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains(names::LM_HEAD) {
            None
        } else {
            Some(matrix(names::LM_HEAD, cfg.vocab_size, h)?)
        };
        let final_norm = vector(names::FINAL_NORM, h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let n = |rest: &str| names::layer(l, rest);
            let views = [
                ckpt.matrix(&n("self_attn.q_proj"), qd, h)?,
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
                    rows: qd + 2 * kvd,
                    cols: h,
                    weight: &weight,
                    scales: &scales,
                    biases: &biases,
                };
                let bias = if cfg.attention_bias {
                    let mut all = ckpt.float(&bias_names[0], &[qd])?.to_f32();
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
                    q_bias: opt_vector(&bias_names[0], qd)?,
                    k_bias: opt_vector(&bias_names[1], kvd)?,
                    v_bias: opt_vector(&bias_names[2], kvd)?,
                }
            };
            let attn = Attention {
                qkv,
                o: matrix(&n("self_attn.o_proj.weight"), h, qd)?,
                o_bias: opt_vector(&n("self_attn.o_proj.bias"), h)?,
                q_norm: vector(&n("self_attn.q_norm.weight"), hd)?,
                k_norm: vector(&n("self_attn.k_norm.weight"), hd)?,
            };
            let mlp = if cfg.is_moe_layer(l) {
                Mlp::Moe {
                    router: matrix(&n("mlp.gate.weight"), cfg.num_experts, h)?,
                }
            } else {
                let i = cfg.intermediate_size;
                Mlp::Dense {
                    gate: matrix(&n("mlp.gate_proj.weight"), i, h)?,
                    up: matrix(&n("mlp.up_proj.weight"), i, h)?,
                    down: matrix(&n("mlp.down_proj.weight"), h, i)?,
                }
            };
            layers.push(Layer {
                input_norm: vector(&n("input_layernorm.weight"), h)?,
                post_norm: vector(&n("post_attention_layernorm.weight"), h)?,
                attn,
                mlp,
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
