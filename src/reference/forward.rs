//! The whole-model forward pass on the CPU, with every weight held as `f32`.

use crate::arch::{tensor, Mixer, RouterKind};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::store::{ExpertRole, ExpertStore};

use super::linear_attn::{
    causal_conv1d_silu, delta_gates, gated_delta_rule, gated_rms_norm, DeltaNetShape,
};
use super::ops::{add_bias, attention_with, matmul, rms_norm, rope, rope_tables_scaled};
use super::router::{router_sigmoid_groups, router_topk, router_topk_softmax};
use super::weights::{
    AttentionWeights, LayerWeights, LinearAttentionWeights, MixerWeights, MlpWeights, SwigluWeights,
};

/// The routing decision of one MoE layer for every token.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Routing {
    /// `n x k` chosen experts, by rank.
    pub ids: Vec<u32>,
    /// `n x k` weights, matching `ids`.
    pub weights: Vec<f32>,
}

/// Intermediate results of [`ReferenceModel::forward_trace`], for locating where another
/// implementation first diverges.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Trace {
    /// The embeddings, `n x hidden`.
    pub embeddings: Vec<f32>,
    /// The residual stream after each decoder layer, each `n x hidden`.
    pub layer_outputs: Vec<Vec<f32>>,
    /// Per decoder layer, the routing of its tokens (`None` for dense layers).
    pub routing: Vec<Option<Routing>>,
    /// The final-norm output, `n x hidden`.
    pub final_hidden: Vec<f32>,
    /// Logits at every position, `n` rows of `vocab_size`.
    pub logits: Vec<Vec<f32>>,
}

/// A plain, unoptimized f32 CPU implementation of the forward pass of every supported
/// family, following HF transformers' eager implementations (`modeling_qwen3_moe.py`,
/// `modeling_qwen3_5_moe.py`, `modeling_qwen3_next.py`) block by block as the model's
/// layer plan says: the oracle the GPU kernels are tested against.
///
/// Every weight (experts included) is decoded to f32 and held in memory, so this is for
/// test-sized models only.
#[derive(Debug, Clone)]
pub struct ReferenceModel {
    cfg: ModelConfig,
    embed: Vec<f32>,
    layers: Vec<LayerWeights>,
    final_norm: Vec<f32>,
    /// `None` when the LM head is the embedding matrix.
    lm_head: Option<Vec<f32>>,
}

