//! The resident (non-expert) weights, uploaded to the GPU once per model.

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::gpu::{Gpu, GpuMatrix, GpuVec};
use crate::names;

pub(crate) struct Attention {
    pub q: GpuMatrix,
    pub k: GpuMatrix,
    pub v: GpuMatrix,
    pub o: GpuMatrix,
    pub q_bias: Option<GpuVec>,
    pub k_bias: Option<GpuVec>,
    pub v_bias: Option<GpuVec>,
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

    /// Bytes of resident weights on the GPU.
    pub fn bytes(&self) -> u64 {
        let mut total = self.embed.bytes() + self.lm_head.as_ref().map_or(0, GpuMatrix::bytes);
        for l in &self.layers {
            total += l.attn.q.bytes() + l.attn.k.bytes() + l.attn.v.bytes() + l.attn.o.bytes();
            total += match &l.mlp {
                Mlp::Dense { gate, up, down } => gate.bytes() + up.bytes() + down.bytes(),
                Mlp::Moe { router } => router.bytes(),
            };
        }
        total
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
            let attn = Attention {
                q: matrix(&n("self_attn.q_proj.weight"), qd, h)?,
                k: matrix(&n("self_attn.k_proj.weight"), kvd, h)?,
                v: matrix(&n("self_attn.v_proj.weight"), kvd, h)?,
                o: matrix(&n("self_attn.o_proj.weight"), h, qd)?,
                q_bias: opt_vector(&n("self_attn.q_proj.bias"), qd)?,
                k_bias: opt_vector(&n("self_attn.k_proj.bias"), kvd)?,
                v_bias: opt_vector(&n("self_attn.v_proj.bias"), kvd)?,
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
