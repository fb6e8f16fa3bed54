//! Synthetic Mixtral checkpoints ([`SyntheticSpec::llama_moe`] with
//! [`LlamaMoeFamily::Mixtral`]), and the Llama-attention MoE writer OLMoE's shares:
//! q/k/v/o without biases, a softmax router, SwiGLU experts. Quantized specs are written in
//! mlx-community's layout (`switch_mlp` experts, the router at 8 bits where the width
//! allows, as the Qwen3 writer does), float specs with the released per-expert names
//! (Mixtral's `w1` / `w3` / `w2`).

use crate::arch::{tensor, Names};
use crate::synthetic::{embed_and_head, Fill, Lazy, MatrixFn, SyntheticSpec};

/// The family of a [`SyntheticLlamaMoe`] spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LlamaMoeFamily {
    /// Mixtral (`block_sparse_moe`, top-k renormalized).
    Mixtral,
    /// OLMoE (q/k norms over each token's whole projection, top-k not renormalized).
    Olmoe,
}

/// The Mixtral / OLMoE part of a [`SyntheticSpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SyntheticLlamaMoe {
    /// Which family.
    pub family: LlamaMoeFamily,
    /// OLMoE's `clip_qkv` (ignored for Mixtral).
    pub clip_qkv: Option<f32>,
}

impl SyntheticLlamaMoe {
    /// A spec of `family` without `clip_qkv`.
    pub fn new(family: LlamaMoeFamily) -> Self {
        SyntheticLlamaMoe {
            family,
            clip_qkv: None,
        }
    }
}

/// The released `config.json` of a Mixtral spec.
pub(crate) fn config_json(spec: &SyntheticSpec) -> serde_json::Value {
    let mut config = serde_json::json!({
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.moe_intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "num_local_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "sliding_window": null,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "synthetic": true,
    });
    add_quantization(spec, &mut config);
    config
}

/// mlx-lm's `quantization` keys for a quantized spec.
pub(crate) fn add_quantization(spec: &SyntheticSpec, config: &mut serde_json::Value) {
    if let (Some((bits, group)), Some(obj)) = (spec.quant, config.as_object_mut()) {
        let q = serde_json::json!({"group_size": group, "bits": bits});
        obj.insert("quantization".into(), q.clone());
        obj.insert("quantization_config".into(), q);
    }
}

/// The tensors of a Mixtral or OLMoE spec: `names` the family's, `qk_norm_whole` OLMoE's
/// q/k norms over each token's whole projection; `router_quant` the router's
/// quantization in a quantized spec.
pub(crate) fn tensors(
    spec: &SyntheticSpec,
    names: &Names,
    qk_norm_whole: bool,
    router_quant: Option<(u32, u32)>,
    make: &dyn Fn(String, safetensors::Dtype, Vec<usize>, Fill) -> (String, Lazy),
    matrix: &MatrixFn<'_>,
) -> Vec<(String, Lazy)> {
    let (h, hd, i, ne) = (
        spec.hidden_size,
        spec.head_dim,
        spec.moe_intermediate_size,
        spec.num_experts,
    );
    let (qd, kvd) = (spec.num_heads * hd, spec.num_kv_heads * hd);
    let q = spec.quant;
    let fdt = spec.dtype.to_safetensors();
    let norm = |name: String, n: usize| {
        make(
            name,
            fdt,
            vec![n],
            Fill::Float {
                scale: 0.1,
                offset: 1.0,
            },
        )
    };
    let w = |cols: usize| 1.0 / (cols as f32).sqrt();
    let strip = |n: &str| n.trim_end_matches(".weight").to_string();
    let mut out = embed_and_head(spec, names, matrix, q);
    out.push(norm(names.final_norm(), h));
    for l in 0..spec.num_layers {
        let n = |rest: &str| names.layer(l, rest);
        out.push(norm(names.weight(l, tensor::INPUT_NORM), h));
        out.push(norm(names.weight(l, tensor::POST_NORM), h));
        for (proj, rows, cols) in [
            (tensor::Q_PROJ, qd, h),
            (tensor::K_PROJ, kvd, h),
            (tensor::V_PROJ, kvd, h),
            (tensor::O_PROJ, h, qd),
        ] {
            out.extend(matrix(n(proj), &[], rows, cols, w(cols), q));
        }
        if qk_norm_whole {
            out.push(norm(names.weight(l, tensor::Q_NORM), qd));
            out.push(norm(names.weight(l, tensor::K_NORM), kvd));
        }
        out.extend(matrix(
            n(names.router),
            &[],
            ne,
            h,
            2.0 * w(h),
            q.and(router_quant),
        ));
        let projs = [
            (tensor::GATE_PROJ, i, h),
            (tensor::UP_PROJ, i, h),
            (tensor::DOWN_PROJ, h, i),
        ];
        if q.is_some() {
            for (proj, rows, cols) in projs {
                out.extend(matrix(
                    n(&names.switch_mlp(proj)),
                    &[ne],
                    rows,
                    cols,
                    w(cols),
                    q,
                ));
            }
        } else {
            for e in 0..ne {
                for (proj, rows, cols) in projs {
                    let name = names.expert(l, e, proj);
                    out.extend(matrix(strip(&name), &[], rows, cols, w(cols), None));
                }
            }
        }
    }
    out
}
