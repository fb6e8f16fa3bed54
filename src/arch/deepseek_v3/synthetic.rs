//! Synthetic DeepSeek-V3 checkpoints ([`SyntheticSpec::deepseek_v3`]): the released
//! `config.json` spelling (YaRN as DeepSeek-V3 ships it), `first_dense` dense layers, then
//! sigmoid group routing with a correction bias (in the spec's float dtype) and one ungated
//! shared expert per MoE layer. Quantized specs are written in mlx-community's layout
//! (`switch_mlp` experts, `kv_b_proj` absorbed into `embed_q` / `unembed_out`, the router
//! float); float specs in Hugging Face's, with `kv_b_proj`; FP8 specs in the released
//! FP8 format (e4m3 + `weight_scale_inv` block scales, per-expert names).

use crate::arch::{tensor, Names};
use crate::synthetic::{embed_and_head, Fill, Lazy, MatrixFn, SyntheticSpec};

/// The DeepSeek-V3 part of a [`SyntheticSpec`]: the latent-attention widths (the spec's
/// `num_heads` are its heads; its `head_dim` and `num_kv_heads` are not used), the dense
/// first layers and the routing groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyntheticDeepseek {
    /// `q_lora_rank`.
    pub q_lora_rank: usize,
    /// `kv_lora_rank`: the cached latent's width.
    pub kv_lora_rank: usize,
    /// `qk_nope_head_dim`.
    pub qk_nope_head_dim: usize,
    /// `qk_rope_head_dim`.
    pub qk_rope_head_dim: usize,
    /// `v_head_dim`.
    pub v_head_dim: usize,
    /// Width of the dense layers' MLP (`intermediate_size`).
    pub dense_intermediate_size: usize,
    /// Dense first layers (`first_k_dense_replace`).
    pub first_dense: usize,
    /// Expert groups (`n_group`) and groups kept per token (`topk_group`).
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// The released FP8 format (then the spec's `quant` is ignored): every linear layer
    /// inside the decoder layers e4m3 with f32 128 x 128 block scales, per-expert names.
    pub fp8: bool,
}

impl SyntheticDeepseek {
    /// DeepSeek-V3's widths (q_lora 1536, latent 512, heads of 128 + 64 / 128, a dense MLP
    /// of 18432, 8 groups of which 4 kept) with `first_dense` dense first layers.
    pub fn v3(first_dense: usize) -> Self {
        SyntheticDeepseek {
            q_lora_rank: 1536,
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128,
            dense_intermediate_size: 18432,
            first_dense,
            n_group: 8,
            topk_group: 4,
            fp8: false,
        }
    }
}

/// The released `config.json` of a DeepSeek-V3 spec.
pub(crate) fn config_json(spec: &SyntheticSpec, d: &SyntheticDeepseek) -> serde_json::Value {
    let mut config = serde_json::json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "attention_bias": false,
        "first_k_dense_replace": d.first_dense,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "intermediate_size": d.dense_intermediate_size,
        "kv_lora_rank": d.kv_lora_rank,
        "max_position_embeddings": 163840,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "moe_layer_freq": 1,
        "n_group": d.n_group,
        "n_routed_experts": spec.num_experts,
        "n_shared_experts": 1,
        "norm_topk_prob": true,
        "num_attention_heads": spec.num_heads,
        "num_experts_per_tok": spec.top_k,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_heads,
        "num_nextn_predict_layers": 0,
        "q_lora_rank": d.q_lora_rank,
        "qk_nope_head_dim": d.qk_nope_head_dim,
        "qk_rope_head_dim": d.qk_rope_head_dim,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn"
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": false,
        "topk_group": d.topk_group,
        "topk_method": "noaux_tc",
        "v_head_dim": d.v_head_dim,
        "vocab_size": spec.vocab_size,
        "synthetic": true,
    });
    if let (true, Some(obj)) = (d.fp8, config.as_object_mut()) {
        obj.insert(
            "quantization_config".into(),
            serde_json::json!({"activation_scheme": "dynamic", "fmt": "e4m3",
                               "quant_method": "fp8", "weight_block_size": [128, 128]}),
        );
        return config;
    }
    if let (Some((bits, group)), Some(obj)) = (spec.quant, config.as_object_mut()) {
        let q = serde_json::json!({"group_size": group, "bits": bits, "mode": "affine"});
        obj.insert("quantization".into(), q.clone());
        obj.insert("quantization_config".into(), q);
    }
    config
}

