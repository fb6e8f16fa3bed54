//! Synthetic GLM-4.5 MoE checkpoints ([`SyntheticSpec::glm4_moe`]) in mlx-community's
//! layout: the released `config.json` spelling, every matrix MLX-quantized as the spec
//! says (`switch_mlp` experts) but the router (float, as mlx-lm leaves it) and its
//! `e_score_correction_bias` (in the spec's float dtype), one dense first layer, ungated
//! shared experts.

use crate::arch::{tensor, Names};
use crate::synthetic::{embed_and_head, Fill, Lazy, MatrixFn, SyntheticGlm, SyntheticSpec};

/// The released `config.json` of a GLM spec.
pub(crate) fn config_json(spec: &SyntheticSpec, g: &SyntheticGlm) -> serde_json::Value {
    let mut config = serde_json::json!({
        "architectures": ["Glm4MoeForCausalLM"],
        "model_type": "glm4_moe",
        "attention_bias": true,
        "first_k_dense_replace": 1,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "intermediate_size": g.dense_intermediate_size,
        "max_position_embeddings": 131072,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "n_group": 1,
        "n_routed_experts": spec.num_experts,
        "n_shared_experts": 1,
        "norm_topk_prob": true,
        "num_attention_heads": spec.num_heads,
        "num_experts_per_tok": spec.top_k,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000,
        "routed_scaling_factor": 1.0,
        "tie_word_embeddings": false,
        "topk_group": 1,
        "use_qk_norm": false,
        "vocab_size": spec.vocab_size,
        "synthetic": true,
    });
    if let (Some((bits, group)), Some(obj)) = (spec.quant, config.as_object_mut()) {
        let q = serde_json::json!({"group_size": group, "bits": bits, "mode": "affine"});
        obj.insert("quantization".into(), q.clone());
        obj.insert("quantization_config".into(), q);
    }
    config
}

/// The tensors of a GLM spec.
pub(crate) fn tensors(
    spec: &SyntheticSpec,
    g: &SyntheticGlm,
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
    let float = |name: String, n: usize, scale: f32, offset: f32| {
        make(name, fdt, vec![n], Fill::Float { scale, offset })
    };
    let w = |cols: usize| 1.0 / (cols as f32).sqrt();
    let names = Names {
        shared: "mlp.shared_experts",
        ..Names::HF
    };
    let mut out = embed_and_head(spec, &names, matrix, q);
    out.push(float(names.final_norm(), h, 0.1, 1.0));
    for l in 0..spec.num_layers {
        let n = |rest: &str| names.layer(l, rest);
        let wt = |path: &str| n(&format!("{path}.weight"));
        out.push(float(wt(tensor::INPUT_NORM), h, 0.1, 1.0));
        out.push(float(wt(tensor::POST_NORM), h, 0.1, 1.0));
        for (proj, rows, cols, bias) in [
            (tensor::Q_PROJ, qd, h, true),
            (tensor::K_PROJ, kvd, h, true),
            (tensor::V_PROJ, kvd, h, true),
            (tensor::O_PROJ, h, qd, false),
        ] {
            out.extend(matrix(n(proj), &[], rows, cols, w(cols), q));
            if bias {
                out.push(float(n(&format!("{proj}.bias")), rows, 0.1, 0.0));
            }
        }
        let mlp = |module: &str, inter: usize, lead: &[usize], out: &mut Vec<(String, Lazy)>| {
            for (proj, rows, cols) in [
                (tensor::GATE_PROJ, inter, h),
                (tensor::UP_PROJ, inter, h),
                (tensor::DOWN_PROJ, h, inter),
            ] {
                out.extend(matrix(
                    n(&format!("{module}.{proj}")),
                    lead,
                    rows,
                    cols,
                    w(cols),
                    q,
                ));
            }
        };
        if l == 0 {
            mlp(tensor::MLP, g.dense_intermediate_size, &[], &mut out);
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
        mlp(
            names.switch_mlp("").trim_end_matches('.'),
            i,
            &[ne],
            &mut out,
        );
    }
    out
}
