//! Synthetic gpt-oss checkpoints ([`SyntheticSpec::gpt_oss`]) in the released layout: the
//! released `config.json` spelling, bf16 attention (with biases and sinks), router and
//! embeddings, experts stacked per layer in MXFP4 (`*_blocks` / `*_scales`, as
//! `openai/gpt-oss-*` ship them) or bf16 (`gate_up_proj` `[E, H, 2I]`, `down_proj`
//! `[E, I, H]`), with biases.

use crate::arch::{tensor, Names};
use crate::synthetic::{Fill, Lazy, SyntheticGptOss, SyntheticSpec};

/// The released `config.json` of a gpt-oss spec.
pub(crate) fn config_json(spec: &SyntheticSpec, g: &SyntheticGptOss) -> serde_json::Value {
    let layer_types: Vec<&str> = (0..spec.num_layers)
        .map(|l| {
            if l % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let mut config = serde_json::json!({
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "attention_bias": true,
        "experts_per_token": spec.top_k,
        "num_experts_per_tok": spec.top_k,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initial_context_length": 4096,
        "intermediate_size": spec.moe_intermediate_size,
        "layer_types": layer_types,
        "max_position_embeddings": 131072,
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "num_local_experts": spec.num_experts,
        "rms_norm_eps": 1e-5,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
            "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
        "rope_theta": 150000,
        "sliding_window": g.sliding_window,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "vocab_size": spec.vocab_size,
        "synthetic": true,
    });
    if let (true, Some(obj)) = (g.mxfp4, config.as_object_mut()) {
        obj.insert(
            "quantization_config".into(),
            serde_json::json!({
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                    "model.embed_tokens", "lm_head"],
                "quant_method": "mxfp4",
            }),
        );
    }
    config
}

/// The tensors of a gpt-oss spec, generated lazily (`make(name, dtype, shape, fill)`).
pub(crate) fn tensors(
    spec: &SyntheticSpec,
    g: &SyntheticGptOss,
    make: &dyn Fn(String, safetensors::Dtype, Vec<usize>, Fill) -> (String, Lazy),
) -> Vec<(String, Lazy)> {
    let (h, hd, i, ne) = (
        spec.hidden_size,
        spec.head_dim,
        spec.moe_intermediate_size,
        spec.num_experts,
    );
    let (qd, kvd) = (spec.num_heads * hd, spec.num_kv_heads * hd);
    let bf16 = safetensors::Dtype::BF16;
    let float = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        make(name, bf16, shape, Fill::Float { scale, offset })
    };
    let w = |cols: usize| 1.0 / (cols as f32).sqrt();
    let names = Names {
        router: super::ROUTER,
        ..Names::HF
    };
    let mut out = vec![
        float(names.embed(), vec![spec.vocab_size, h], 1.0, 0.0),
        float(names.lm_head.into(), vec![spec.vocab_size, h], w(h), 0.0),
        float(names.final_norm(), vec![h], 0.1, 1.0),
    ];
    for l in 0..spec.num_layers {
        let n = |rest: &str| names.layer(l, rest);
        let wt = |path: &str| n(&format!("{path}.weight"));
        let bias = |path: &str| n(&format!("{path}.bias"));
        out.push(float(wt(tensor::INPUT_NORM), vec![h], 0.1, 1.0));
        out.push(float(wt(tensor::POST_NORM), vec![h], 0.1, 1.0));
        for (proj, rows, cols) in [
            (tensor::Q_PROJ, qd, h),
            (tensor::K_PROJ, kvd, h),
            (tensor::V_PROJ, kvd, h),
            (tensor::O_PROJ, h, qd),
        ] {
            out.push(float(wt(proj), vec![rows, cols], w(cols), 0.0));
            out.push(float(bias(proj), vec![rows], 0.1, 0.0));
        }
        out.push(float(n(tensor::SINKS), vec![spec.num_heads], 1.0, 0.0));
        out.push(float(wt(super::ROUTER), vec![ne, h], 2.0 * w(h), 0.0));
        out.push(float(bias(super::ROUTER), vec![ne], 0.5, 0.0));
        let ex = |which: &str| names.fused_experts(l, which);
        if g.mxfp4 {
            // Codes: any byte; scales 2^-9 .. 2^-7 (values up to 6 of them: about
            // 1 / sqrt(2880) for gpt-oss's width).
            let codes = Fill::Bytes { lo: 0, span: 256 };
            let scales = Fill::Bytes { lo: 118, span: 3 };
            let u8 = safetensors::Dtype::U8;
            out.push(make(
                ex("gate_up_proj_blocks"),
                u8,
                vec![ne, 2 * i, h / 32, 16],
                codes,
            ));
            out.push(make(
                ex("gate_up_proj_scales"),
                u8,
                vec![ne, 2 * i, h / 32],
                scales,
            ));
            out.push(make(
                ex("down_proj_blocks"),
                u8,
                vec![ne, h, i / 32, 16],
                codes,
            ));
            out.push(make(
                ex("down_proj_scales"),
                u8,
                vec![ne, h, i / 32],
                scales,
            ));
        } else {
            out.push(float(ex("gate_up_proj"), vec![ne, h, 2 * i], w(h), 0.0));
            out.push(float(ex("down_proj"), vec![ne, i, h], w(i), 0.0));
        }
        out.push(float(ex("gate_up_proj_bias"), vec![ne, 2 * i], 0.1, 0.0));
        out.push(float(ex("down_proj_bias"), vec![ne, h], 0.1, 0.0));
    }
    out
}