impl ReferenceModel {
    /// Loads every weight as f32: the non-expert weights from `ckpt`, the experts through
    /// `store` (decoding each tensor of its [`ExpertLayout`](crate::store::ExpertLayout)), so the
    /// reference sees exactly the bytes the engine would stream.
    ///
    /// The LM head is `lm_head.weight`; when `tie_word_embeddings` is set and that tensor
    /// is absent, the embedding matrix (as HF does: when both are present it keeps
    /// `lm_head.weight`).
    pub fn new(cfg: &ModelConfig, ckpt: &Checkpoint, store: &dyn ExpertStore) -> Result<Self> {
        let h = cfg.hidden_size;
        let names = crate::arch::names(cfg, ckpt)?;
        let family = crate::arch::family_of(cfg);
        let shift =
            if family.zero_centred_norms() && !crate::engine::weights::is_mlx(ckpt, cfg, &names) {
                1.0
            } else {
                0.0
            };
        // Matrices may be MLX-quantized (`.weight` codes + `.scales` + `.biases`): they are
        // dequantized in f32, `f32(scale) * q + f32(bias)`.
        let load = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            match (name.strip_suffix(".weight"), shape) {
                (Some(prefix), &[rows, cols]) => Ok(ckpt.matrix(prefix, rows, cols)?.to_f32()),
                _ => Ok(ckpt.float(name, shape)?.to_f32()),
            }
        };
        let norm = |name: &str, n: usize| -> Result<Vec<f32>> {
            Ok(load(name, &[n])?.into_iter().map(|w| w + shift).collect())
        };
        let embed = load(&names.embed(), &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.layers.len());
        for (l, plan) in cfg.layers.iter().enumerate() {
            let w = |path: &str, shape: &[usize]| load(&names.weight(l, path), shape);
            // A SwiGLU projection `{module}.{proj}`.
            let sw = |module: &str, proj: &str, shape: &[usize]| {
                load(&names.weight(l, &format!("{module}.{proj}")), shape)
            };
            let mixer = match &plan.mixer {
                Mixer::Mla(spec) => {
                    let (nh, dq) = (spec.heads, spec.qk_nope_head_dim + spec.qk_rope_head_dim);
                    let (r, dr, dv) = (spec.kv_lora_rank, spec.qk_rope_head_dim, spec.v_head_dim);
                    let bias = |p: &str, n: usize| -> Result<Option<Vec<f32>>> {
                        if spec.bias {
                            Ok(Some(load(&names.bias(l, p), &[n])?))
                        } else {
                            Ok(None)
                        }
                    };
                    let q = match spec.q_lora_rank {
                        Some(ql) => super::MlaQuery::LowRank {
                            a: w(tensor::Q_A_PROJ, &[ql, h])?,
                            a_bias: bias(tensor::Q_A_PROJ, ql)?,
                            norm: norm(&names.weight(l, tensor::Q_A_NORM), ql)?,
                            b: w(tensor::Q_B_PROJ, &[nh * dq, ql])?,
                        },
                        None => super::MlaQuery::Full(w(tensor::Q_PROJ, &[nh * dq, h])?),
                    };
                    MixerWeights::Mla(super::MlaWeights {
                        spec: *spec,
                        q,
                        kv_a: w(tensor::KV_A_PROJ, &[r + dr, h])?,
                        kv_a_bias: bias(tensor::KV_A_PROJ, r + dr)?,
                        kv_a_norm: norm(&names.weight(l, tensor::KV_A_NORM), r)?,
                        kv_b: if ckpt.contains(&names.weight(l, tensor::EMBED_Q)) {
                            // mlx-lm's absorbed form, joined back.
                            let dn = spec.qk_nope_head_dim;
                            let stacked = |path: &str, rows: usize, cols: usize| {
                                ckpt.matrix_stacked(&names.layer(l, path), nh, rows, cols)
                                    .map(|m| m.to_f32())
                            };
                            crate::arch::deepseek_v3::absorb::join_kv_b(
                                spec,
                                &stacked(tensor::EMBED_Q, r, dn)?,
                                &stacked(tensor::UNEMBED_OUT, dv, r)?,
                            )
                        } else {
                            w(tensor::KV_B_PROJ, &[nh * (spec.qk_nope_head_dim + dv), r])?
                        },
                        o: w(tensor::O_PROJ, &[h, nh * dv])?,
                        o_bias: bias(tensor::O_PROJ, h)?,
                    })
                }
                Mixer::Attention(spec) => {
                    let hd = spec.head_dim;
                    let q_rows = spec.heads * hd * if spec.output_gate { 2 } else { 1 };
                    let (qd, kvd) = (spec.heads * hd, spec.kv_heads * hd);
                    let qkvo_bias = if spec.bias {
                        Some([
                            load(&names.bias(l, tensor::Q_PROJ), &[q_rows])?,
                            load(&names.bias(l, tensor::K_PROJ), &[kvd])?,
                            load(&names.bias(l, tensor::V_PROJ), &[kvd])?,
                            if spec.o_bias {
                                load(&names.bias(l, tensor::O_PROJ), &[h])?
                            } else {
                                vec![0.0; h]
                            },
                        ])
                    } else {
                        None
                    };
                    MixerWeights::Attention(AttentionWeights {
                        spec: *spec,
                        q_proj: w(tensor::Q_PROJ, &[q_rows, h])?,
                        k_proj: w(tensor::K_PROJ, &[kvd, h])?,
                        v_proj: w(tensor::V_PROJ, &[kvd, h])?,
                        o_proj: w(tensor::O_PROJ, &[h, qd])?,
                        qkvo_bias,
                        q_norm: if spec.qk_norm {
                            let width = if spec.qk_norm_whole { qd } else { hd };
                            norm(&names.weight(l, tensor::Q_NORM), width)?
                        } else {
                            Vec::new()
                        },
                        k_norm: if spec.qk_norm {
                            let width = if spec.qk_norm_whole { kvd } else { hd };
                            norm(&names.weight(l, tensor::K_NORM), width)?
                        } else {
                            Vec::new()
                        },
                        sinks: if spec.sinks {
                            Some(load(&names.layer(l, tensor::SINKS), &[spec.heads])?)
                        } else {
                            None
                        },
                    })
                }
                Mixer::LinearAttention(spec) => {
                    let mut proj = Vec::with_capacity(spec.projection_rows() * h);
                    for sl in family.linear_projection(&names, l, spec, ckpt)? {
                        let m = ckpt.matrix(&sl.prefix, sl.rows, h)?.to_f32();
                        proj.extend_from_slice(&m[sl.start * h..(sl.start + sl.count) * h]);
                    }
                    if proj.len() != spec.projection_rows() * h {
                        return Err(Error::InvalidArgument(format!(
                            "layer {l}: the linear-attention projections give {} rows, the config implies {}",
                            proj.len() / h,
                            spec.projection_rows()
                        )));
                    }
                    let conv_name = names.weight(l, tensor::CONV1D);
                    let conv_shape = ckpt.entry(&conv_name)?.shape.clone();
                    let conv = ckpt.float(&conv_name, &conv_shape)?.to_f32();
                    if conv.len() != spec.conv_channels() * spec.conv_kernel {
                        return Err(Error::Shape {
                            name: conv_name.clone(),
                            path: ckpt.path_of(ckpt.entry(&conv_name)?).to_path_buf(),
                            expected: vec![spec.conv_channels(), 1, spec.conv_kernel],
                            found: conv_shape,
                        });
                    }
                    MixerWeights::LinearAttention(LinearAttentionWeights {
                        spec: *spec,
                        proj,
                        conv,
                        a_log: load(&names.layer(l, tensor::A_LOG), &[spec.value_heads])?,
                        dt_bias: load(&names.layer(l, tensor::DT_BIAS), &[spec.value_heads])?,
                        norm: w(tensor::GATED_NORM, &[spec.value_dim])?,
                        out_proj: w(tensor::OUT_PROJ, &[h, spec.value_width()])?,
                    })
                }
            };
            let mlp = match plan.moe() {
                Some(spec) => {
                    let router = w(names.router, &[spec.experts, h])?;
                    let router_bias = if spec.router_bias {
                        Some(load(&names.bias(l, names.router), &[spec.experts])?)
                    } else {
                        None
                    };
                    let mlx_layout = names.mlx_stacked_experts(ckpt, l);
                    let experts = if spec.expert_bias && !mlx_layout {
                        // gpt-oss's Hugging Face layouts: read from the checkpoint by the
                        // family's own decoder, independently of the store's rearranging.
                        crate::arch::gpt_oss::experts::experts_f32(
                            ckpt,
                            &names,
                            l,
                            (spec.experts, h, spec.inter),
                        )?
                        .into_iter()
                        .map(|x| SwigluWeights {
                            gate: x.gate,
                            up: x.up,
                            down: x.down,
                            inter: spec.inter,
                            bias: Some([x.gate_bias, x.up_bias, x.down_bias]),
                        })
                        .collect()
                    } else {
                        (0..spec.experts)
                            .map(|e| load_expert(cfg, store, l, e))
                            .collect::<Result<Vec<_>>>()?
                    };
                    let shared = match spec.shared_expert {
                        Some(i) => Some((
                            SwigluWeights {
                                gate: sw(names.shared, tensor::GATE_PROJ, &[i, h])?,
                                up: sw(names.shared, tensor::UP_PROJ, &[i, h])?,
                                down: sw(names.shared, tensor::DOWN_PROJ, &[h, i])?,
                                inter: i,
                                bias: None,
                            },
                            if spec.shared_gate {
                                Some(w(tensor::SHARED_EXPERT_GATE, &[1, h])?)
                            } else {
                                None
                            },
                        )),
                        None => None,
                    };
                    let correction = match spec.router {
                        RouterKind::Sigmoid { .. } => {
                            Some(load(&names.correction_bias(l), &[spec.experts])?)
                        }
                        _ => None,
                    };
                    MlpWeights::Moe {
                        spec: *spec,
                        router,
                        router_bias,
                        correction,
                        experts,
                        shared,
                    }
                }
                None => {
                    let d = cfg.intermediate_size;
                    MlpWeights::Dense(SwigluWeights {
                        gate: sw(tensor::MLP, tensor::GATE_PROJ, &[d, h])?,
                        up: sw(tensor::MLP, tensor::UP_PROJ, &[d, h])?,
                        down: sw(tensor::MLP, tensor::DOWN_PROJ, &[h, d])?,
                        inter: d,
                        bias: None,
                    })
                }
            };
            layers.push(LayerWeights {
                input_norm: norm(&names.weight(l, tensor::INPUT_NORM), h)?,
                mixer,
                post_norm: norm(&names.weight(l, tensor::POST_NORM), h)?,
                mlp,
            });
        }
        let final_norm = norm(&names.final_norm(), h)?;
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains(names.lm_head) {
            None
        } else {
            Some(load(names.lm_head, &[cfg.vocab_size, h])?)
        };
        Ok(ReferenceModel {
            cfg: cfg.clone(),
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The embedding matrix, `[vocab_size, hidden]`.
    pub fn embedding(&self) -> &[f32] {
        &self.embed
    }

    /// The weights of every decoder layer.
    pub fn layers(&self) -> &[LayerWeights] {
        &self.layers
    }

    /// The final norm weight, `[hidden]`.
    pub fn final_norm(&self) -> &[f32] {
        &self.final_norm
    }

    /// The LM head, `[vocab_size, hidden]` (the embedding matrix when tied).
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// Logits at every position of one causal pass over `ids` from position 0: `ids.len()`
    /// rows of `vocab_size`.
    pub fn forward(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward_trace(ids)?.logits)
    }

    /// Like [`forward`](Self::forward), also returning the intermediate results.
    pub fn forward_trace(&self, ids: &[u32]) -> Result<Trace> {
        let cfg = &self.cfg;
        let n = ids.len();
        let x = self.embed(ids)?;
        let (cos, sin) =
            rope_tables_scaled(cfg.rope_theta, cfg.rotary_dim, n, cfg.rope_scaling.as_ref());
        let embeddings = x.clone();
        let mut x = x;
        let mut layer_outputs = Vec::with_capacity(self.layers.len());
        let mut routing = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (out, r) = self.layer_forward(layer, &x, n, &cos, &sin);
            x = out;
            layer_outputs.push(x.clone());
            routing.push(r);
        }
        let final_hidden = rms_norm(&x, &self.final_norm, cfg.rms_norm_eps);
        let v = cfg.vocab_size;
        let flat = matmul(self.lm_head(), v, cfg.hidden_size, &final_hidden, n);
        let logits = flat.chunks_exact(v).map(<[f32]>::to_vec).collect();
        Ok(Trace {
            embeddings,
            layer_outputs,
            routing,
            final_hidden,
            logits,
        })
    }

