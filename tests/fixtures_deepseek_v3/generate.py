#!/usr/bin/env python3
"""Generate tiny random DeepSeek-V3 (model_type deepseek_v3) checkpoints + reference logits (golden.json).

Usage:
    pip install torch transformers safetensors numpy          # transformers >= 5.2 (made with 5.23.0)
    pip install "mlx[cpu]" mlx-lm tokenizers                  # MLX fixture (made with mlx 0.32.4, mlx-lm 0.32.2)
    python3 tests/fixtures_deepseek_v3/generate.py              # regenerate the committed set here
    python3 tests/fixtures_deepseek_v3/generate.py --out /tmp/fd   # same set, elsewhere (byte-identical)
    python3 tests/fixtures_deepseek_v3/generate.py --out /tmp/fd7 --shapes-seed 7
                                                                # a NEW random set of shapes + weights with the
                                                                # same coverage per fixture name ("not in the repo")
    python3 tests/fixtures_deepseek_v3/generate.py --only dsv3_hf_f32,dsv3_fp8
    python3 tests/fixtures_deepseek_v3/generate.py --describe   # also print tensor listings and configs
    python3 tests/fixtures_deepseek_v3/generate.py --accelerate-path /tmp/accel_site
                                                                # (informational) also let transformers load the FP8
                                                                # folder itself (its FP8 quantizer needs `accelerate`)

Every fixture folder: config.json, model.safetensors and golden.json (no tokenizer; the MLX folder holds what
mlx_lm.convert writes: + model.safetensors.index.json, a tiny tokenizer, a model card README.md):

    {"ids": [...], "prompt_len": P, "atol": 0.002, "logits": [[...], ...]}

ids = a random prompt of P (20..30) tokens + the reference's greedy continuation (6 tokens); logits[i] = float32
logits at position i of ONE forward pass over all ids (use_cache=False).

Reference = transformers' DeepseekV3ForCausalLM (float32, eager attention, eager experts, CPU) on the written folder
(bf16 upcast exactly), except: FP8 -> on an HF float32 folder of the exactly dequantized weights (w = e4m3 * scale_inv
per 128x128 block, float32 product); MLX -> on an HF float32 folder of the exactly dequantized MLX weights (kv_b_proj
rebuilt from embed_q / unembed_out).

Checks per fixture: the saved tensors equal the reference's parameters; full-pass argmax = greedy continuation; every
greedy step has a top1-top2 margin >= 0.05 and every routing decision (group choice and expert choice, on the biased
sigmoid scores) a gap >= 2e-3 (else a new prompt); the decode path (use_cache: transformers caches only the latent
c_kv [1,1,T,r] and the rotated k_pe [1,1,T,dr]) agrees with one pass within 1e-4; the YaRN tables are as intended;
the released spelling reads to bit-identical logits as the transformers-5 spelling; and check_numpy.py (independent
numpy float64 forward from the raw files, plus the weight-absorbed latent-cache decode) matches golden within atol
while each deliberately wrong variant moves the logits by far more than atol.
"""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the reference runs on CPU

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

MIN_GREEDY_MARGIN = 0.05
MIN_ROUTER_GAP = 2e-3  # group choice and expert choice, on the biased sigmoid scores
ATOL = 2e-3
DECODE_TOL = 1e-4
MLX_CROSS_TOL = 5e-4
FP8_BLOCK = (128, 128)
FP8_MAX = 448.0  # float8_e4m3fn

# The config.json keys of the released deepseek-ai/DeepSeek-V3 (transformers_version 4.46.3), values other than the
# shapes copied from it. bf16 folders drop quantization_config (the weights are not FP8 any more).
RELEASED_V3_KEYS = ["architectures", "attention_bias", "attention_dropout", "auto_map", "bos_token_id",
                    "eos_token_id", "ep_size", "first_k_dense_replace", "hidden_act", "hidden_size",
                    "initializer_range", "intermediate_size", "kv_lora_rank", "max_position_embeddings", "model_type",
                    "moe_intermediate_size", "moe_layer_freq", "n_group", "n_routed_experts", "n_shared_experts",
                    "norm_topk_prob", "num_attention_heads", "num_experts_per_tok", "num_hidden_layers",
                    "num_key_value_heads", "num_nextn_predict_layers", "q_lora_rank", "qk_nope_head_dim",
                    "qk_rope_head_dim", "quantization_config", "rms_norm_eps", "rope_scaling", "rope_theta",
                    "routed_scaling_factor", "scoring_func", "tie_word_embeddings", "topk_group", "topk_method",
                    "torch_dtype", "transformers_version", "use_cache", "v_head_dim", "vocab_size"]
# moonshotai/Moonlight-16B-A3B (model_type deepseek_v3, q_lora_rank null, no rope_scaling key)
MOONLIGHT_KEYS = ["architectures", "attention_bias", "attention_dropout", "auto_map", "aux_loss_alpha",
                  "bos_token_id", "eos_token_id", "ep_size", "first_k_dense_replace", "hidden_act", "hidden_size",
                  "initializer_range", "intermediate_size", "kv_lora_rank", "max_position_embeddings", "model_type",
                  "moe_intermediate_size", "moe_layer_freq", "n_group", "n_routed_experts", "n_shared_experts",
                  "norm_topk_prob", "num_attention_heads", "num_experts_per_tok", "num_hidden_layers",
                  "num_key_value_heads", "num_nextn_predict_layers", "pretraining_tp", "q_lora_rank",
                  "qk_nope_head_dim", "qk_rope_head_dim", "rms_norm_eps", "rope_theta", "routed_scaling_factor",
                  "scoring_func", "seq_aux", "tie_word_embeddings", "topk_group", "topk_method", "torch_dtype",
                  "transformers_version", "use_cache", "v_head_dim", "vocab_size"]
AUTO_MAP = {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
            "AutoModel": "modeling_deepseek.DeepseekV3Model",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"}
FP8_QCONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}

