//! Synthetic Qwen3-MoE checkpoints ([`SyntheticSpec`]'s default family) and, with
//! [`SyntheticSpec::linear_attention`], Qwen3.5-MoE Gated DeltaNet hybrids
//! (`qwen3_5_moe_text`): transformers' config spelling and tensor names, MLX-quantized
//! (`switch_mlp` experts, 8-bit routers) or float with per-expert tensors.

use crate::arch::{tensor, Names};
use crate::dtype::DType;
use crate::synthetic::{embed_and_head, Fill, Lazy, MatrixFn, SyntheticSpec};

/// The `config.json` of a Qwen3-MoE or Qwen3.5-MoE spec.
pub(crate) fn config_json(spec: &SyntheticSpec) -> serde_json::Value {
    let dtype = match spec.dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    };
    let mut config = serde_json::json!({
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.moe_intermediate_size * spec.top_k,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "num_local_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "norm_topk_prob": true,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "max_position_embeddings": 32768,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "dtype": dtype,
        "synthetic": true,
    });
    if let (Some(la), Some(obj)) = (spec.linear_attention, config.as_object_mut()) {
        for (k, v) in [
            (
                "architectures",
                serde_json::json!(["Qwen3_5MoeForCausalLM"]),
            ),
            ("model_type", "qwen3_5_moe_text".into()),
            ("num_experts", spec.num_experts.into()),
            ("linear_num_key_heads", la.key_heads.into()),
            ("linear_num_value_heads", la.value_heads.into()),
            ("linear_key_head_dim", la.key_dim.into()),
            ("linear_value_head_dim", la.value_dim.into()),
            ("linear_conv_kernel_dim", 4.into()),
            ("full_attention_interval", la.full_attention_interval.into()),
            (
                "shared_expert_intermediate_size",
                la.shared_expert_intermediate_size.into(),
            ),
            (
                "rope_parameters",
                serde_json::json!({"rope_theta": 10000000.0, "rope_type": "default", "partial_rotary_factor": 0.25}),
            ),
        ] {
            obj.insert(k.into(), v);
        }
        for k in [
            "num_local_experts",
            "norm_topk_prob",
            "decoder_sparse_step",
            "mlp_only_layers",
            "intermediate_size",
        ] {
            obj.remove(k);
        }
    }
    if let (Some((bits, group)), Some(obj)) = (spec.quant, config.as_object_mut()) {
        let mut q = serde_json::json!({"group_size": group, "bits": bits, "mode": "affine"});
        if let Some(qo) = q.as_object_mut() {
            let (rb, rg) = spec.router_quant(bits, group);
            for l in 0..spec.num_layers {
                qo.insert(
                    Names::HF.layer(l, tensor::ROUTER),
                    serde_json::json!({"group_size": rg, "bits": rb}),
                );
                if spec.linear_attention.is_some() {
                    qo.insert(
                        Names::HF.layer(l, tensor::SHARED_EXPERT_GATE),
                        serde_json::json!({"group_size": rg, "bits": rb}),
                    );
                }
            }
        }
        obj.insert("quantization".into(), q.clone());
        obj.insert("quantization_config".into(), q);
    }
    config
}

