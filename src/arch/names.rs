//! Tensor names: where a family's checkpoints keep each weight.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// The naming scheme of one checkpoint: the prefix of the decoder's tensors and the LM
/// head's name, found by [`Names::detect`] among a family's candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// Prefix of the decoder's tensors (`model.`, `model.language_model.`, ...).
    pub prefix: &'static str,
    /// Full name of the LM head.
    pub lm_head: &'static str,
    /// The router's module path in a layer ([`tensor::ROUTER`], gpt-oss's `mlp.router`).
    pub router: &'static str,
    /// The MoE block's module path in a layer (`mlp`; Mixtral's `block_sparse_moe`):
    /// experts at `{moe}.experts.*`, mlx-lm's stacked ones at `{moe}.switch_mlp.*`.
    pub moe: &'static str,
    /// An expert's gate, up and down projections in per-expert checkpoints
    /// (`gate_proj`, `up_proj`, `down_proj`; Mixtral's `w1`, `w3`, `w2`).
    pub expert_projs: [&'static str; 3],
    /// The shared expert's module path in a layer ([`tensor::SHARED_EXPERT`]; GLM-4.5's
    /// and DeepSeek-V3's `mlp.shared_experts`).
    pub shared: &'static str,
}

impl Names {
    /// Hugging Face text models: `model.*`, `lm_head.weight`.
    pub const HF: Names = Names {
        prefix: "model.",
        lm_head: "lm_head.weight",
        router: tensor::ROUTER,
        moe: tensor::MLP,
        expert_projs: [tensor::GATE_PROJ, tensor::UP_PROJ, tensor::DOWN_PROJ],
        shared: tensor::SHARED_EXPERT,
    };

    /// [`Names::HF`] with another decoder prefix and LM head.
    pub const fn hf_at(prefix: &'static str, lm_head: &'static str) -> Names {
        Names {
            prefix,
            lm_head,
            ..Names::HF
        }
    }

    /// The first of `candidates` whose embedding the checkpoint holds and whose router
    /// some layer has (or, where none has, the first whose embedding it holds: a model
    /// without MoE layers).
    pub fn detect(ckpt: &Checkpoint, candidates: &[Names]) -> Result<Names> {
        let embedded = |n: &&Names| ckpt.contains(&n.embed());
        let routed = |n: &&Names| {
            let router = format!(".{}.", n.router);
            let layers = format!("{}layers.", n.prefix);
            ckpt.tensor_names()
                .any(|t| t.starts_with(&layers) && t.contains(&router))
        };
        candidates
            .iter()
            .filter(embedded)
            .find(routed)
            .or_else(|| candidates.iter().find(embedded))
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                name: candidates
                    .iter()
                    .map(Names::embed)
                    .collect::<Vec<_>>()
                    .join(" or "),
                dir: ckpt.dir().to_path_buf(),
            })
    }

    pub fn embed(&self) -> String {
        format!("{}embed_tokens.weight", self.prefix)
    }

    pub fn final_norm(&self) -> String {
        format!("{}norm.weight", self.prefix)
    }

    /// `{prefix}layers.{l}.{rest}`.
    pub fn layer(&self, l: usize, rest: &str) -> String {
        format!("{}layers.{l}.{rest}", self.prefix)
    }

    /// `{prefix}layers.{l}.{path}.weight` (`path` from [`tensor`]).
    pub fn weight(&self, l: usize, path: &str) -> String {
        self.layer(l, &format!("{path}.weight"))
    }

    /// `{prefix}layers.{l}.{path}.bias`.
    pub fn bias(&self, l: usize, path: &str) -> String {
        self.layer(l, &format!("{path}.bias"))
    }

    /// Per-expert tensor: `{prefix}layers.{l}.{moe}.experts.{e}.{proj}.weight`, `proj`
    /// one of [`tensor::GATE_PROJ`], [`tensor::UP_PROJ`], [`tensor::DOWN_PROJ`] (named as
    /// [`Names::expert_projs`] says).
    pub fn expert(&self, l: usize, e: usize, proj: &str) -> String {
        let proj = match proj {
            tensor::GATE_PROJ => self.expert_projs[0],
            tensor::UP_PROJ => self.expert_projs[1],
            tensor::DOWN_PROJ => self.expert_projs[2],
            other => other,
        };
        self.layer(l, &format!("{}.experts.{e}.{proj}.weight", self.moe))
    }

    /// Fused expert tensor (transformers v5): `{prefix}layers.{l}.{moe}.experts.{which}`.
    pub fn fused_experts(&self, l: usize, which: &str) -> String {
        self.layer(l, &format!("{}.experts.{which}", self.moe))
    }

    /// The router's selection bias (sigmoid routing: GLM-4.5, DeepSeek-V3):
    /// `{prefix}layers.{l}.{router}.e_score_correction_bias`.
    pub fn correction_bias(&self, l: usize) -> String {
        self.layer(l, &format!("{}.e_score_correction_bias", self.router))
    }

    /// Whether layer `l`'s experts are stacked as mlx-lm writes gpt-oss's
    /// (`{moe}.experts.gate_proj.weight`, not Hugging Face's fused `gate_up_proj`).
    pub fn mlx_stacked_experts(&self, ckpt: &Checkpoint, l: usize) -> bool {
        ckpt.contains(&self.fused_experts(l, &format!("{}.weight", tensor::GATE_PROJ)))
    }

    /// mlx-lm's stacked experts: `{moe}.switch_mlp.{proj}`, relative to the layer.
    pub fn switch_mlp(&self, proj: &str) -> String {
        format!("{}.switch_mlp.{proj}", self.moe)
    }
}