/// The tensors of a DeepSeek-V3 spec.
pub(crate) fn tensors(
    spec: &SyntheticSpec,
    d: &SyntheticDeepseek,
    make: &dyn Fn(String, safetensors::Dtype, Vec<usize>, Fill) -> (String, Lazy),
    matrix: &MatrixFn<'_>,
) -> Vec<(String, Lazy)> {
    let (h, nh, i, ne) = (
        spec.hidden_size,
        spec.num_heads,
        spec.moe_intermediate_size,
        spec.num_experts,
    );
    let (ql, r, dn, dr, dv) = (
        d.q_lora_rank,
        d.kv_lora_rank,
        d.qk_nope_head_dim,
        d.qk_rope_head_dim,
        d.v_head_dim,
    );
    let q = if d.fp8 { None } else { spec.quant };
    let fdt = spec.dtype.to_safetensors();
    // A matrix inside a decoder layer: FP8 codes and block scales in the FP8 format, else
    // the writer's float or MLX-quantized matrix.
    let layer_matrix = |prefix: String,
                        lead: &[usize],
                        rows: usize,
                        cols: usize,
                        amp: f32,
                        quant: Option<(u32, u32)>|
     -> Vec<(String, Lazy)> {
        if !d.fp8 {
            return matrix(prefix, lead, rows, cols, amp, quant);
        }
        vec![
            make(
                format!("{prefix}.weight"),
                safetensors::Dtype::F8_E4M3,
                vec![rows, cols],
                Fill::Fp8,
            ),
            make(
                format!("{prefix}.weight_scale_inv"),
                safetensors::Dtype::F32,
                vec![rows.div_ceil(128), cols.div_ceil(128)],
                Fill::F32 {
                    scale: 0.1 * amp,
                    offset: amp,
                },
            ),
        ]
    };
    let float = |name: String, n: usize, scale: f32, offset: f32| {
        make(name, fdt, vec![n], Fill::Float { scale, offset })
    };
    let w = |cols: usize| 1.0 / (cols as f32).sqrt();
    let names = Names {
        shared: "mlp.shared_experts",
        ..Names::HF
    };
    let strip = |n: &str| n.trim_end_matches(".weight").to_string();
    let mut out = embed_and_head(spec, &names, matrix, q);
    out.push(float(names.final_norm(), h, 0.1, 1.0));
    for l in 0..spec.num_layers {
        let n = |rest: &str| names.layer(l, rest);
        let wt = |path: &str| n(&format!("{path}.weight"));
        out.push(float(wt(tensor::INPUT_NORM), h, 0.1, 1.0));
        out.push(float(wt(tensor::POST_NORM), h, 0.1, 1.0));
        out.push(float(wt(tensor::Q_A_NORM), ql, 0.1, 1.0));
        out.push(float(wt(tensor::KV_A_NORM), r, 0.1, 1.0));
        for (proj, rows, cols) in [
            (tensor::Q_A_PROJ, ql, h),
            (tensor::Q_B_PROJ, nh * (dn + dr), ql),
            (tensor::KV_A_PROJ, r + dr, h),
            (tensor::O_PROJ, h, nh * dv),
        ] {
            out.extend(layer_matrix(n(proj), &[], rows, cols, w(cols), q));
        }
        if q.is_some() {
            out.extend(matrix(n(tensor::EMBED_Q), &[nh], r, dn, w(dn), q));
            out.extend(matrix(n(tensor::UNEMBED_OUT), &[nh], dv, r, w(r), q));
        } else {
            out.extend(layer_matrix(
                n(tensor::KV_B_PROJ),
                &[],
                nh * (dn + dv),
                r,
                w(r),
                q,
            ));
        }
        let mlp = |module: &str, inter: usize, lead: &[usize], out: &mut Vec<(String, Lazy)>| {
            for (proj, rows, cols) in [
                (tensor::GATE_PROJ, inter, h),
                (tensor::UP_PROJ, inter, h),
                (tensor::DOWN_PROJ, h, inter),
            ] {
                out.extend(layer_matrix(
                    n(&format!("{module}.{proj}")),
                    lead,
                    rows,
                    cols,
                    w(cols),
                    q,
                ));
            }
        };
        if l < d.first_dense {
            mlp(tensor::MLP, d.dense_intermediate_size, &[], &mut out);
            continue;
        }
        out.extend(matrix(n(tensor::ROUTER), &[], ne, h, 2.0 * w(h), None));
        out.push(make(
            n(&format!("{}.e_score_correction_bias", tensor::ROUTER)),
            fdt,
            vec![ne],
            Fill::Float {
                scale: 0.05,
                offset: 0.0,
            },
        ));
        mlp(names.shared, i, &[], &mut out);
        if d.fp8 {
            // Per-expert names, as released.
            for e in 0..ne {
                for (proj, rows, cols) in [
                    (tensor::GATE_PROJ, i, h),
                    (tensor::UP_PROJ, i, h),
                    (tensor::DOWN_PROJ, h, i),
                ] {
                    let name = names.expert(l, e, proj);
                    out.extend(layer_matrix(strip(&name), &[], rows, cols, w(cols), None));
                }
            }
            continue;
        }
        mlp(
            names.switch_mlp("").trim_end_matches('.'),
            i,
            &[ne],
            &mut out,
        );
    }
    out
}