# ---------------------------------------------------------------------------------------------------------
# The committed set.
#   layout: hf       - transformers 5.23 save_pretrained (float32): per-expert mlp.experts.{e}.*_proj.weight
#           released - written by hand in the released DeepSeek-V3 layout (per-expert names, bf16, the router's
#                      e_score_correction_bias F32, optional MTP module at layer index num_hidden_layers)
#           fp8      - released FP8: every Linear inside the layers F8_E4M3 + F32 weight_scale_inv 128x128 blocks;
#                      embeddings, lm_head, norms, router weight BF16; e_score_correction_bias F32
#           mlx      - mlx_lm.convert(quantize=True, q_bits=4, q_group_size=32) of a released-layout bf16 source
#   spelling: v5        - transformers-5 save_pretrained config (rope_parameters with rope_theta inside)
#             v3        - the released DeepSeek-V3 config.json keys (rope_scaling with "type", int rope_theta, ...)
#             moonlight - the Moonlight-16B-A3B keys (q_lora_rank null, no rope_scaling key at all)
# yarn: factor, orig (original_max_position_embeddings), mscale, mscale_all_dim, beta_fast, beta_slow; no truncate
# key anywhere (DeepSeek configs have none -> transformers truncates the correction range).
# ---------------------------------------------------------------------------------------------------------
BASE_SPECS = [
    dict(
        name="dsv3_hf_f32", layout="hf", dtype="float32", spelling="v5",
        covers="transformers-5 config as save_pretrained writes it (rope_parameters yarn with mscale 0.707 != "
               "mscale_all_dim 1.0, so both the softmax-scale mscale and the cos/sin attention factor matter); "
               "float32; per-expert experts; q_lora_rank 40; first_k_dense_replace 1; 12 experts in 4 groups, "
               "topk_group 2, top-3; 1 shared expert",
        vocab=224, hidden=48, layers=3, dense=1, heads=4, q_lora=40, r=24, dn=16, dr=8, dv=10, inter=64, moe_inter=16,
        experts=12, n_group=4, topk_group=2, topk=3, n_shared=1, rsf=2.5, eps=1e-6, theta=10000.0,
        yarn=dict(factor=8.0, orig=256, mscale=0.707, mscale_all_dim=1.0, beta_fast=32.0, beta_slow=1.0),
        mtp=False, prompt_len=24, gen=6,
    ),
    dict(
        name="dsv3_released_bf16", layout="released", dtype="bfloat16", spelling="v3",
        covers="released DeepSeek-V3 config keys and layout in bf16 (e_score_correction_bias F32) with the MTP "
               "module's tensors at model.layers.3.* (num_nextn_predict_layers 1) that a loader must skip; "
               "rope_scaling {type: yarn, factor 16, mscale = mscale_all_dim = 1.0, L0 4096} + integer rope_theta; "
               "q_lora_rank 48; 12 experts in 4 groups, topk_group 2, top-4",
        vocab=256, hidden=64, layers=3, dense=1, heads=4, q_lora=48, r=32, dn=24, dr=16, dv=20, inter=96,
        moe_inter=16, experts=12, n_group=4, topk_group=2, topk=4, n_shared=1, rsf=2.5, eps=1e-6, theta=10000,
        yarn=dict(factor=16, orig=4096, mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1),
        mtp=True, prompt_len=26, gen=6,
    ),
    dict(
        name="dsv3_no_q_lora_bf16", layout="released", dtype="bfloat16", spelling="moonlight",
        covers="q_lora_rank null (one q_proj), as in moonshotai/Moonlight-16B-A3B: its config keys (no rope_scaling "
               "key: plain interleaved RoPE, rope_theta 50000.0), n_group 1 / topk_group 1 (Kimi/Moonlight), "
               "2 shared experts (width 2 x moe_intermediate_size), routed_scaling_factor 2.446, rms_norm_eps 1e-5 "
               "(the latent kv_a_layernorm keeps eps 1e-6); bf16 with F32 e_score_correction_bias",
        vocab=240, hidden=48, layers=3, dense=1, heads=4, q_lora=None, r=32, dn=16, dr=8, dv=10, inter=80,
        moe_inter=16, experts=8, n_group=1, topk_group=1, topk=3, n_shared=2, rsf=2.446, eps=1e-5, theta=50000.0,
        yarn=None, mtp=False, prompt_len=25, gen=6,
    ),
    dict(
        name="dsv3_fp8", layout="fp8", dtype="bfloat16", spelling="v3",
        covers="released DeepSeek-V3 FP8 layout: every Linear inside the layers F8_E4M3 + F32 weight_scale_inv "
               "[ceil(out/128), ceil(in/128)] (128x128 blocks as released; partial last blocks like the released "
               "kv_a_proj_with_mqa [576, 7168] -> [5, 56]), BF16 embeddings / lm_head / norms / router, F32 "
               "e_score_correction_bias; quantization_config {quant_method fp8, fmt e4m3, activation_scheme dynamic, "
               "weight_block_size [128, 128]}; hidden 128, 2 layers (1 dense + 1 MoE, 8 experts in 2 groups, "
               "topk_group 1, top-2), no MTP tensors (num_nextn_predict_layers 0); YaRN factor 40 as released but L0 512 and a louder RoPE path "
               "(this shallow net would hardly see the truncation of the correction range with L0 4096)",
        vocab=256, hidden=128, layers=2, dense=1, heads=4, q_lora=96, r=144, dn=32, dr=16, dv=24, inter=160,
        moe_inter=48, experts=8, n_group=2, topk_group=1, topk=2, n_shared=1, rsf=2.5, eps=1e-6, theta=10000,
        yarn=dict(factor=40, orig=512, mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1),
        mtp=False, prompt_len=24, gen=6, rope_gain=2.0,
    ),
    dict(
        name="dsv3_fp8_wide", layout="fp8", dtype="bfloat16", spelling="v3",
        covers="the released FP8 layout with every FP8 matrix's input width a multiple of 32 (what the GPU kernels "
               "read in blocks of 32 codes) and two column blocks: hidden 256, expert width 160 and dense width 288 "
               "(partial row blocks), q_lora 160, kv_lora 176, 12 experts in 3 groups (2 kept, top-3); otherwise as dsv3_fp8",
        vocab=256, hidden=256, layers=2, dense=1, heads=4, q_lora=160, r=176, dn=32, dr=16, dv=32, inter=288,
        moe_inter=160, experts=12, n_group=3, topk_group=2, topk=3, n_shared=1, rsf=2.5, eps=1e-6, theta=10000,
        yarn=dict(factor=40, orig=512, mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1),
        mtp=False, prompt_len=24, gen=6, rope_gain=2.0,
    ),
    dict(
        name="dsv3_mlx_4bit", layout="mlx", dtype="bfloat16", spelling="v3", q=dict(q_bits=4, q_group_size=32),
        covers="mlx_lm.convert -q (4-bit affine, group 32) of a released-layout bf16 source (no MTP: mlx-lm only "
               "drops model.layers.61.*): experts stacked as mlp.switch_mlp.*, kv_b_proj split into "
               "self_attn.embed_q [nh, r, dn] / unembed_out [nh, dv, r] (quantized too), o_proj left BF16 because "
               "its input width nh*dv = 80 is not a multiple of 32, router mlp.gate.weight BF16, "
               "e_score_correction_bias F32; 12 experts in 3 groups, topk_group 2, top-4",
        vocab=256, hidden=64, layers=3, dense=1, heads=4, q_lora=96, r=128, dn=32, dr=16, dv=20, inter=96,
        moe_inter=32, experts=12, n_group=3, topk_group=2, topk=4, n_shared=1, rsf=2.5, eps=1e-6, theta=10000,
        yarn=dict(factor=40, orig=4096, mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1),
        mtp=False, prompt_len=25, gen=6,
    ),
]