/// The module paths of a decoder layer's tensors, relative to `layers.{l}.`, as transformers
/// names them for the families here (their `.weight` / `.bias` suffix, where they have
/// one, is added by [`Names::weight`] and [`Names::bias`]).
pub(crate) mod tensor {
    pub const INPUT_NORM: &str = "input_layernorm";
    pub const POST_NORM: &str = "post_attention_layernorm";
    pub const Q_PROJ: &str = "self_attn.q_proj";
    pub const K_PROJ: &str = "self_attn.k_proj";
    pub const V_PROJ: &str = "self_attn.v_proj";
    pub const O_PROJ: &str = "self_attn.o_proj";
    /// The engine's fused q/k/v projection (a label, not a checkpoint tensor).
    pub const QKV_PROJ: &str = "self_attn.qkv_proj";
    pub const Q_NORM: &str = "self_attn.q_norm";
    /// Per-head attention sinks, `[heads]` (gpt-oss).
    pub const SINKS: &str = "self_attn.sinks";
    pub const K_NORM: &str = "self_attn.k_norm";
    /// Multi-head latent attention (DeepSeek-V3): the low-rank q path, the latent kv path
    /// and their norms.
    pub const Q_A_PROJ: &str = "self_attn.q_a_proj";
    pub const Q_A_NORM: &str = "self_attn.q_a_layernorm";
    pub const Q_B_PROJ: &str = "self_attn.q_b_proj";
    pub const KV_A_PROJ: &str = "self_attn.kv_a_proj_with_mqa";
    pub const KV_A_NORM: &str = "self_attn.kv_a_layernorm";
    pub const KV_B_PROJ: &str = "self_attn.kv_b_proj";
    /// mlx-lm's split of `kv_b_proj` into the absorbed per-head projections, `[heads,
    /// kv_lora_rank, qk_nope_head_dim]` (W_UK transposed) and `[heads, v_head_dim,
    /// kv_lora_rank]` (W_UV).
    pub const EMBED_Q: &str = "self_attn.embed_q";
    pub const UNEMBED_OUT: &str = "self_attn.unembed_out";
    /// A dense MLP: `mlp.{gate,up,down}_proj`.
    pub const MLP: &str = "mlp";
    pub const ROUTER: &str = "mlp.gate";
    pub const SHARED_EXPERT: &str = "mlp.shared_expert";
    pub const SHARED_EXPERT_GATE: &str = "mlp.shared_expert_gate";
    /// The projections of a SwiGLU MLP, relative to its module.
    pub const GATE_PROJ: &str = "gate_proj";
    pub const UP_PROJ: &str = "up_proj";
    pub const DOWN_PROJ: &str = "down_proj";
    /// The engine's fused gate and up projections (a label).
    pub const GATE_UP_PROJ: &str = "gate_up_proj";
    /// Gated DeltaNet (`linear_attn.*`).
    pub const CONV1D: &str = "linear_attn.conv1d";
    pub const A_LOG: &str = "linear_attn.A_log";
    pub const DT_BIAS: &str = "linear_attn.dt_bias";
    pub const GATED_NORM: &str = "linear_attn.norm";
    pub const OUT_PROJ: &str = "linear_attn.out_proj";
    /// The engine's fused `[q|k|v|z|b|a]` projection (a label).
    pub const IN_PROJ: &str = "linear_attn.in_proj";
    /// Qwen3.5's input projections.
    pub const IN_PROJ_QKV: &str = "linear_attn.in_proj_qkv";
    pub const IN_PROJ_Z: &str = "linear_attn.in_proj_z";
    pub const IN_PROJ_B: &str = "linear_attn.in_proj_b";
    pub const IN_PROJ_A: &str = "linear_attn.in_proj_a";
    /// Qwen3-Next's, grouped per key head.
    pub const IN_PROJ_QKVZ: &str = "linear_attn.in_proj_qkvz";
    pub const IN_PROJ_BA: &str = "linear_attn.in_proj_ba";
}