/// The tensors of a Qwen3-MoE or Qwen3.5-MoE spec.
pub(crate) fn tensors(
    spec: &SyntheticSpec,
    make: &dyn Fn(String, safetensors::Dtype, Vec<usize>, Fill) -> (String, Lazy),
    matrix: &MatrixFn<'_>,
) -> Vec<(String, Lazy)> {
    let (h, hd, i) = (spec.hidden_size, spec.head_dim, spec.moe_intermediate_size);
    let (qd, kvd, ne) = (
        spec.num_heads * hd,
        spec.num_kv_heads * hd,
        spec.num_experts,
    );
    let fdt = spec.dtype.to_safetensors();
    let vector = |name: String, n: usize| {
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
    let q = spec.quant;
    let rq = q.map(|(b, g)| spec.router_quant(b, g));
    let names = Names::HF;
    let strip = |n: &str| n.trim_end_matches(".weight").to_string();
    let mut out = embed_and_head(spec, &names, matrix, q);
    // Qwen3.5's norms are zero-centred (the model multiplies by 1 + w).
    let norm = |name: String, n: usize| {
        if spec.linear_attention.is_some() {
            make(
                name,
                fdt,
                vec![n],
                Fill::Float {
                    scale: 0.1,
                    offset: 0.0,
                },
            )
        } else {
            vector(name, n)
        }
    };
    let flat = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        make(name, fdt, shape, Fill::Float { scale, offset })
    };
    // With an output gate q_proj yields [q | gate] per head.
    let q_rows = if spec.linear_attention.is_some() {
        2 * qd
    } else {
        qd
    };
    out.push(norm(names.final_norm(), h));
    for l in 0..spec.num_layers {
        let n = |rest: &str| names.layer(l, rest);
        // `{path}.weight`, and a SwiGLU projection `{module}.{proj}`.
        let w_ = |path: &str| format!("{path}.weight");
        let sub = |module: &str, proj: &str| format!("{module}.{proj}");
        out.push(norm(n(&w_(tensor::INPUT_NORM)), h));
        out.push(norm(n(&w_(tensor::POST_NORM)), h));
        match spec.linear_attention {
            Some(la) if spec.is_linear(l) => {
                let (kd, vd) = (la.key_heads * la.key_dim, la.value_heads * la.value_dim);
                let ch = 2 * kd + vd;
                let hv = la.value_heads;
                out.extend(matrix(n(tensor::IN_PROJ_QKV), &[], ch, h, w(h), q));
                out.extend(matrix(n(tensor::IN_PROJ_Z), &[], vd, h, w(h), q));
                out.extend(matrix(n(tensor::IN_PROJ_B), &[], hv, h, w(h), q));
                out.extend(matrix(n(tensor::IN_PROJ_A), &[], hv, h, w(h), q));
                out.push(flat(n(&w_(tensor::CONV1D)), vec![ch, 1, 4], 0.5, 0.0));
                out.push(flat(n(tensor::A_LOG), vec![hv], 1.0, 0.0));
                out.push(flat(n(tensor::DT_BIAS), vec![hv], 0.5, 0.0));
                out.push(vector(n(&w_(tensor::GATED_NORM)), la.value_dim));
                out.extend(matrix(n(tensor::OUT_PROJ), &[], h, vd, w(vd), q));
            }
            _ => {
                out.extend(matrix(n(tensor::Q_PROJ), &[], q_rows, h, w(h), q));
                out.extend(matrix(n(tensor::K_PROJ), &[], kvd, h, w(h), q));
                out.extend(matrix(n(tensor::V_PROJ), &[], kvd, h, w(h), q));
                out.extend(matrix(n(tensor::O_PROJ), &[], h, qd, w(qd), q));
                out.push(norm(n(&w_(tensor::Q_NORM)), hd));
                out.push(norm(n(&w_(tensor::K_NORM)), hd));
            }
        }
        if let Some(la) = spec.linear_attention {
            let si = la.shared_expert_intermediate_size;
            out.extend(matrix(
                n(&sub(tensor::SHARED_EXPERT, tensor::GATE_PROJ)),
                &[],
                si,
                h,
                w(h),
                q,
            ));
            out.extend(matrix(
                n(&sub(tensor::SHARED_EXPERT, tensor::UP_PROJ)),
                &[],
                si,
                h,
                w(h),
                q,
            ));
            out.extend(matrix(
                n(&sub(tensor::SHARED_EXPERT, tensor::DOWN_PROJ)),
                &[],
                h,
                si,
                w(si),
                q,
            ));
            out.extend(matrix(n(tensor::SHARED_EXPERT_GATE), &[], 1, h, w(h), rq));
        }
        out.extend(matrix(n(tensor::ROUTER), &[], ne, h, 2.0 * w(h), rq));
        if q.is_some() {
            out.extend(matrix(
                n(&names.switch_mlp(tensor::GATE_PROJ)),
                &[ne],
                i,
                h,
                w(h),
                q,
            ));
            out.extend(matrix(
                n(&names.switch_mlp(tensor::UP_PROJ)),
                &[ne],
                i,
                h,
                w(h),
                q,
            ));
            out.extend(matrix(
                n(&names.switch_mlp(tensor::DOWN_PROJ)),
                &[ne],
                h,
                i,
                w(i),
                q,
            ));
        } else {
            for e in 0..ne {
                let ex = |proj: &str| strip(&names.expert(l, e, proj));
                out.extend(matrix(ex(tensor::GATE_PROJ), &[], i, h, w(h), None));
                out.extend(matrix(ex(tensor::UP_PROJ), &[], i, h, w(h), None));
                out.extend(matrix(ex(tensor::DOWN_PROJ), &[], h, i, w(i), None));
            }
        }
    }
    out
}