# ---------------------------------------------------------------------------------------------------------
# YaRN helpers (transformers' _compute_yarn_parameters, float64; DeepSeek configs have no truncate key -> True)
# ---------------------------------------------------------------------------------------------------------
def yarn_ramp(d, base, orig, truncate=True, beta_fast=32.0, beta_slow=1.0):
    def corr(r):
        return d * math.log(orig / (r * 2 * math.pi)) / (2 * math.log(base))
    lo, hi = corr(beta_fast), corr(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    if lo == hi:
        hi += 0.001
    return np.clip((np.arange(d // 2) - lo) / (hi - lo), 0, 1), (lo, hi)


def yarn_ok(d, base, orig):
    """The (truncated) ramp has a fractional value, leaves dim 0 unchanged, fully interpolates a dim, and
    truncate: false would give a different ramp."""
    r, _ = yarn_ramp(d, base, orig)
    rn, _ = yarn_ramp(d, base, orig, truncate=False)
    return r[0] == 0 and ((r > 0.05) & (r < 0.95)).sum() >= 1 and (r == 1).sum() >= 1 and np.abs(r - rn).max() > 0.05


def mscale(f, m=1.0):
    return 1.0 if f <= 1 else 0.1 * m * math.log(f) + 1.0


# ---------------------------------------------------------------------------------------------------------
# Shapes, sizes, --shapes-seed
# ---------------------------------------------------------------------------------------------------------
def layer_shapes(s, l):
    """name (under model.layers.{l}.) -> shape, released per-expert layout."""
    H, nh, r, dn, dr, dv = s["hidden"], s["heads"], s["r"], s["dn"], s["dr"], s["dv"]
    out = {"input_layernorm.weight": [H], "post_attention_layernorm.weight": [H],
           "self_attn.kv_a_proj_with_mqa.weight": [r + dr, H], "self_attn.kv_a_layernorm.weight": [r],
           "self_attn.kv_b_proj.weight": [nh * (dn + dv), r], "self_attn.o_proj.weight": [H, nh * dv]}
    if s["q_lora"] is None:
        out["self_attn.q_proj.weight"] = [nh * (dn + dr), H]
    else:
        out.update({"self_attn.q_a_proj.weight": [s["q_lora"], H], "self_attn.q_a_layernorm.weight": [s["q_lora"]],
                    "self_attn.q_b_proj.weight": [nh * (dn + dr), s["q_lora"]]})
    if l < s["dense"]:
        I = s["inter"]
        out.update({"mlp.gate_proj.weight": [I, H], "mlp.up_proj.weight": [I, H], "mlp.down_proj.weight": [H, I]})
    else:
        I, E = s["moe_inter"], s["experts"]
        out.update({"mlp.gate.weight": [E, H], "mlp.gate.e_score_correction_bias": [E]})
        for e in range(E):
            out.update({f"mlp.experts.{e}.gate_proj.weight": [I, H], f"mlp.experts.{e}.up_proj.weight": [I, H],
                        f"mlp.experts.{e}.down_proj.weight": [H, I]})
        if s["n_shared"]:
            Is = I * s["n_shared"]
            out.update({"mlp.shared_experts.gate_proj.weight": [Is, H], "mlp.shared_experts.up_proj.weight": [Is, H],
                        "mlp.shared_experts.down_proj.weight": [H, Is]})
    return out


def is_fp8_weight(name):
    """Which tensors the released FP8 checkpoint stores as F8_E4M3: every Linear inside a decoder layer (q_a / q_b /
    q, kv_a_proj_with_mqa, kv_b, o, dense and expert and shared-expert gate / up / down) except the router
    (mlp.gate.weight, BF16); not the norms, not the MTP module's eh_proj / embed_tokens / shared_head (BF16)."""
    return (".layers." in name and name.endswith(".weight") and "norm" not in name
            and not name.endswith(("mlp.gate.weight", "eh_proj.weight", "embed_tokens.weight", "head.weight")))


def n_bytes(s):
    """Size of weights + golden.json (to keep randomized fixtures under ~800 KB)."""
    V, H = s["vocab"], s["hidden"]
    golden = (s["prompt_len"] + s["gen"]) * V * 11.5
    tot = 0.0
    shapes = {}
    for l in range(s["layers"] + (1 if s["mtp"] else 0)):
        for k, v in layer_shapes(s, l if l < s["layers"] else s["layers"] - 1).items():
            shapes[f"model.layers.{l}.{k}"] = v
    if s["mtp"]:
        shapes["mtp_extra"] = [V * H * 2 + H * 2 * H + 3 * H]
    for k, v in shapes.items():
        n = float(np.prod(v))
        if s["layout"] == "hf":
            tot += 4 * n
        elif s["layout"] == "released":
            tot += 2 * n
        elif s["layout"] == "fp8":
            tot += n + (16 if is_fp8_weight(k) else n)
        else:  # mlx 4-bit g32: 0.5 + 4/32 bytes per weight
            tot += 0.625 * n if (is_fp8_weight(k) and v[-1] % 32 == 0) else 2 * n
    emb = 2 * V * H * (4 if s["layout"] == "hf" else 0.625 if s["layout"] == "mlx" else 2)
    return tot + emb + golden + (20_000 if s["layout"] == "mlx" else 0)


def randomize(spec, rng):
    for _ in range(20000):
        s = randomize_once(spec, rng)
        if s is not None and n_bytes(s) <= 800_000:
            return s
    raise RuntimeError("no small enough random shapes")


def randomize_once(spec, rng):
    s = copy.deepcopy(spec)
    name, lay = s["name"], s["layout"]
    s["vocab"] = rng.randrange(200, 261)
    s["prompt_len"] = rng.randrange(20, 31)
    s["heads"] = rng.choice([2, 3, 4])
    s["eps"] = rng.choice([1e-5, 1e-6])
    if lay == "fp8":  # hidden 128 (one block), dims that give partial blocks past the first one
        s["hidden"] = 128
        s["q_lora"] = rng.choice([96, 160])
        s["r"] = rng.choice([144, 176])
        s["dn"], s["dr"], s["dv"] = rng.choice([24, 32]), 16, rng.choice([20, 24])
        s["inter"] = rng.choice([160, 192])
        s["moe_inter"] = rng.choice([32, 48])
        s["layers"], s["dense"] = 2, 1
        E = rng.choice([6, 8])
    elif lay == "mlx":  # input widths multiples of 32 (quantized), except o_proj (nh*dv not a multiple of 32)
        s["hidden"] = 64
        s["q_lora"] = rng.choice([64, 96])
        s["r"] = rng.choice([96, 128])
        s["dn"], s["dr"] = 32, rng.choice([8, 16])
        s["dv"] = rng.choice([12, 20, 28])
        if (s["heads"] * s["dv"]) % 32 == 0:
            return None
        s["inter"] = rng.choice([96, 128])
        s["moe_inter"] = 32
        s["layers"], s["dense"] = rng.choice([(3, 1), (3, 2)])
        E = rng.choice([8, 9, 12])
    else:
        s["hidden"] = rng.choice([32, 40, 48])
        s["q_lora"] = None if spec["q_lora"] is None else rng.choice([24, 32, 40, 56])
        s["r"] = rng.choice([16, 24, 32])
        s["dn"], s["dr"] = rng.choice([8, 16, 24]), rng.choice([8, 16])
        s["dv"] = rng.choice([d for d in (8, 12, 16, 20) if d != s["dn"]])
        s["inter"] = rng.choice([48, 64, 80])
        s["moe_inter"] = rng.choice([12, 16, 24])
        s["layers"], s["dense"] = rng.choice([(3, 1), (3, 2), (4, 1)])
        E = rng.choice([8, 9, 12])
    if len({s["hidden"], s["r"], s["q_lora"], s["heads"] * s["dv"], s["heads"] * (s["dn"] + s["dr"])}) < 5 \
            or len({s["r"], s["dn"], s["dv"]}) < 3:
        return None  # keep every MLA matrix distinguishable by shape (and r != dn: the softmax scale matters)
    if spec["n_group"] == 1:
        s["experts"], s["n_group"], s["topk_group"] = E, 1, 1
        s["topk"] = rng.randrange(2, 5)
    else:
        groups = [g for g in (2, 3, 4) if E % g == 0 and E // g >= 3]
        if not groups:
            return None
        s["experts"], s["n_group"] = E, rng.choice(groups)
        s["topk_group"] = rng.randrange(1, s["n_group"])
        s["topk"] = rng.randrange(2, min(4, s["topk_group"] * E // s["n_group"] - 1) + 1)
    s["n_shared"] = spec["n_shared"]
    if spec["yarn"] is None:
        s["theta"] = rng.choice([10000.0, 50000.0])
    else:
        s["theta"] = rng.choice([10000, 50000])
        if s["spelling"] == "v5":
            s["theta"] = float(s["theta"])
        ok = [L0 for L0 in (64, 128, 256, 512, 1024, 2048, 4096) if yarn_ok(s["dr"], float(s["theta"]), L0)]
        if not ok:
            return None
        y = dict(spec["yarn"])
        y["orig"] = rng.choice(ok)
        y["factor"] = rng.choice([4, 8, 16, 40])
        if s["spelling"] == "v5":
            y["factor"] = float(y["factor"])
            y["mscale"], y["mscale_all_dim"] = rng.choice([(0.707, 1.0), (1.0, 0.707), (0.8, 1.0)])
        s["yarn"] = y
    s["covers"] = f"[randomized shapes, shapes-seed] {name}: " + spec["covers"].split(";")[0]
    return s


# ---------------------------------------------------------------------------------------------------------
# HF model construction
# ---------------------------------------------------------------------------------------------------------
def rope_parameters(s):
    if s["yarn"] is None:
        return {"rope_type": "default", "rope_theta": s["theta"]}
    y = s["yarn"]
    return {"rope_type": "yarn", "rope_theta": s["theta"], "factor": y["factor"],
            "original_max_position_embeddings": y["orig"], "mscale": y["mscale"],
            "mscale_all_dim": y["mscale_all_dim"], "beta_fast": y["beta_fast"], "beta_slow": y["beta_slow"]}


def v5_kwargs(s):
    return dict(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
        moe_intermediate_size=s["moe_inter"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["heads"], n_shared_experts=s["n_shared"], n_routed_experts=s["experts"],
        routed_scaling_factor=s["rsf"], kv_lora_rank=s["r"], q_lora_rank=s["q_lora"], qk_rope_head_dim=s["dr"],
        v_head_dim=s["dv"], qk_nope_head_dim=s["dn"], n_group=s["n_group"], topk_group=s["topk_group"],
        num_experts_per_tok=s["topk"], first_k_dense_replace=s["dense"], norm_topk_prob=True,
        max_position_embeddings=int(s["yarn"]["factor"] * s["yarn"]["orig"]) if s["yarn"] else 8192,
        rms_norm_eps=s["eps"], rope_parameters=rope_parameters(s), tie_word_embeddings=False,
        attention_bias=False, bos_token_id=0, eos_token_id=1,
        num_nextn_predict_layers=1 if s["mtp"] else (0 if s["spelling"] != "v5" else 1),
    )


def build_model(s, fseed):
    torch.manual_seed(fseed)
    cfg = AutoConfig.for_model("deepseek_v3", **v5_kwargs(s))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", experts_implementation="eager")
    model = model.float().eval()
    # Large-ish random values so that every feature changes the logits (asserted by check_numpy.py): norms
    # 1 + 0.3 randn (also the latent norms), embeddings randn, Linear weights 1.6 randn / sqrt(fan_in), router
    # 1.5 randn / sqrt(H) (sigmoid scores not saturated), e_score_correction_bias 0.25 randn (moves the choice).
    g = torch.Generator().manual_seed(fseed + 1)
    H = s["hidden"]
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif n.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif n.endswith("mlp.gate.weight"):
                p.copy_(1.5 / math.sqrt(H) * torch.randn(p.shape, generator=g))
            else:  # nn.Linear [out, in] and the fused experts [E, out, in]
                p.copy_(1.6 / math.sqrt(p.shape[-1]) * torch.randn(p.shape, generator=g))
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(0.25 * torch.randn(b.shape, generator=g))
        gain = s.get("rope_gain", 1.0)  # louder decoupled-RoPE path (the shallow FP8 net), so YaRN details matter
        if gain != 1.0:
            nh, dn, dr, r = s["heads"], s["dn"], s["dr"], s["r"]
            for layer in model.model.layers:
                att = layer.self_attn
                wq = (att.q_proj if s["q_lora"] is None else att.q_b_proj).weight
                wq.view(nh, dn + dr, -1)[:, dn:] *= gain
                att.kv_a_proj_with_mqa.weight[r:] *= gain
    check_rope(model, s)
    return model


def check_rope(model, s):
    """The YaRN tables / scales transformers computed are what the fixture intends."""
    rot, d, base = model.model.rotary_emb, s["dr"], float(s["theta"])
    plain = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    inv = rot.inv_freq.double().numpy()
    att = model.model.layers[0].self_attn
    if s["yarn"] is None:
        assert np.abs(inv - plain).max() <= 1e-6 * plain.max() and rot.attention_scaling == 1.0
        assert abs(att.scaling - (s["dn"] + s["dr"]) ** -0.5) < 1e-12
        s["_yarn"] = None
        return
    y = s["yarn"]
    ramp, (lo, hi) = yarn_ramp(d, base, y["orig"], True, y["beta_fast"], y["beta_slow"])
    want = plain * (1 - ramp) + plain / y["factor"] * ramp
    assert np.abs(inv - want).max() <= 1e-6 * np.abs(want).max(), (inv, want)
    assert yarn_ok(d, base, y["orig"]), ramp
    af = mscale(y["factor"], y["mscale"]) / mscale(y["factor"], y["mscale_all_dim"])
    assert abs(rot.attention_scaling - af) < 1e-12, (rot.attention_scaling, af)
    sc = (s["dn"] + s["dr"]) ** -0.5 * mscale(y["factor"], y["mscale_all_dim"]) ** 2
    assert abs(att.scaling - sc) < 1e-12, (att.scaling, sc)
    s["_yarn"] = dict(low=lo, high=hi, ramp=[round(float(r), 3) for r in ramp],
                      ramp_no_truncate=[round(float(r), 3) for r in yarn_ramp(d, base, y["orig"], False)[0]],
                      attention_factor=af, softmax_scale=sc, plain_scale=(s["dn"] + s["dr"]) ** -0.5)


# ---------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------
def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def st_save(tensors, path):
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, path, metadata={"format": "pt"})


def released_state(model, s):
    """The model's tensors under the released per-expert names (float32 torch tensors): mlp.experts.gate_up_proj
    [E, 2I, H] (gate rows first) -> experts.{e}.gate_proj.weight / up_proj.weight, down_proj [E, H, I] ->
    experts.{e}.down_proj.weight; the router's e_score_correction_bias buffer included."""
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if "rotary_emb" in k:
            continue
        if k.endswith("mlp.experts.gate_up_proj"):
            pre = k[: -len("gate_up_proj")]
            I = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"] = v[e, :I].clone()
                out[f"{pre}{e}.up_proj.weight"] = v[e, I:].clone()
        elif k.endswith("mlp.experts.down_proj"):
            pre = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{pre}{e}.down_proj.weight"] = v[e].clone()
        else:
            out[k] = v.detach().clone()
    want = {f"model.layers.{l}.{n}" for l in range(s["layers"]) for n in layer_shapes(s, l)}
    want |= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    assert set(out) == want, set(out) ^ want
    for l in range(s["layers"]):
        for n, shp in layer_shapes(s, l).items():
            assert list(out[f"model.layers.{l}.{n}"].shape) == shp, (l, n)
    return out


def set_model_from_released(model, t):
    """Set the in-memory model to exactly the (float) values of a released-name tensor dict."""
    sd = {}
    for k, v in t.items():
        if ".mlp.experts." in k:
            continue
        sd[k] = v
    for l, layer in enumerate(model.model.layers):
        ex = getattr(layer.mlp, "experts", None)
        if ex is None:
            continue
        pre = f"model.layers.{l}.mlp.experts."
        E = ex.gate_up_proj.shape[0]
        sd[pre + "gate_up_proj"] = torch.stack([torch.cat([t[f"{pre}{e}.gate_proj.weight"],
                                                           t[f"{pre}{e}.up_proj.weight"]]) for e in range(E)])
        sd[pre + "down_proj"] = torch.stack([t[f"{pre}{e}.down_proj.weight"] for e in range(E)])
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    assert not unexpected and all("rotary_emb" in m for m in missing), (missing, unexpected)


def mtp_tensors(s, t, fseed):
    """The MTP module DeepSeek-V3 ships after the main layers (layer index num_hidden_layers): embed_tokens and
    shared_head.head (copies of the main embedding / lm_head, as released), enorm, hnorm, eh_proj [H, 2H],
    shared_head.norm, and one full MoE decoder layer. Random values; no reference implementation uses them."""
    L, H, V = s["layers"], s["hidden"], s["vocab"]
    g = torch.Generator().manual_seed(fseed + 7)
    out = {}
    for n, shp in layer_shapes(s, L).items():  # l = L >= dense: an MoE layer
        full = f"model.layers.{L}.{n}"
        if "norm" in n:
            out[full] = 1.0 + 0.3 * torch.randn(shp, generator=g)
        elif n.endswith("e_score_correction_bias"):
            out[full] = 0.25 * torch.randn(shp, generator=g)
        else:
            out[full] = 1.6 / math.sqrt(shp[-1]) * torch.randn(shp, generator=g)
    p = f"model.layers.{L}."
    out[p + "embed_tokens.weight"] = t["model.embed_tokens.weight"].clone()
    out[p + "shared_head.head.weight"] = t["lm_head.weight"].clone()
    out[p + "enorm.weight"] = 1.0 + 0.3 * torch.randn(H, generator=g)
    out[p + "hnorm.weight"] = 1.0 + 0.3 * torch.randn(H, generator=g)
    out[p + "shared_head.norm.weight"] = 1.0 + 0.3 * torch.randn(H, generator=g)
    out[p + "eh_proj.weight"] = 1.6 / math.sqrt(2 * H) * torch.randn(2 * H, H, generator=g).T.contiguous()
    assert out[p + "eh_proj.weight"].shape == (H, 2 * H)
    return out


def released_config(model, s, quant=False):
    """config.json in the released DeepSeek-V3 (or Moonlight) spelling."""
    c = json.loads(model.config.to_json_string())
    rp = dict(c.pop("rope_parameters"))
    theta = rp.pop("rope_theta")
    c["rope_theta"] = theta
    if s["spelling"] == "v3":
        assert rp.pop("rope_type") == "yarn"
        rp["type"] = "yarn"  # the released key is "type"
        c["rope_scaling"] = rp
        keys = RELEASED_V3_KEYS
    else:
        assert rp == {"rope_type": "default"}, rp
        keys = MOONLIGHT_KEYS
        c["aux_loss_alpha"], c["seq_aux"], c["pretraining_tp"] = 0.001, True, 1
    c["architectures"] = ["DeepseekV3ForCausalLM"]
    c["auto_map"] = dict(AUTO_MAP)
    c["ep_size"], c["moe_layer_freq"] = 1, 1
    c["scoring_func"], c["topk_method"] = "sigmoid", "noaux_tc"
    c["torch_dtype"] = "bfloat16"
    c["transformers_version"] = "4.46.3"
    c["num_nextn_predict_layers"] = 1 if s["mtp"] else 0
    if quant:
        c["quantization_config"] = dict(FP8_QCONFIG)
    out = {k: c[k] for k in keys if k in c}
    missing = set(keys) - set(out) - ({"quantization_config"} if not quant else set())
    assert not missing, missing
    return out


def write_hf(s, model, d):
    """transformers 5.23 save_pretrained of the float32 model (config rewritten sorted; generation_config removed)."""
    m = copy.deepcopy(model)
    m.save_pretrained(d)
    del m
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    with open(os.path.join(d, "config.json")) as f:
        write_json(os.path.join(d, "config.json"), json.load(f))


def write_released(s, model, d, fseed):
    """Released layout in bf16 (e_score_correction_bias F32), optional MTP module; the in-memory model is set to
    exactly the stored values."""
    t = released_state(model, s)
    out = {}
    for k, v in t.items():
        out[k] = v.float().clone() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)
    set_model_from_released(model, {k: v.float() for k, v in out.items()})
    if s["mtp"]:
        for k, v in mtp_tensors(s, t, fseed).items():
            out[k] = v.float() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)
    st_save(out, os.path.join(d, "model.safetensors"))
    write_json(os.path.join(d, "config.json"), released_config(model, s))


# ---------------------------------------------------------------------------------------------------------
# FP8 (DeepSeek-V3 block quantization)
# ---------------------------------------------------------------------------------------------------------
def fp8_quantize(w, block=FP8_BLOCK):
    """w [out, in] float32 -> (e4m3fn codes [out, in] as torch.float8_e4m3fn, scale_inv [ceil(out/128),
    ceil(in/128)] float32) the way DeepSeek's quantizer does it: per block scale = amax / 448 (the partial last
    block's zero padding does not change amax), q = round-to-nearest-even(w / scale)."""
    R, C = w.shape
    bo, bi = block
    nr, nc = -(-R // bo), -(-C // bi)
    pad = torch.zeros(nr * bo, nc * bi, dtype=torch.float32)
    pad[:R, :C] = w
    blocks = pad.reshape(nr, bo, nc, bi)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).float()
    q = (blocks / scale[:, None, :, None]).reshape(nr * bo, nc * bi)[:R, :C]
    assert q.abs().max() <= FP8_MAX * (1 + 1e-6)
    return q.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def fp8_dequantize_t(q, scale, block=FP8_BLOCK):
    R, C = q.shape
    s = scale.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:R, :C]
    return q.float() * s


def write_fp8(s, model, d, fseed):
    """The released DeepSeek-V3 FP8 layout, written by hand. Per-block spread: every 128x128 block of the source is
    first multiplied by 2^u (u uniform in [-3, 0]) so the scales differ from block to block. The in-memory model is
    set to exactly the dequantized values."""
    g = torch.Generator().manual_seed(fseed + 3)
    t = released_state(model, s)
    out, deq, info = {}, {}, {"matrices": 0, "partial": [], "codes": set()}
    for k in sorted(t):
        v = t[k]
        if is_fp8_weight(k):
            R, C = v.shape
            nr, nc = -(-R // 128), -(-C // 128)
            spread = torch.exp2(-3.0 * torch.rand(nr, nc, generator=g))
            w = v * spread.repeat_interleave(128, 0).repeat_interleave(128, 1)[:R, :C]
            q, sc = fp8_quantize(w)
            out[k], out[k + "_scale_inv"] = q, sc
            deq[k] = fp8_dequantize_t(q, sc)
            info["matrices"] += 1
            info["codes"] |= set(np.unique(q.view(torch.uint8).numpy()).tolist())
            if (R % 128 and nr > 1) or (C % 128 and nc > 1):
                info["partial"].append(f"{k.split('layers.')[1]} {[R, C]} -> {[nr, nc]}")
        elif k.endswith("e_score_correction_bias"):
            out[k] = v.float().clone()
            deq[k] = out[k]
        else:
            out[k] = v.to(torch.bfloat16)
            deq[k] = out[k].float()
    codes = info.pop("codes")
    sub = {c for c in codes if (c >> 3) & 0xF == 0 and c & 7}
    assert 0x7E in codes and 0xFE in codes and sub, "fp8 codes: want +-448 and subnormals"
    info["n_codes"], info["n_subnormal_codes"] = len(codes), len(sub)
    set_model_from_released(model, deq)
    st_save(out, os.path.join(d, "model.safetensors"))
    write_json(os.path.join(d, "config.json"), released_config(model, s, quant=True))
    return deq, info


def fp8_transformers_dequant_info(d):
    """Informational: transformers 5.23's own Fp8Dequantize._dequantize_one on every FP8 tensor of the folder vs the
    exact 128x128-block dequantization. It derives the block from the scale grid (rows // scale_rows), so a matrix
    with more than one block along a dimension and a partial last block is dequantized with the wrong block size
    (or raises, e.g. for the released kv_a_proj_with_mqa [576, 7168] with scales [5, 56])."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    op = Fp8Dequantize(None)
    ok, wrong, raised = [], [], []
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        for k in sorted(k for k in f.keys() if k.endswith("_scale_inv")):
            w, sc = f.get_tensor(k[: -len("_scale_inv")]), f.get_tensor(k)
            exact = fp8_dequantize_t(w, sc)
            short = k.split("layers.")[1][: -len(".weight_scale_inv")]
            try:
                tf = op._dequantize_one(w, sc, output_dtype=torch.float32)
            except ValueError as ex:
                raised.append(f"{short}: {ex}")
                continue
            diff = (tf - exact).abs().max().item()
            (ok if diff == 0 else wrong).append(short if diff == 0 else f"{short} {list(w.shape)} (max diff {diff:.3g})")
    # the released shape: 576 rows (512 + 64) in 5 row blocks
    try:
        op._dequantize_one(torch.zeros(576, 256, dtype=torch.float8_e4m3fn), torch.ones(5, 2))
        rel = "no error"
    except ValueError as ex:
        rel = str(ex)
    return dict(exact=len(ok), wrong=wrong, raised=raised, released_kv_a=rel)


TF_FP8_LOAD = r"""
import json, os, sys, torch
sys.path.insert(0, sys.argv[3]) if sys.argv[3] else None
os.environ["CUDA_VISIBLE_DEVICES"] = ""
import transformers
transformers.logging.set_verbosity_error()
from transformers import AutoModelForCausalLM
from safetensors.torch import load_file
try:
    import accelerate  # noqa
except Exception as ex:
    print(json.dumps({"skipped": "accelerate not importable: " + type(ex).__name__})); sys.exit(0)
d, ref = sys.argv[1], sys.argv[2]
res = {}
try:
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                             experts_implementation="eager").eval()
except Exception as ex:
    print(json.dumps({"load_error": f"{type(ex).__name__}: {str(ex).splitlines()[0][:200]}"})); sys.exit(0)
res["quantization_config_after_load"] = getattr(m.config, "quantization_config", None) is not None
res["param_dtypes_after_load"] = sorted({f"{n.split('.')[-2]}:{str(p.dtype)[6:]}" for n, p in m.named_parameters()
                                         if p.dtype != torch.float32})
m = m.float()  # (some parameters stay bf16 despite dtype=float32, see param_dtypes_after_load)
want = load_file(os.path.join(ref, "model.safetensors"))
sd = m.state_dict()
diffs = {}
for l, layer in enumerate(m.model.layers):
    for n in ("self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.q_proj", "self_attn.kv_a_proj_with_mqa",
              "self_attn.kv_b_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
        k = f"model.layers.{l}.{n}.weight"
        if k in sd and k in want:
            diffs[k] = (sd[k] - want[k]).abs().max().item()
res["param_max_diff"] = {k.split("layers.")[1][:-7]: float(f"{v:.3g}") for k, v in diffs.items()}
g = json.load(open(os.path.join(d, "golden.json")))
with torch.no_grad():
    out = m(torch.tensor([g["ids"]]), use_cache=False).logits[0]
res["logits_vs_golden"] = (out - torch.tensor(g["logits"])).abs().max().item()
print(json.dumps(res))
"""


def fp8_transformers_load(d, refdir, accel_path):
    """Informational: transformers' own load of the FP8 folder (CPU -> FineGrainedFP8HfQuantizer flips to
    dequantize=True; requires `accelerate`, run in a subprocess with --accelerate-path on sys.path)."""
    r = subprocess.run([sys.executable, "-c", TF_FP8_LOAD, d, refdir, accel_path or ""], capture_output=True,
                       text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except Exception:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:]}


# ---------------------------------------------------------------------------------------------------------
# Reading back / reference
# ---------------------------------------------------------------------------------------------------------
def load_reference(d):
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                             experts_implementation="eager")
    return m.eval()


def read_saved(d):
    out = {}
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def check_saved_equals(ref, saved, s):
    """Every reference parameter (and the e_score_correction_bias buffers) equals the saved tensors, upcast exactly;
    every saved tensor of the main layers is used (the MTP module is not)."""
    want = released_state(ref, s)
    used = set()
    for k, v in want.items():
        assert k in saved, k
        assert torch.equal(saved[k].float(), v.float()), k
        used.add(k)
    rest = set(saved) - used
    assert all(k.startswith(f"model.layers.{s['layers']}.") for k in rest), sorted(rest)[:5]
    return rest


def router_gaps(ref, ids, s):
    """Smallest gap of every routing decision (transformers' router logits, float64 here): the topk_group-th vs the
    next group score (sum of each group's top-2 biased scores) and the k-th vs (k+1)-th biased score among the
    experts of the kept groups."""
    with torch.no_grad():
        out = ref(torch.tensor([ids]), use_cache=False, output_router_logits=True)
    moe_layers = [l for l in range(s["layers"]) if l >= s["dense"]]
    assert len(out.router_logits) == len(moe_layers)
    gaps = []
    E, ng, tg, K = s["experts"], s["n_group"], s["topk_group"], s["topk"]
    for l, lg in zip(moe_layers, out.router_logits):
        bias = ref.model.layers[l].mlp.gate.e_score_correction_bias.double().numpy()
        c = 1 / (1 + np.exp(-lg.double().numpy())) + bias
        T = c.shape[0]
        if ng > 1 and tg < ng:
            gsc = np.sort(c.reshape(T, ng, E // ng), -1)[..., -2:].sum(-1)
            srt = np.sort(gsc, -1)[:, ::-1]
            gaps.append((srt[:, tg - 1] - srt[:, tg]).min())
            keep = np.argsort(-gsc, -1, kind="stable")[:, :tg]
            gm = np.zeros((T, ng), bool)
            np.put_along_axis(gm, keep, True, -1)
            c = np.where(np.repeat(gm, E // ng, -1), c, -np.inf)
        srt = np.sort(c, -1)[:, ::-1]
        gaps.append((srt[:, K - 1] - srt[:, K]).min())
    return float(min(gaps))


def find_prompt(ref, s, fseed):
    P, G, V = s["prompt_len"], s["gen"], s["vocab"]
    g = torch.Generator().manual_seed(fseed)
    for attempt in range(500):
        ids = torch.randint(0, V, (P,), generator=g).tolist()
        ok = True
        with torch.no_grad():
            for _ in range(G):
                last = ref(torch.tensor([ids]), use_cache=False).logits[0, -1]
                top2 = torch.topk(last, 2).values
                if (top2[0] - top2[1]).item() < MIN_GREEDY_MARGIN:
                    ok = False
                    break
                ids.append(int(torch.argmax(last)))
        if not ok:
            continue
        gap = router_gaps(ref, ids, s)
        if gap < MIN_ROUTER_GAP:
            continue
        with torch.no_grad():
            logits = ref(torch.tensor([ids]), use_cache=False).logits[0].float()
        assert logits.shape == (P + G, V)
        assert logits[P - 1: -1].argmax(-1).tolist() == ids[P:]
        return ids, logits, gap, attempt + 1
    raise RuntimeError(f"{s['name']}: no prompt with robust greedy/routing margins found")


def decode_check(ref, ids, P, logits, s):
    """use_cache prefill of the prompt, then one token at a time; transformers' cache holds only the latent."""
    with torch.no_grad():
        out = ref(torch.tensor([ids[:P]]), use_cache=True)
        pkv = out.past_key_values
        rows = [out.logits[0]]
        for t in range(P, len(ids)):
            o = ref(torch.tensor([[ids[t]]]), past_key_values=pkv, use_cache=True)
            pkv = o.past_key_values
            rows.append(o.logits[0])
        shapes = [(tuple(layer.keys.shape), tuple(layer.values.shape)) for layer in pkv.layers]
        assert shapes == [((1, 1, len(ids), s["r"]), (1, 1, len(ids), s["dr"]))] * s["layers"], shapes
    dec = torch.cat(rows, 0).float()
    diff = (dec - logits).abs().max().item()
    assert diff < DECODE_TOL, diff
    return diff


def impl_diffs(ref, ids, logits):
    """transformers' defaults (sdpa attention, grouped_mm experts) vs the eager golden (informational)."""
    fresh = type(ref.config).from_dict(ref.config.to_dict())  # no implementation chosen yet
    m = AutoModelForCausalLM.from_config(fresh).float().eval()
    m.load_state_dict(ref.state_dict())
    with torch.no_grad():
        d = (m(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    return d, m.config._attn_implementation, m.config._experts_implementation


def interleave_diff(ref, ids, logits):
    """transformers with rope_interleave false on the same weights (informational; a loader that ignores the
    interleaving is this far off)."""
    c = copy.deepcopy(ref.config)
    c.rope_interleave = False
    m = AutoModelForCausalLM.from_config(c, attn_implementation="eager", experts_implementation="eager").float().eval()
    m.load_state_dict(ref.state_dict())
    with torch.no_grad():
        return (m(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()


def fmt_f32(v):
    assert np.isfinite(v)
    return str(np.float32(v))


def write_golden(path, ids, prompt_len, logits, atol):
    rows = ",\n    ".join("[" + ",".join(fmt_f32(x) for x in row) + "]" for row in logits)
    with open(path, "w") as f:
        f.write('{\n  "ids": %s,\n  "prompt_len": %d,\n  "atol": %s,\n  "logits": [\n    %s\n  ]\n}\n'
                % (json.dumps([int(i) for i in ids]), prompt_len, json.dumps(atol), rows))


def dir_size(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def st_listing(d):
    """name -> (dtype, shape) from the raw safetensors header."""
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    meta = h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in h.items()}, meta


def md_version(pkg):
    import importlib.metadata as md
    try:
        return md.version(pkg)
    except Exception:
        return "-"


def load_check_numpy():
    spec = importlib.util.spec_from_file_location("check_numpy_dsv3", os.path.join(HERE, "check_numpy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------------------
# MLX (mlx_lm.convert)
# ---------------------------------------------------------------------------------------------------------
def save_tokenizer(d, vocab_size):
    """A tiny WordLevel tokenizer with exactly vocab_size tokens (only there because mlx_lm.convert needs one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {f"t{i}": i for i in range(vocab_size - 2)}
    vocab["<unk>"] = vocab_size - 2
    vocab["<|endoftext|>"] = vocab_size - 1
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|endoftext|>").save_pretrained(d)


def read_st_np(path):
    """name -> numpy array (BF16 upcast exactly to float32), name -> (dtype, shape), metadata."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    meta = header.pop("__metadata__", None)
    base = 8 + n
    out, info = {}, {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        buf = raw[base + a: base + b]
        dt = v["dtype"]
        if dt == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype={"U32": "<u4", "F32": "<f4"}[dt])
        out[k] = arr.reshape(v["shape"]).copy()
        info[k] = (dt, list(v["shape"]))
    return out, info, meta


def unpack_bits(wq, bits):
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")
    b = bitstream.reshape(*bitstream.shape[:-1], bitstream.shape[-1] // bits, bits).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint32)


def mlx_convert_quiet(**kw):
    import contextlib
    import io
    from mlx_lm import convert as mlx_convert
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mlx_convert(**kw)
    return buf.getvalue()


def gen_mlx(s, model, d, tmp, fseed):
    """Writes the released-layout bf16 source (no MTP), runs mlx_lm.convert into d, checks what it wrote,
    dequantizes every quantized matrix exactly and writes an HF float32 folder of those weights (per-expert names,
    kv_b_proj rebuilt from embed_q / unembed_out; the source config). Returns (that folder, the source, info)."""
    import mlx.core as mx
    mx.set_default_device(mx.cpu)
    L, E, nh, r, dn, dv = s["layers"], s["experts"], s["heads"], s["r"], s["dn"], s["dv"]
    G, B = s["q"]["q_group_size"], s["q"]["q_bits"]
    info = {}
    src = os.path.join(tmp, s["name"] + "-src")
    os.makedirs(src)
    write_released(s, model, src, fseed)
    save_tokenizer(src, s["vocab"])
    src_cfg = json.load(open(os.path.join(src, "config.json")))
    src_t, src_info, _ = read_st_np(os.path.join(src, "model.safetensors"))

    # the same source WITH an MTP module at layer index num_hidden_layers: mlx-lm 0.32.2's sanitize only drops
    # model.layers.61.* (and stacks experts of layers < num_hidden_layers), so the load fails (recorded)
    s_mtp = dict(s, mtp=True)
    src2 = os.path.join(tmp, s["name"] + "-src-mtp")
    os.makedirs(src2)
    write_released(s_mtp, copy.deepcopy(model), src2, fseed)
    save_tokenizer(src2, s["vocab"])
    try:
        mlx_convert_quiet(hf_path=src2, mlx_path=os.path.join(tmp, "mtp-try"), quantize=True, **s["q"])
        info["mtp_source"] = "mlx_lm.convert of the source with an MTP module worked"
    except Exception as ex:
        msg = str(ex).strip().splitlines()
        info["mtp_source"] = f"{type(ex).__name__}: {msg[0]} {msg[1].strip() if len(msg) > 1 else ''} ..."

    if os.path.isdir(d):
        shutil.rmtree(d)
    log = mlx_convert_quiet(hf_path=src, mlx_path=d, quantize=True, **s["q"])
    info["bpw"] = next((ln.split("with ")[1].rstrip(".") for ln in log.splitlines() if "bits per weight" in ln), "?")
    info["files"] = sorted(os.listdir(d))

    cfg = json.load(open(os.path.join(d, "config.json")))
    q = cfg["quantization"]
    assert cfg["quantization_config"] == q and q == {"group_size": G, "bits": B, "mode": "affine"}, q
    assert {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")} == src_cfg, \
        "convert changed other config keys"
    info["quantization"] = q

    t, tinfo, meta = read_st_np(os.path.join(d, "model.safetensors"))
    assert meta == {"format": "mlx"}, meta
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    assert set(idx["weight_map"]) == set(t) and set(idx["weight_map"].values()) == {"model.safetensors"}
    mods = sorted(k[: -len(".scales")] for k in t if k.endswith(".scales"))
    # which modules mlx-lm quantizes: everything with to_quantized whose input width is a multiple of the group
    lin = ["model.embed_tokens", "lm_head"]
    unq_mods = []
    for l in range(L):
        a = f"model.layers.{l}."
        names = ["self_attn.kv_a_proj_with_mqa", "self_attn.embed_q", "self_attn.unembed_out", "self_attn.o_proj"]
        names += ["self_attn.q_proj"] if s["q_lora"] is None else ["self_attn.q_a_proj", "self_attn.q_b_proj"]
        names += (["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] if l < s["dense"] else
                  ["mlp.switch_mlp.gate_proj", "mlp.switch_mlp.up_proj", "mlp.switch_mlp.down_proj",
                   "mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj", "mlp.shared_experts.down_proj"])
        for n in names:
            inw = src_t_shape_in(s, n)
            (lin if inw % G == 0 else unq_mods).append(a + n)
    assert mods == sorted(lin), set(mods) ^ set(lin)
    assert unq_mods == [f"model.layers.{l}.self_attn.o_proj" for l in range(L)], unq_mods
    info["unquantized_matrices"] = [m.split("layers.")[1] if "layers." in m else m for m in unq_mods]
    deq, np_vs_mx = {}, 0.0
    for p in mods:
        wq, sc, bi = t[p + ".weight"], t[p + ".scales"], t[p + ".biases"]
        assert tinfo[p + ".weight"][0] == "U32" and tinfo[p + ".scales"][0] == tinfo[p + ".biases"][0] == "BF16", p
        assert wq.shape[-1] * 32 // B == sc.shape[-1] * G and wq.shape[:-1] == sc.shape[:-1] == bi.shape[:-1], p
        f32 = np.float32
        w = np.repeat(sc.astype(f32), G, -1) * unpack_bits(wq, B).astype(f32) + np.repeat(bi.astype(f32), G, -1)
        ref = np.array(mx.dequantize(mx.array(wq), mx.array(sc), mx.array(bi), group_size=G, bits=B, mode="affine",
                                     dtype=mx.float32))
        dd = float(np.abs(ref - w).max())
        np_vs_mx = max(np_vs_mx, dd)
        assert dd == 0.0, (p, dd)
        deq[p + ".weight"] = w
    qkeys = {p + x for p in mods for x in (".weight", ".scales", ".biases")}
    unq = sorted(set(t) - qkeys)
    for k in unq:
        assert tinfo[k][0] in ("BF16", "F32"), k
        deq[k] = t[k].astype(np.float32)
    info["unquantized_dtypes"] = {k.split("layers.")[-1].split(".", 1)[-1]: tinfo[k][0] for k in unq
                                  if k.startswith("model.layers.0.") or k.startswith(f"model.layers.{L - 1}.")
                                  or "layers" not in k}
    info["np_vs_mx"] = np_vs_mx

    # ---- MLX names -> HF released names (exact re-arrangement); kv_b_proj per head = [embed_q[h]^T ; unembed_out[h]]
    hf = {}
    for k, v in deq.items():
        if ".mlp.switch_mlp." in k:
            pre, rest = k.split(".mlp.switch_mlp.")
            assert v.shape[0] == E, (k, v.shape)
            for e in range(E):
                hf[f"{pre}.mlp.experts.{e}.{rest}"] = np.ascontiguousarray(v[e])
        elif k.endswith("self_attn.embed_q.weight"):
            uk, uv = v, deq[k.replace("embed_q", "unembed_out")]
            assert uk.shape == (nh, r, dn) and uv.shape == (nh, dv, r), (uk.shape, uv.shape)
            kvb = np.concatenate([uk.transpose(0, 2, 1), uv], axis=1).reshape(nh * (dn + dv), r)
            hf[k.replace("embed_q", "kv_b_proj")] = np.ascontiguousarray(kvb)
        elif k.endswith("self_attn.unembed_out.weight"):
            continue
        else:
            hf[k] = np.ascontiguousarray(v)
    assert set(hf) == set(src_t), set(hf) ^ set(src_t)
    err = {}
    for k, v in hf.items():
        assert v.shape == src_t[k].shape, k
        if src_info[k][0] == "F32" or "norm" in k:
            assert np.array_equal(v, src_t[k]), k  # unquantized: unchanged
            continue
        kind = ("experts" if ".experts." in k else "kv_b (embed_q / unembed_out)" if "kv_b_proj" in k else
                "router (not quantized)" if k.endswith("mlp.gate.weight") else
                "o_proj (not quantized)" if "o_proj" in k else "other")
        err[kind] = max(err.get(kind, 0.0), float(np.abs(v - src_t[k]).max() / np.abs(src_t[k]).max()))
    info["quant_rel_err"] = err
    deqd = os.path.join(tmp, s["name"] + "-dequant-hf")
    os.makedirs(deqd)
    st_save({k: torch.from_numpy(v) for k, v in hf.items()}, os.path.join(deqd, "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(deqd, "config.json"))
    return deqd, src, info


def src_t_shape_in(s, n):
    """Input width (last axis) of an MLX module of this spec."""
    nh = s["heads"]
    return {"self_attn.kv_a_proj_with_mqa": s["hidden"], "self_attn.embed_q": s["dn"], "self_attn.unembed_out": s["r"],
            "self_attn.o_proj": nh * s["dv"], "self_attn.q_proj": s["hidden"], "self_attn.q_a_proj": s["hidden"],
            "self_attn.q_b_proj": s["q_lora"] or 0, "mlp.gate_proj": s["hidden"], "mlp.up_proj": s["hidden"],
            "mlp.down_proj": s["inter"], "mlp.switch_mlp.gate_proj": s["hidden"], "mlp.switch_mlp.up_proj": s["hidden"],
            "mlp.switch_mlp.down_proj": s["moe_inter"], "mlp.shared_experts.gate_proj": s["hidden"],
            "mlp.shared_experts.up_proj": s["hidden"],
            "mlp.shared_experts.down_proj": s["moe_inter"] * s["n_shared"]}[n]


def mlx_forward(d, ids):
    """mlx-lm's own forward on a folder, parameters upcast to float32 (quantized scales / biases too)."""
    import mlx.core as mx
    from pathlib import Path
    from mlx.utils import tree_map
    from mlx_lm.utils import load_model
    mx.set_default_device(mx.cpu)
    m, _ = load_model(Path(d))
    m.update(tree_map(lambda v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v, m.parameters()))
    return np.array(m(mx.array([ids]))[0].astype(mx.float32)).astype(np.float64)


def mlx_info(d, cn, ids_only=False):
    """mlx-lm 0.32.2 on a folder: vs golden, vs numpy exact and vs numpy with mlx-lm's group masking (0.0 instead of
    -inf for the dropped groups)."""
    try:
        import mlx_lm  # noqa: F401
    except Exception as ex:  # pragma: no cover
        return {"error": f"mlx-lm not available ({type(ex).__name__})"}
    g = json.load(open(os.path.join(d, "golden.json")))
    try:
        out = mlx_forward(d, g["ids"])
    except Exception as ex:
        msg = str(ex).strip().splitlines()
        return {"error": f"{type(ex).__name__}: {msg[0][:160]}"}
    gold = np.array(g["logits"])
    cfg, w, dts = cn.load(d)
    c = cn.parse_config(cfg)
    p, _ = cn.canonical(cfg, w, dts, c)
    p = {k: v.astype(np.float64) for k, v in p.items()}
    res = dict(vs_golden=float(np.abs(out - gold).max()),
               greedy_same=out[g["prompt_len"] - 1: -1].argmax(-1).tolist() == g["ids"][g["prompt_len"]:])
    if c["n_group"] > 1 and c["topk_group"] < c["n_group"]:
        zero = cn.forward(c, p, np.array(g["ids"]), variant="mlx_group_mask_zero")
        res["vs_numpy_group_mask_zero"] = float(np.abs(out - zero).max())
        res["numpy_group_mask_zero_vs_golden"] = float(np.abs(zero - gold).max())
    return res


def mlx_bias_probe(d, cn, tmp, shift=-1.5):
    """Informational: the same MLX folder with every e_score_correction_bias shifted by `shift` (so the biased scores
    of the kept groups are negative). mlx-lm's group_expert_select writes 0.0 (not -inf) into the dropped groups, so
    it then routes to experts of dropped groups; transformers (numpy exact) does not."""
    import mlx.core as mx
    mx.set_default_device(mx.cpu)
    pd = os.path.join(tmp, os.path.basename(d) + "-biasprobe")
    shutil.copytree(d, pd)
    w = mx.load(os.path.join(pd, "model.safetensors"))
    w = {k: (v + shift if k.endswith("e_score_correction_bias") else v) for k, v in w.items()}
    mx.save_safetensors(os.path.join(pd, "model.safetensors"), w, metadata={"format": "mlx"})
    g = json.load(open(os.path.join(d, "golden.json")))
    out = mlx_forward(pd, g["ids"])
    cfg, wt, dts = cn.load(pd)
    c = cn.parse_config(cfg)
    p, _ = cn.canonical(cfg, wt, dts, c)
    p = {k: v.astype(np.float64) for k, v in p.items()}
    exact = cn.forward(c, p, np.array(g["ids"]))
    zero = cn.forward(c, p, np.array(g["ids"]), variant="mlx_group_mask_zero")
    return dict(shift=shift, mlx_vs_transformers_semantics=float(np.abs(out - exact).max()),
                mlx_vs_numpy_group_mask_zero=float(np.abs(out - zero).max()))


# ---------------------------------------------------------------------------------------------------------
def gen_one(s, out_root, seed, tmp, cn, accel_path):
    d = os.path.join(out_root, s["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    fseed = (zlib.crc32(s["name"].encode()) + 1000003 * seed) & 0x7FFFFFFF
    model = build_model(s, fseed)
    extra = {}
    if s["layout"] == "mlx":
        refdir, srcdir, extra = gen_mlx(s, model, d, tmp, fseed)
    else:
        os.makedirs(d)
        if s["layout"] == "hf":
            write_hf(s, model, d)
            refdir = d
        elif s["layout"] == "released":
            write_released(s, model, d, fseed)
            refdir = d
        else:  # fp8: the reference reads an HF float32 folder of the exactly dequantized weights
            deq, extra["fp8"] = write_fp8(s, model, d, fseed)
            refdir = os.path.join(tmp, s["name"] + "-dequant-hf")
            os.makedirs(refdir)
            st_save({k: v.float() for k, v in deq.items()}, os.path.join(refdir, "model.safetensors"))
            rc = released_config(model, s)
            write_json(os.path.join(refdir, "config.json"), rc)
            extra["fp8"]["transformers_dequantize_one"] = fp8_transformers_dequant_info(d)
    saved = read_saved(refdir)
    ref = load_reference(refdir)
    assert type(ref).__name__ == "DeepseekV3ForCausalLM"
    assert ref.config._attn_implementation == "eager" and ref.config._experts_implementation == "eager"
    c = ref.config
    assert (c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group, c.first_k_dense_replace,
            c.q_lora_rank) == (s["experts"], s["topk"], s["n_group"], s["topk_group"], s["dense"], s["q_lora"])
    assert c.rope_interleave is True and c.head_dim == s["dr"] and c.qk_head_dim == s["dn"] + s["dr"]
    assert torch.equal(ref.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    assert ref.model.layers[0].self_attn.scaling == model.model.layers[0].self_attn.scaling
    rest = check_saved_equals(ref, saved, s)
    extra["unused_tensors"] = len(rest)
    lst, meta = st_listing(d)
    extra["metadata"] = meta
    extra["dtypes"] = {}
    for k, (dt, _) in lst.items():
        kind = ("e_score_correction_bias" if k.endswith("e_score_correction_bias") else "norms" if "norm" in k else
                "scale_inv" if k.endswith("scale_inv") else "scales/biases" if k.endswith((".scales", ".biases"))
                else "router" if k.endswith("mlp.gate.weight") else "other")
        extra["dtypes"].setdefault(kind, set()).add(dt)
    extra["dtypes"] = {k: sorted(v) for k, v in extra["dtypes"].items()}

    ids, logits, min_gap, attempts = find_prompt(ref, s, fseed)
    P = s["prompt_len"]
    dec_diff = decode_check(ref, ids, P, logits, s)
    if s["layout"] != "mlx":  # the in-memory source model (set to the stored values) computes the same logits
        with torch.no_grad():
            l2 = model(torch.tensor([ids]), use_cache=False).logits[0]
        assert torch.equal(l2, logits), (l2 - logits).abs().max()
    else:  # informational: the unquantized bf16 source vs the quantized golden
        src_ref = load_reference(srcdir)
        with torch.no_grad():
            extra["quant_shift"] = (src_ref(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    if s["spelling"] != "v5":
        # the same safetensors under the transformers-5 config spelling -> bit-identical logits
        alt = os.path.join(tmp, s["name"] + "-v5cfg")
        os.makedirs(alt)
        v5 = json.loads(model.config.to_json_string())
        write_json(os.path.join(alt, "config.json"), v5)
        shutil.copy(os.path.join(refdir, "model.safetensors"), alt)
        ref2 = load_reference(alt)
        with torch.no_grad():
            l3 = ref2(torch.tensor([ids]), use_cache=False).logits[0]
        assert torch.equal(l3, logits), (l3 - logits).abs().max()
        rp2, rp1 = dict(ref2.config.rope_parameters), dict(c.rope_parameters)
        rp1.pop("type", None)
        assert {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in rp1.items()} \
            == {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in rp2.items()}, \
            (rp1, rp2)
        extra["rope_parameters_read"] = dict(c.rope_parameters)
    extra["default_impls"] = impl_diffs(ref, ids, logits)
    extra["interleave_false"] = interleave_diff(ref, ids, logits)

    write_golden(os.path.join(d, "golden.json"), ids, P, logits.numpy().tolist(), ATOL)
    if s["layout"] == "fp8":
        extra["fp8"]["transformers_load"] = fp8_transformers_load(d, refdir, accel_path)
    if s["layout"] == "mlx":
        extra["mlx"] = mlx_info(d, cn)
        if "error" not in extra["mlx"]:
            want = extra["mlx"].get("vs_numpy_group_mask_zero", extra["mlx"]["vs_golden"])
            assert want < MLX_CROSS_TOL, extra["mlx"]
            extra["mlx_bias_probe"] = mlx_bias_probe(d, cn, tmp)
    elif s["layout"] in ("released", "fp8"):  # informational: mlx-lm 0.32.2 reading the folder directly
        extra["mlx"] = mlx_info(d, cn)

    res = cn.check_dir(d, variants=True, assert_features=True)
    assert res["ok"], res
    extra["numpy"] = res
    for fn in os.listdir(d):  # safetensors creates its file 0600
        os.chmod(os.path.join(d, fn), 0o644)
    srt = torch.sort(logits, dim=-1, descending=True).values
    margins = srt[:, 0] - srt[:, 1]
    cfg_text = open(os.path.join(d, "config.json")).read()
    return dict(
        name=s["name"], dir=d, size=dir_size(d), files=sorted(os.listdir(d)), prompt_len=P, n_ids=len(ids),
        attempts=attempts, min_greedy_margin=margins[P - 1: -1].min().item(), min_router_gap=min_gap,
        logit_absmax=logits.abs().max().item(), decode_diff=dec_diff, covers=s["covers"], extra=extra,
        yarn=s["_yarn"], layers=s["layers"], config=cfg_text,
        shape=f"V{s['vocab']} H{s['hidden']} L{s['layers']} (dense {s['dense']}) heads {s['heads']} q_lora "
              f"{s['q_lora']} r {s['r']} dn {s['dn']} dr {s['dr']} dv {s['dv']} inter {s['inter']} moe_inter "
              f"{s['moe_inter']} E{s['experts']} groups {s['n_group']}/{s['topk_group']} k{s['topk']} shared "
              f"{s['n_shared']} rsf {s['rsf']} eps {s['eps']} theta {s['theta']} yarn {s['yarn']}",
        listing=lst,
    )


def describe(r):
    print(f"\n#### {r['name']}\n```")
    L = r["layers"]
    for k in sorted(r["listing"]):
        if ".layers." in k:
            li = int(k.split(".")[2])
            if li not in (0, 1, L) or (".experts." in k and ".experts.0." not in k):
                continue
        dt, sh = r["listing"][k]
        print(f"{k:60s} {dt:8s} {sh}")
    print(f"(layers 0 .. {L - 1}: layer 0 and 1 shown, experts 1.. like expert 0"
          + (f"; layer {L} = the MTP module)" if any(f"layers.{L}." in k for k in r["listing"]) else ")"))
    print("```")
    print(f"config.json:\n```json\n{r['config']}```")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output root (default: this folder)")
    ap.add_argument("--shapes-seed", type=int, default=0,
                    help="0 = the committed set; any other value = a new random set of shapes and weights")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    ap.add_argument("--describe", action="store_true", help="print tensor listings and configs")
    ap.add_argument("--accelerate-path", default=os.environ.get("DSV3_ACCELERATE_PATH", ""),
                    help="(informational) a folder with the `accelerate` package, put on sys.path of a subprocess "
                         "that lets transformers load the FP8 folder itself")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except Exception:
        pass
    from transformers.utils import import_utils
    assert not import_utils.is_kernels_available(), "uninstall `kernels` (the reference must be the torch path)"

    specs = BASE_SPECS
    if args.shapes_seed:
        rng = random.Random(args.shapes_seed)
        specs = [randomize(s, rng) for s in BASE_SPECS]
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {s["name"] for s in specs}
        if unknown:
            sys.exit(f"unknown fixture(s): {sorted(unknown)}")
        specs = [s for s in specs if s["name"] in want]
    specs = [copy.deepcopy(s) for s in specs]
    os.makedirs(args.out, exist_ok=True)
    cn = load_check_numpy()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors {md_version('safetensors')}, "
          f"numpy {np.__version__}, mlx {md_version('mlx')}, mlx-lm {md_version('mlx-lm')}, accelerate "
          f"{md_version('accelerate')} (installed), kernels {md_version('kernels')}, shapes-seed {args.shapes_seed}")
    with tempfile.TemporaryDirectory(prefix="dsv3fx-") as tmp:
        results = [gen_one(s, args.out, args.shapes_seed, tmp, cn, args.accelerate_path) for s in specs]
    for r in results:
        ex = r["extra"]
        print(f"\n{r['name']}: {r['size'] / 1024:.1f} KiB ({', '.join(r['files'])}), ids {r['n_ids']} "
              f"(prompt {r['prompt_len']})")
        print(f"  {r['shape']}")
        print(f"  covers: {r['covers']}")
        if r["yarn"]:
            y = r["yarn"]
            print(f"  YaRN: low {y['low']} high {y['high']} ramp {y['ramp']} (truncate false would be "
                  f"{y['ramp_no_truncate']}), attention_factor {y['attention_factor']:.6f}, softmax scale "
                  f"{y['softmax_scale']:.6f} (plain {y['plain_scale']:.6f})")
        print(f"  saved dtypes: {ex['dtypes']}; metadata {ex['metadata']}; unused tensors (MTP) {ex['unused_tensors']}")
        if "rope_parameters_read" in ex:
            print(f"  transformers reads rope_parameters {ex['rope_parameters_read']}")
        if "fp8" in ex:
            f8 = ex["fp8"]
            t1 = f8["transformers_dequantize_one"]
            print(f"  FP8: {f8['matrices']} matrices, {f8['n_codes']} distinct e4m3 codes ({f8['n_subnormal_codes']} "
                  f"subnormal), multi-block partial: {f8['partial']}")
            print(f"  transformers Fp8Dequantize._dequantize_one: exact on {t1['exact']}, WRONG on {t1['wrong']}, "
                  f"raises on {t1['raised']}; released kv_a [576, 7168]-style scales [5, 2]: {t1['released_kv_a']}")
            print(f"  transformers from_pretrained of the FP8 folder: {f8['transformers_load']}")
        if "quantization" in ex:
            print(f"  mlx_lm.convert ({ex['bpw']}): quantization {json.dumps(ex['quantization'])}; files {ex['files']}")
            print(f"  not quantized: {ex['unquantized_matrices']}; unquantized dtypes {ex['unquantized_dtypes']}")
            print(f"  mx.dequantize == numpy decode (max |diff| {ex['np_vs_mx']}); max relative quantization error: "
                  + ", ".join(f"{k} {v:.3g}" for k, v in ex["quant_rel_err"].items()))
            print(f"  source with an MTP module: {ex['mtp_source']}")
            print(f"  (info) unquantized source (transformers) vs golden: max |diff| {ex['quant_shift']:.3g}")
        if "mlx" in ex:
            print(f"  mlx-lm forward: {ex['mlx']}")
        if "mlx_bias_probe" in ex:
            print(f"  mlx-lm with every e_score_correction_bias shifted: {ex['mlx_bias_probe']}")
        print(f"  min greedy margin {r['min_greedy_margin']:.4f}, min router gap {r['min_router_gap']:.4f}, "
              f"max|logit| {r['logit_absmax']:.2f}, prompt attempts {r['attempts']}")
        print(f"  decode (prefill + one token at a time, latent cache) vs one pass: max |diff| {r['decode_diff']:.3g}")
        di = ex["default_impls"]
        print(f"  default impls ({di[1]} / {di[2]}) vs eager: {di[0]:.3g}; transformers with rope_interleave false: "
              f"{ex['interleave_false']:.3g}")
        npres = ex["numpy"]
        print(f"  check_numpy (f64) vs golden: {npres['max_diff']:.3g}; f32 noise floor {npres['f32_floor']:.3g}; "
              f"absorbed latent decode vs naive f64 {npres['latent_vs_naive']:.3g} / f32 {npres['latent32_vs_naive']:.3g}, "
              f"vs golden {npres['latent_vs_golden']:.3g}")
        print("  wrong variants (max |diff| vs golden): " +
              ", ".join(f"{k} {v:.3g}" for k, v in npres["variants"].items()))
    if args.describe:
        for r in results:
            describe(r)
    total = sum(r["size"] for r in results)
    print(f"\ntotal {total / 1024:.1f} KiB in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