    /// The embeddings of `ids`, `n x hidden`; [`Error::TokenOutOfRange`] for an id not below
    /// `vocab_size`.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let mut x = Vec::with_capacity(ids.len() * h);
        for (index, &id) in ids.iter().enumerate() {
            let row = id as usize;
            if row >= self.cfg.vocab_size {
                return Err(Error::TokenOutOfRange {
                    id,
                    index,
                    vocab_size: self.cfg.vocab_size,
                });
            }
            x.extend_from_slice(&self.embed[row * h..(row + 1) * h]);
        }
        Ok(x)
    }

    /// One decoder layer on `x` (`n x hidden`, positions `0..n`):
    /// `h = x + attn(input_norm(x))`, `out = h + mlp(post_norm(h))`.
    fn layer_forward(
        &self,
        layer: &LayerWeights,
        x: &[f32],
        n: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> (Vec<f32>, Option<Routing>) {
        let eps = self.cfg.rms_norm_eps;
        let normed = rms_norm(x, &layer.input_norm, eps);
        let attn = match &layer.mixer {
            MixerWeights::Attention(a) => self.attention_block(a, &normed, n, cos, sin),
            MixerWeights::LinearAttention(a) => self.linear_attention_block(a, &normed, n),
            MixerWeights::Mla(a) => a.forward(&normed, n, self.cfg.hidden_size, cos, sin),
        };
        let h: Vec<f32> = x.iter().zip(&attn).map(|(a, b)| a + b).collect();
        let normed = rms_norm(&h, &layer.post_norm, eps);
        let (mlp, routing) = self.mlp_block(&layer.mlp, &normed, n);
        let out = h.iter().zip(&mlp).map(|(a, b)| a + b).collect();
        (out, routing)
    }

    /// Self-attention of a layer on its normed input `x` (`n x hidden`, positions `0..n`):
    /// q/k/v projections (+ biases), per-head RMSNorm of q and k, RoPE of the first
    /// `rotary_dim` dims, causal GQA attention, the output gate `sigmoid(gate)` where the
    /// variant has one, o projection (+ bias). Returns `n x hidden`.
    fn attention_block(
        &self,
        a: &AttentionWeights,
        x: &[f32],
        n: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Vec<f32> {
        let cfg = &self.cfg;
        let spec = &a.spec;
        let h = cfg.hidden_size;
        let (nh, nkv, hd) = (spec.heads, spec.kv_heads, spec.head_dim);
        let q_rows = nh * hd * if spec.output_gate { 2 } else { 1 };
        let mut qg = matmul(&a.q_proj, q_rows, h, x, n);
        let mut k = matmul(&a.k_proj, nkv * hd, h, x, n);
        let mut v = matmul(&a.v_proj, nkv * hd, h, x, n);
        if let Some([qb, kb, vb, _]) = &a.qkvo_bias {
            add_bias(&mut qg, qb);
            add_bias(&mut k, kb);
            add_bias(&mut v, vb);
        }
        // With an output gate, each head's rows are `[q | gate]`.
        let (q, gate) = if spec.output_gate {
            let mut q = Vec::with_capacity(n * nh * hd);
            let mut g = Vec::with_capacity(n * nh * hd);
            for head in qg.chunks_exact(2 * hd) {
                q.extend_from_slice(&head[..hd]);
                g.extend_from_slice(&head[hd..]);
            }
            (q, Some(g))
        } else {
            (qg, None)
        };
        // q_norm / k_norm: RMSNorm over head_dim, each head of each token a row (or,
        // with weights of a whole projection, each token's projection a row).
        let (mut q, mut k) = if spec.qk_norm {
            (
                rms_norm(&q, &a.q_norm, cfg.rms_norm_eps),
                rms_norm(&k, &a.k_norm, cfg.rms_norm_eps),
            )
        } else {
            (q, k)
        };
        if let Some(c) = spec.clip_qkv {
            for x in q.iter_mut().chain(k.iter_mut()).chain(v.iter_mut()) {
                *x = x.clamp(-c, c);
            }
        }
        rope(&mut q, n, nh, hd, spec.rotary_dim, 0, cos, sin);
        rope(&mut k, n, nkv, hd, spec.rotary_dim, 0, cos, sin);
        let mut att = attention_with(
            &q,
            &k,
            &v,
            (n, 0),
            (nh, nkv, hd),
            a.sinks.as_deref(),
            spec.sliding_window,
        );
        if let Some(g) = gate {
            for (o, g) in att.iter_mut().zip(&g) {
                *o *= 1.0 / (1.0 + (-g).exp());
            }
        }
        let mut o = matmul(&a.o_proj, h, nh * hd, &att, n);
        if let Some([_, _, _, ob]) = &a.qkvo_bias {
            add_bias(&mut o, ob);
        }
        o
    }

    /// A Gated DeltaNet layer on its normed input `x` (`n x hidden`, from the start of the
    /// sequence): the projections, the causal conv1d + SiLU over q/k/v, the gates, the
    /// delta rule, the gated RMSNorm with `silu(z)`, out_proj. Returns `n x hidden`.
    fn linear_attention_block(&self, a: &LinearAttentionWeights, x: &[f32], n: usize) -> Vec<f32> {
        let spec = &a.spec;
        let h = self.cfg.hidden_size;
        let rows = spec.projection_rows();
        let (ch, vw, hv) = (spec.conv_channels(), spec.value_width(), spec.value_heads);
        let proj = matmul(&a.proj, rows, h, x, n);
        let cols = |from: usize, width: usize| -> Vec<f32> {
            proj.chunks_exact(rows)
                .flat_map(|r| r[from..from + width].iter().copied())
                .collect()
        };
        let (u, z, b, av) = (
            cols(0, ch),
            cols(ch, vw),
            cols(ch + vw, hv),
            cols(ch + vw + hv, hv),
        );
        let mut conv_state = vec![0.0f32; (spec.conv_kernel - 1) * ch];
        let y = causal_conv1d_silu(&u, &a.conv, &mut conv_state, n, ch, spec.conv_kernel);
        let kd = spec.key_heads * spec.key_dim;
        let q = y
            .chunks_exact(ch)
            .flat_map(|r| r[..kd].iter().copied())
            .collect::<Vec<_>>();
        let k = y
            .chunks_exact(ch)
            .flat_map(|r| r[kd..2 * kd].iter().copied())
            .collect::<Vec<_>>();
        let v = y
            .chunks_exact(ch)
            .flat_map(|r| r[2 * kd..].iter().copied())
            .collect::<Vec<_>>();
        let mut beta = Vec::with_capacity(n * hv);
        let mut g = Vec::with_capacity(n * hv);
        for t in 0..n {
            for head in 0..hv {
                let (bt, gt) = delta_gates(
                    b[t * hv + head],
                    av[t * hv + head],
                    a.a_log[head],
                    a.dt_bias[head],
                );
                beta.push(bt);
                g.push(gt);
            }
        }
        let shape = DeltaNetShape {
            key_heads: spec.key_heads,
            value_heads: hv,
            key_dim: spec.key_dim,
            value_dim: spec.value_dim,
        };
        let mut state = vec![0.0f32; shape.state_len()];
        let o = gated_delta_rule(shape, n, &q, &k, &v, &beta, &g, &mut state);
        let normed = gated_rms_norm(&o, &z, &a.norm, self.cfg.rms_norm_eps);
        matmul(&a.out_proj, h, vw, &normed, n)
    }

    /// The MLP of a layer on its normed input `x` (`n x hidden`).
    ///
    /// MoE: `sum_j w_j * expert_{id_j}(x)`. Per token the weighted expert outputs are added
    /// in increasing expert index, as HF's eager loop over experts does.
    fn mlp_block(&self, mlp: &MlpWeights, x: &[f32], n: usize) -> (Vec<f32>, Option<Routing>) {
        let cfg = &self.cfg;
        let h = cfg.hidden_size;
        match mlp {
            MlpWeights::Dense(w) => (w.forward(x, n, h), None),
            MlpWeights::Moe {
                spec,
                router,
                router_bias,
                correction,
                experts,
                shared,
            } => {
                let ne = experts.len();
                let k = spec.top_k;
                let mut logits = matmul(router, ne, h, x, n);
                if let Some(b) = router_bias {
                    add_bias(&mut logits, b);
                }
                let (ids, weights) = match (spec.router, correction) {
                    (RouterKind::TopKSoftmax, _) => router_topk_softmax(&logits, ne, k),
                    (
                        RouterKind::Sigmoid {
                            groups,
                            topk_groups,
                            scale,
                        },
                        Some(c),
                    ) => router_sigmoid_groups(
                        &logits,
                        c,
                        ne,
                        k,
                        (groups, topk_groups),
                        spec.norm_topk_prob,
                        scale,
                    ),
                    _ => router_topk(&logits, ne, k, spec.norm_topk_prob),
                };
                let mut out = vec![0.0f32; n * h];
                for t in 0..n {
                    let xt = &x[t * h..(t + 1) * h];
                    let mut chosen: Vec<(u32, f32)> = ids[t * k..(t + 1) * k]
                        .iter()
                        .copied()
                        .zip(weights[t * k..(t + 1) * k].iter().copied())
                        .collect();
                    chosen.sort_by_key(|&(e, _)| e);
                    let ot = &mut out[t * h..(t + 1) * h];
                    for (e, w) in chosen {
                        let y = experts[e as usize].forward_with(xt, 1, h, spec.activation);
                        for (o, yv) in ot.iter_mut().zip(&y) {
                            *o += yv * w;
                        }
                    }
                }
                if let Some((mlp, gate)) = shared {
                    let y = mlp.forward(x, n, h);
                    let g = gate.as_ref().map(|gate| matmul(gate, 1, h, x, n));
                    for t in 0..n {
                        let s = g.as_ref().map_or(1.0, |g| 1.0 / (1.0 + (-g[t]).exp()));
                        for (o, yv) in out[t * h..(t + 1) * h].iter_mut().zip(&y[t * h..]) {
                            *o += s * yv;
                        }
                    }
                }
                (out, Some(Routing { ids, weights }))
            }
        }
    }
}

/// Reads expert `e` of layer `l` from the store and decodes its three tensors to f32,
/// checking the layout against the config.
fn load_expert(
    cfg: &ModelConfig,
    store: &dyn ExpertStore,
    l: usize,
    e: usize,
) -> Result<SwigluWeights> {
    let (h, i) = (cfg.hidden_size, cfg.moe_intermediate_size);
    let bad = |reason: String| Error::ExpertRead {
        layer: l,
        expert: e,
        reason,
        cause: None,
    };
    let layout = store
        .layout(l)
        .ok_or_else(|| bad("the store has no expert layout for this MoE layer".into()))?;
    let mut blob = vec![0u8; layout.bytes];
    store.read_expert(l, e, &mut blob)?;
    let decode = |role: ExpertRole, rows: usize, cols: usize| -> Result<Vec<f32>> {
        let t = layout.tensor(role);
        if t.role != role || t.rows != rows || t.cols != cols {
            return Err(bad(format!(
                "the store's layout gives {:?} [{}, {}] where the config implies {role:?} [{rows}, {cols}]",
                t.role, t.rows, t.cols
            )));
        }
        let bytes = blob.get(t.offset..t.offset + t.len()).ok_or_else(|| {
            bad(format!(
                "the store's layout places {role:?} at bytes {}..{}, past the blob's {} bytes",
                t.offset,
                t.offset + t.len(),
                layout.bytes
            ))
        })?;
        Ok(t.format.decode(bytes, rows, cols))
    };
    let gate = decode(ExpertRole::Gate, i, h)?;
    let up = decode(ExpertRole::Up, i, h)?;
    let down = decode(ExpertRole::Down, h, i)?;
    // Biases (gpt-oss), f32 after each matrix.
    let bias = |role: ExpertRole| -> Result<Option<Vec<f32>>> {
        let t = layout.tensor(role);
        let Some(o) = t.bias else { return Ok(None) };
        let bytes = blob
            .get(o..o + 4 * t.rows)
            .ok_or_else(|| bad(format!("the {role:?} bias lies past the blob")))?;
        Ok(Some(DType::F32.decode(bytes)))
    };
    let bias = match (
        bias(ExpertRole::Gate)?,
        bias(ExpertRole::Up)?,
        bias(ExpertRole::Down)?,
    ) {
        (Some(g), Some(u), Some(d)) => Some([g, u, d]),
        (None, None, None) => None,
        _ => return Err(bad("biases on some projections only".into())),
    };
    Ok(SwigluWeights {
        gate,
        up,
        down,
        inter: i,
        bias,
    })
}
