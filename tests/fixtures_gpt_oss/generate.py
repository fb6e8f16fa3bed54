#!/usr/bin/env python3
"""Generate tiny random gpt-oss (model_type gpt_oss) checkpoints + reference logits (golden.json).

Usage:
    pip install torch transformers safetensors numpy          # transformers >= 5.2 (made with 5.23.0)
    pip install "mlx[cpu]" mlx-lm tokenizers                  # MLX fixtures (made with mlx 0.32.4, mlx-lm 0.32.2)
    python3 tests/fixtures_gpt_oss/generate.py                  # regenerate the committed set here
    python3 tests/fixtures_gpt_oss/generate.py --out /tmp/fo    # same set, elsewhere (byte-identical)
    python3 tests/fixtures_gpt_oss/generate.py --out /tmp/fo7 --shapes-seed 7
                                                                # a NEW random set of shapes + weights with the
                                                                # same coverage per fixture name ("not in the repo")
    python3 tests/fixtures_gpt_oss/generate.py --only oss_f32,oss_mxfp4
    python3 tests/fixtures_gpt_oss/generate.py --describe       # also print tensor listings

Every fixture folder: config.json, model.safetensors and golden.json (no tokenizer; the MLX folders hold what
mlx_lm.convert writes: + model.safetensors.index.json, a tiny tokenizer, a model card README.md):

    {"ids": [...], "prompt_len": P, "atol": 0.002, "logits": [[...], ...]}

ids = a random prompt of P (20..30, longer than the sliding window) tokens + the reference's greedy continuation
(6 tokens); logits[i] = float32 logits at position i of ONE forward pass over all ids (use_cache=False).

Reference = the written folder reloaded with AutoModelForCausalLM.from_pretrained(dir, dtype=float32,
attn_implementation="eager", experts_implementation="eager") (bf16 weights upcast exactly; the MXFP4 folder is
dequantized by transformers' Mxfp4Dequantize, which is the only CPU path; `accelerate` is not installed, so
`quantization_config=Mxfp4Config(dequantize=True)` is passed, see README).

MLX fixtures (oss_mlx_mxfp4_q8, oss_mlx_mxfp4): mlx_lm.convert(quantize=True, ...) of a source folder written here
(released MXFP4 layout / unquantized bf16 in mlx-lm's own expert naming); every quantized matrix is dequantized with
mx.dequantize (== an independent numpy decode, asserted), put back into the HF layout as float32, and the golden is
transformers on that folder (transformers-5 config, YaRN truncate false). mlx-lm's own forward is compared with the
golden and with transformers on the same weights with truncate: true (mlx-lm always truncates; asserted < 5e-4).

Checks per fixture: the saved tensors equal the reference's parameters (MXFP4: after an independent numpy decode
of blocks/scales); full-pass argmax = greedy continuation; every greedy step has a top1-top2 margin >= 0.05 and
every router decision a k-th/(k+1)-th router-logit gap >= 2e-3 (else a new prompt); the decode path (use_cache
prefill of the prompt, then one token at a time; sliding layers keep window-1 cached keys) agrees with the
one-pass logits within 1e-4; YaRN really changes inv_freq (ramp with fractional values); the released config
spelling is read to bit-identical logits as the transformers-5 spelling; and check_numpy.py (independent numpy
float64 forward from the raw files) matches golden within atol while each deliberately wrong variant (no sinks,
window +-1, no clamps, no +1, no router bias, plain RoPE, ...) moves the logits by far more than atol.
"""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the reference runs on CPU (MXFP4: dequantize path)

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
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
MIN_ROUTER_GAP = 2e-3  # k-th vs (k+1)-th raw router logit (gpt-oss takes top-k on raw logits)
ATOL = 2e-3
DECODE_TOL = 1e-4
MLX_CROSS_TOL = 5e-4  # mlx-lm's own forward (f32) vs transformers with truncate: true on the same weights

SW, FA = "sliding_attention", "full_attention"

# The config.json keys of the released openai/gpt-oss-20b / -120b files (transformers 4.55.0.dev0), in this order
# of appearance when sorted; values other than the shapes are copied from the released file.
RELEASED_KEYS = ["architectures", "attention_bias", "attention_dropout", "eos_token_id", "experts_per_token",
                 "head_dim", "hidden_act", "hidden_size", "initial_context_length", "initializer_range",
                 "intermediate_size", "layer_types", "max_position_embeddings", "model_type", "num_attention_heads",
                 "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads", "num_local_experts",
                 "output_router_logits", "pad_token_id", "quantization_config", "rms_norm_eps", "rope_scaling",
                 "rope_theta", "router_aux_loss_coef", "sliding_window", "swiglu_limit", "tie_word_embeddings",
                 "transformers_version", "use_cache", "vocab_size"]
MXFP4_NOT_CONVERT = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]

# ---------------------------------------------------------------------------------------------------------
# The committed set.
#   layout: hf     - HF unquantized layout, what save_pretrained writes: experts.gate_up_proj [E, H, 2I] (in x out,
#                    columns interleave gate/up), experts.down_proj [E, I, H], *_bias, no `.weight` on experts
#           mxfp4  - the layout openai/gpt-oss-* ship: experts.{gate_up,down}_proj_{blocks,scales} (U8, rows = out),
#                    biases and everything else BF16, norms F32, quantization_config in config.json
#   spelling: v5       - transformers-5 save_pretrained config (rope_parameters with rope_theta inside)
#             released - the released config.json spelling (rope_scaling + top-level rope_theta, experts_per_token,
#                        initial_context_length, explicit layer_types, no dtype key)
# YaRN: rope_theta, factor, original_max_position_embeddings (L0) chosen so that the ramp has fractional values at
# these tiny head sizes; max_position_embeddings = factor * L0 (as released: 131072 = 32 * 4096).
# ---------------------------------------------------------------------------------------------------------
BASE_SPECS = [
    dict(
        name="oss_f32", layout="hf", dtype="float32", spelling="v5",
        covers="transformers-5 config (rope_parameters: yarn, rope_theta inside, truncate false) as save_pretrained "
               "writes it; float32; HF layout experts gate_up_proj [E,H,2I] / down_proj [E,I,H] + biases; "
               "layer_types [S,F,S,F], window 5; 6q/2kv head_dim 16 (q width 96 != hidden 40); top-2 of 6; "
               "intermediate 32 (2I=64 != H, I != H)",
        vocab=232, hidden=40, layer_types=[SW, FA, SW, FA], heads=6, kv_heads=2, head_dim=16,
        experts=6, topk=2, inter=32, window=5, rope_theta=150000.0, yarn_factor=4.0, yarn_orig=256, eps=1e-5,
        prompt_len=24, gen=6,
    ),
    dict(
        name="oss_bf16_released", layout="hf", dtype="bfloat16", spelling="released",
        covers="released config spelling (rope_scaling {rope_type yarn, truncate false} + top-level integer "
               "rope_theta 10000, num_local_experts + num_experts_per_tok + legacy experts_per_token, "
               "initial_context_length, no dtype); bfloat16 everywhere incl. norms and sinks (what transformers "
               "5.23 save_pretrained writes for a bf16 model); HF layout experts; layer_types [S,S,F] (NOT the "
               "default alternation), window 3; 8q/2kv head_dim 8 (64 != 48); top-3 of 8; intermediate 40",
        vocab=256, hidden=48, layer_types=[SW, SW, FA], heads=8, kv_heads=2, head_dim=8,
        experts=8, topk=3, inter=40, window=3, rope_theta=10000, yarn_factor=8.0, yarn_orig=1024, eps=1e-5,
        prompt_len=26, gen=6,
    ),
    dict(
        name="oss_mxfp4", layout="mxfp4", dtype="bfloat16", spelling="released",
        covers="released MXFP4 layout: experts gate_up_proj_blocks [E,2I,H/32,16] / _scales [E,2I,H/32], "
               "down_proj_blocks [E,H,I/32,16] / _scales [E,H,I/32] (U8, e8m0 scales spanning several exponents), "
               "expert biases BF16, attention/router/embeddings BF16, norms F32; released config + "
               "quantization_config {quant_method mxfp4, modules_to_not_convert}; layer_types [S,F,S,F], window 4; "
               "4q/1kv head_dim 32 (128 != 64); top-4 of 8; hidden 64, intermediate 96",
        vocab=256, hidden=64, layer_types=[SW, FA, SW, FA], heads=4, kv_heads=1, head_dim=32,
        experts=8, topk=4, inter=96, window=4, rope_theta=150000, yarn_factor=32.0, yarn_orig=64, eps=1e-5,
        prompt_len=28, gen=6,
    ),
    # MLX folders (mlx_lm.convert output, kept as written: + index, tokenizer, model card). Golden = transformers on
    # an HF float32 folder holding the exactly dequantized MLX weights (what a user of the MLX folder has).
    dict(
        name="oss_mlx_mxfp4_q8", layout="mlx", source="mxfp4", dtype="bfloat16", spelling="released",
        q=dict(q_bits=8, q_group_size=64, q_mode="affine"),
        covers="mlx-community \"gpt-oss-*-MXFP4-Q8\": mlx_lm.convert -q --q-bits 8 --q-group-size 64 of a released "
               "MXFP4 source; experts stay MXFP4 (gate_proj/up_proj/down_proj .weight U32 [E,out,in/8] + .scales U8 "
               "+ .bias BF16), embeddings / q,k,v,o / lm_head / router 8-bit affine g64 (.weight U32, .scales and "
               ".biases BF16, per-path `quantization` entries; router without `mode`), norms F32; released config "
               "spelling with rope_scaling truncate false, layer_types [S,F,S,F], window 5; 8q/2kv head_dim 16 (128 "
               "!= 64); top-2 of 6; hidden 64, intermediate 128; YaRN L0 4096 x 32 as released",
        vocab=240, hidden=64, layer_types=[SW, FA, SW, FA], heads=8, kv_heads=2, head_dim=16,
        experts=6, topk=2, inter=128, window=5, rope_theta=150000, yarn_factor=32.0, yarn_orig=4096, eps=1e-5,
        prompt_len=26, gen=6,
    ),
    dict(
        name="oss_mlx_mxfp4", layout="mlx", source="bf16", dtype="bfloat16", spelling="released",
        q=dict(q_bits=4, q_group_size=32, q_mode="mxfp4"),
        covers="mlx_lm.convert -q --q-mode mxfp4 (group 32, 4 bits) of an unquantized bf16 source (given to mlx-lm "
               "in its own expert naming: mlx-lm cannot read the HF gate_up_proj layout): embeddings, q,k,v,o, "
               "lm_head and experts mxfp4 (.weight U32 + .scales U8, no .biases), router 8-bit affine g64 (per-path "
               "entry without `mode`), norms / sinks / all Linear biases BF16; released config spelling, "
               "layer_types [S,S,F] (not the default alternation), window 4; 6q/2kv head_dim 16 (96 != 64); "
               "top-3 of 8; hidden 64, intermediate 96",
        vocab=224, hidden=64, layer_types=[SW, SW, FA], heads=6, kv_heads=2, head_dim=16,
        experts=8, topk=3, inter=96, window=4, rope_theta=10000, yarn_factor=8.0, yarn_orig=2048, eps=1e-5,
        prompt_len=25, gen=6,
    ),
]


def default_layer_types(n):
    return [SW if (i + 1) % 2 else FA for i in range(n)]


# ---------------------------------------------------------------------------------------------------------
# YaRN helpers (same formulas as transformers' _compute_yarn_parameters, float64)
# ---------------------------------------------------------------------------------------------------------
def yarn_ramp(d, base, factor, orig, truncate=False, beta_fast=32.0, beta_slow=1.0):
    def corr(r):
        return d * math.log(orig / (r * 2 * math.pi)) / (2 * math.log(base))
    lo, hi = corr(beta_fast), corr(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    if lo == hi:
        hi += 0.001
    return np.clip((np.arange(d // 2) - lo) / (hi - lo), 0, 1), (lo, hi)


def yarn_ok(d, base, factor, orig):
    """The ramp has a fractional value, leaves dim 0 unchanged, fully interpolates at least one dim, and
    truncate=True would give a different ramp."""
    r, _ = yarn_ramp(d, base, factor, orig)
    rt, _ = yarn_ramp(d, base, factor, orig, truncate=True)
    frac = ((r > 0.05) & (r < 0.95)).sum()
    return r[0] == 0 and frac >= 1 and (r == 1).sum() >= 1 and np.abs(r - rt).max() > 0.05


def yarn_truncate_angle(d, base, factor, orig, T):
    """Largest rotation-angle change over T positions that truncate: true (mlx-lm's YaRN) makes."""
    plain = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    r, _ = yarn_ramp(d, base, factor, orig)
    rt, _ = yarn_ramp(d, base, factor, orig, truncate=True)
    return float(np.abs((plain / factor - plain) * (r - rt)).max() * T)


# ---------------------------------------------------------------------------------------------------------
# --shapes-seed: new random shapes with the same coverage per fixture name
# ---------------------------------------------------------------------------------------------------------
def n_bytes(s):
    """Rough size of weights + golden.json (to keep randomized fixtures under ~800 KB)."""
    H, V, E, I = s["hidden"], s["vocab"], s["experts"], s["inter"]
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    attn = 2 * H * q + 2 * H * kv + q + 2 * kv + H + s["heads"]
    router = E * H + E
    ebias = E * (2 * I + H)
    ew = E * 3 * H * I
    L = len(s["layer_types"])
    if s["layout"] == "mlx":  # + index / tokenizer files, ~15 KB
        golden = (s["prompt_len"] + s["gen"]) * V * 11.5
        mx4 = 17 / 32
        dense = 2 * H * q + 2 * H * kv  # attention matrices
        if s["source"] == "mxfp4":  # 8-bit affine g64 (1 byte + 2 x bf16 per 64) for the non-experts
            per = dense * (1 + 4 / 64) + router * 2 + 2 * (q + 2 * kv + H + s["heads"] + ebias) + ew * mx4 + 8 * H
            glob = 2 * V * H * (1 + 4 / 64)
        else:
            per = dense * mx4 + E * H * (1 + 4 / 64) + 2 * (q + 2 * kv + H + s["heads"] + ebias + E) + ew * mx4 + 4 * H
            glob = 2 * V * H * mx4
        return L * per + glob + golden + 15_000
    if s["layout"] == "mxfp4":
        per = 2 * (attn + router + ebias) + ew * 17 / 32 + 8 * H
    else:
        b = 4 if s["dtype"] == "float32" else 2
        per = b * (attn + router + ebias + ew + 2 * H)
    golden = (s["prompt_len"] + s["gen"]) * V * 11.5
    return L * per + 2 * V * H * 2 * (2 if s["dtype"] == "float32" and s["layout"] == "hf" else 1) + golden


def randomize(spec, rng):
    for _ in range(5000):
        s = randomize_once(spec, rng)
        if s is not None and n_bytes(s) <= 800_000:
            return s
    raise RuntimeError("no small enough random shapes")


def randomize_once(spec, rng):
    s = copy.deepcopy(spec)
    name = s["name"]
    s["vocab"] = rng.randrange(200, 261)
    s["kv_heads"] = rng.choice([1, 2])
    s["heads"] = s["kv_heads"] * rng.choice([2, 3, 4])
    s["experts"] = rng.randrange(4, 9)
    s["topk"] = rng.randrange(2, min(4, s["experts"] - 1) + 1)
    s["window"] = rng.randrange(3, 7)
    s["prompt_len"] = rng.randrange(20, 31)
    s["gen"] = 6
    s["eps"] = rng.choice([1e-5, 1e-6])
    if s["layout"] == "mlx":
        # every quantized matrix needs its input width divisible by its group: 64 (8-bit affine: everything but the
        # experts in the Q8 fixture, the router in both) or 32 (mxfp4)
        q8 = s["source"] == "mxfp4"
        # (hidden 128 makes these loud random nets chaotic enough that float noise reaches 1e-4)
        s["hidden"] = 64
        s["inter"] = rng.choice((128, 192) if q8 else (96, 128))
        s["head_dim"] = rng.choice([16, 32])
        if (s["heads"] * s["head_dim"]) % (64 if q8 else 32):
            return None
        n = rng.randrange(3, 5)  # (with 2 layers the yarn_truncate variant was too weak for one seed)
        if q8:
            s["layer_types"] = default_layer_types(n)
        else:
            lt = [rng.choice([SW, FA]) for _ in range(n)]
            if not (SW in lt and FA in lt and lt != default_layer_types(n)):
                return None
            s["layer_types"] = lt
        s["rope_theta"] = rng.choice([10000, 150000])
    elif s["layout"] == "mxfp4":
        s["hidden"] = rng.choice([32, 64])
        s["inter"] = rng.choice([i for i in (32, 64, 96) if i != s["hidden"] and 2 * i != s["hidden"]])
        s["head_dim"] = rng.choice([16, 32])
        n = rng.randrange(2, 5)
        s["layer_types"] = default_layer_types(n)
        s["rope_theta"] = 150000
    else:
        s["hidden"] = rng.choice([32, 40, 48])
        s["inter"] = rng.choice([i for i in (24, 32, 40) if i != s["hidden"] and 2 * i != s["hidden"]])
        s["head_dim"] = rng.choice([8, 16]) if name == "oss_f32" else 8
        n = rng.randrange(3, 6)
        while True:
            lt = [rng.choice([SW, FA]) for _ in range(n)]
            if SW in lt and FA in lt and (name == "oss_f32" or lt != default_layer_types(n)):
                break
        s["layer_types"] = lt
        s["rope_theta"] = rng.choice([10000, 150000]) if name != "oss_f32" else rng.choice([10000.0, 150000.0])
    if s["heads"] * s["head_dim"] == s["hidden"]:
        return None
    s["yarn_factor"] = rng.choice([4.0, 8.0, 32.0])
    ok = [L0 for L0 in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
          if yarn_ok(s["head_dim"], float(s["rope_theta"]), s["yarn_factor"], L0)]
    if not ok:
        return None
    s["yarn_orig"] = rng.choice(ok)
    if s["layout"] == "mlx" and yarn_truncate_angle(s["head_dim"], float(s["rope_theta"]), s["yarn_factor"],
                                                    s["yarn_orig"], s["prompt_len"] + s["gen"]) < 0.03:
        return None  # mlx-lm's always-truncated YaRN must visibly differ (committed: 0.031 / 0.066 rad)
    s["covers"] = f"[randomized shapes, shapes-seed] {name}: " + spec["covers"].split(";")[0] + \
        f"; layer_types {['S' if t == SW else 'F' for t in s['layer_types']]}"
    return s


# ---------------------------------------------------------------------------------------------------------
# HF model construction
# ---------------------------------------------------------------------------------------------------------
def v5_kwargs(s):
    return dict(
        vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=len(s["layer_types"]),
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
        num_local_experts=s["experts"], num_experts_per_tok=s["topk"], intermediate_size=s["inter"],
        sliding_window=s["window"], layer_types=list(s["layer_types"]), rms_norm_eps=s["eps"],
        rope_parameters={"rope_type": "yarn", "rope_theta": s["rope_theta"], "factor": s["yarn_factor"],
                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": s["yarn_orig"]},
        max_position_embeddings=int(s["yarn_factor"] * s["yarn_orig"]),
        attention_bias=True, tie_word_embeddings=False, swiglu_limit=7.0, initializer_range=0.02,
    )


def build_model(s, fseed):
    torch.manual_seed(fseed)
    cfg = AutoConfig.for_model("gpt_oss", **v5_kwargs(s))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", experts_implementation="eager")
    model = model.float().eval()
    assert model.config.layer_types == s["layer_types"]
    # Large-ish random values (like docs/families/gpt_oss_verify.py) so that the SwiGLU clamps, the +1 on up,
    # the sinks, the router bias and the sliding window all change the logits (asserted by check_numpy.py).
    g = torch.Generator().manual_seed(fseed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif n.endswith("sinks"):
                p.copy_(1.5 * torch.randn(p.shape, generator=g))
            elif n.endswith("router.bias"):
                p.copy_(1.0 * torch.randn(p.shape, generator=g))
            elif n.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "experts" in n:
                p.copy_(0.6 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.25 * torch.randn(p.shape, generator=g))
    # YaRN landed and matters at this head size
    rot = model.model.rotary_emb
    d, base = s["head_dim"], float(s["rope_theta"])
    plain = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    inv = rot.inv_freq.double().numpy()
    ramp, (lo, hi) = yarn_ramp(d, base, s["yarn_factor"], s["yarn_orig"])
    want = plain * (1 - ramp) + plain / s["yarn_factor"] * ramp
    assert np.abs(inv - want).max() <= 1e-6 * np.abs(want).max(), (inv, want)
    changed = int((np.abs(inv / plain - 1) > 1e-3).sum())
    assert changed >= 2 and yarn_ok(d, base, s["yarn_factor"], s["yarn_orig"]), (changed, ramp)
    assert abs(rot.attention_scaling - (0.1 * math.log(s["yarn_factor"]) + 1)) < 1e-12
    s["_yarn"] = dict(low=lo, high=hi, ramp=[round(float(r), 3) for r in ramp], changed=changed,
                      attention_factor=rot.attention_scaling)
    return model


# ---------------------------------------------------------------------------------------------------------
# MXFP4 (numpy) -- OCP MX: shared exponent e = floor(log2(amax)) - 2 per 32 inputs, e2m1 codes, e8m0 scale (bias 127)
# ---------------------------------------------------------------------------------------------------------
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def mxfp4_encode(w):
    """w [..., R, C] (C % 32 == 0) -> blocks [..., R, C/32, 16] u8 (element 2j = low nibble of byte j, 2j+1 = high
    nibble), scales [..., R, C/32] u8. Values beyond 6 * 2^e saturate to +-6 * 2^e; ties go to the lower code."""
    *pre, R, C = w.shape
    g = w.reshape(*pre, R, C // 32, 32).astype(np.float64)
    amax = np.abs(g).max(-1, keepdims=True)
    e = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-30))) - 2, -127)
    e = np.clip(e, -127, 127)
    mag = np.abs(g / np.exp2(e))
    code = np.abs(mag[..., None] - FP4_VALUES[:8]).argmin(-1) + 8 * (g < 0)
    code = code.astype(np.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (e[..., 0] + 127).astype(np.uint8)


def mxfp4_decode(blocks, scales):
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], blocks.shape[-1] * 2)
    vals = FP4_VALUES[codes] * np.exp2(scales.astype(np.int32) - 127)[..., None]
    return vals.reshape(*blocks.shape[:-2], -1)  # [..., R, C]


# ---------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------
def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def st_save(tensors, path):
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, path, metadata={"format": "pt"})


def released_config(model, s, quant):
    """config.json in the released openai/gpt-oss-* spelling (keys of the released file, no dtype)."""
    c = json.loads(model.config.to_json_string())
    rp = dict(c.pop("rope_parameters"))
    theta = rp.pop("rope_theta")
    assert rp == {"beta_fast": 32.0, "beta_slow": 1.0, "factor": s["yarn_factor"],
                  "original_max_position_embeddings": s["yarn_orig"], "rope_type": "yarn", "truncate": False}, rp
    c["rope_scaling"] = rp
    c["rope_theta"] = theta
    c["experts_per_token"] = c["num_experts_per_tok"]
    c["initial_context_length"] = s["yarn_orig"]
    c["eos_token_id"], c["pad_token_id"] = s["vocab"] - 1, s["vocab"] - 2
    c["router_aux_loss_coef"] = 0.9
    c["transformers_version"] = "4.55.0.dev0"  # as in the released files
    c["architectures"] = ["GptOssForCausalLM"]
    if quant:
        c["quantization_config"] = {"modules_to_not_convert": list(MXFP4_NOT_CONVERT), "quant_method": "mxfp4"}
    assert c["layer_types"] == s["layer_types"]
    out = {k: c[k] for k in RELEASED_KEYS if k in c}
    assert set(out) == set(RELEASED_KEYS) - ({"quantization_config"} if not quant else set()), set(out) ^ set(RELEASED_KEYS)
    return out


def write_hf(s, model, d):
    """save_pretrained (float32 or bfloat16 model) + the config spelling of the fixture."""
    m = copy.deepcopy(model).to(getattr(torch, s["dtype"]))  # (.to() would also round the inv_freq buffer)
    m.save_pretrained(d)
    del m
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    if s["spelling"] == "released":
        write_json(os.path.join(d, "config.json"), released_config(model, s, quant=False))
    else:
        with open(os.path.join(d, "config.json")) as f:
            write_json(os.path.join(d, "config.json"), json.load(f))


def write_mxfp4(s, model, d, fseed):
    """The openai/gpt-oss-* MXFP4 layout, written by hand (transformers cannot save it on CPU). The in-memory model
    is set to exactly what the file holds (dequantized experts, bf16-rounded tensors, f32 norms). Returns the numpy
    decode of every expert matrix in the HF [E, in, out] orientation."""
    g = np.random.default_rng(fseed + 2)
    tensors, decoded = {}, {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("experts.gate_up_proj", "experts.down_proj")):
                w = p.detach().double().numpy().swapaxes(1, 2)  # HF [E, in, out] -> released [E, out, in]
                # per-group power-of-two spread, so the e8m0 scales take several values within a row
                E, R, C = w.shape
                w = w * np.exp2(g.integers(-2, 1, size=(E, R, C // 32, 1))).repeat(32, -1).reshape(E, R, C)
                blocks, scales = mxfp4_encode(w)
                tensors[n + "_blocks"] = torch.from_numpy(blocks)
                tensors[n + "_scales"] = torch.from_numpy(scales)
                deq = mxfp4_decode(blocks, scales).swapaxes(1, 2)  # back to HF [E, in, out]
                decoded[n] = deq
                p.copy_(torch.from_numpy(np.ascontiguousarray(deq)).float())
            elif "norm" in n:
                tensors[n] = p.detach().float().clone()  # norms stay float32 (converter: "norms are ... float32")
            else:
                t = p.detach().to(torch.bfloat16).clone()
                tensors[n] = t
                p.copy_(t.float())
    codes = np.concatenate([np.concatenate([(b.numpy() & 15).ravel(), (b.numpy() >> 4).ravel()])
                            for k, b in tensors.items() if k.endswith("_blocks")])
    assert set(np.unique(codes).tolist()) == set(range(16)), np.unique(codes)  # every e2m1 code incl. -0 occurs
    sc = np.concatenate([t.numpy().ravel() for k, t in tensors.items() if k.endswith("_scales")])
    assert len(np.unique(sc)) >= 3, np.unique(sc)
    st_save(tensors, os.path.join(d, "model.safetensors"))
    write_json(os.path.join(d, "config.json"), released_config(model, s, quant=True))
    return decoded, dict(codes=len(np.unique(codes)), scales=sorted(int(x) for x in np.unique(sc)))


# ---------------------------------------------------------------------------------------------------------
# Reading back / reference
# ---------------------------------------------------------------------------------------------------------
def load_reference(d):
    kw = dict(dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    cfg = json.load(open(os.path.join(d, "config.json")))
    note = None
    if cfg.get("quantization_config", {}).get("quant_method") == "mxfp4":
        # Without `accelerate`, Mxfp4HfQuantizer.validate_environment raises ImportError unless dequantize was
        # requested explicitly; on CPU the quantizer dequantizes anyway (_process_model_before_weight_loading).
        try:
            m = AutoModelForCausalLM.from_pretrained(d, **kw)
            note = "plain from_pretrained worked"
        except ImportError as ex:
            from transformers import Mxfp4Config
            note = f"plain from_pretrained: ImportError({str(ex).splitlines()[0]!r}); used Mxfp4Config(dequantize=True)"
            m = AutoModelForCausalLM.from_pretrained(d, quantization_config=Mxfp4Config(dequantize=True), **kw)
        # dequantized: plain GptOssExperts with [E, in, out] float params; the loaded config no longer carries
        # quantization_config
        assert all(type(layer.mlp.experts).__name__ == "GptOssExperts" for layer in m.model.layers)
        note += "; loaded config has quantization_config: %s" % ("quantization_config" in m.config.to_dict())
    else:
        m = AutoModelForCausalLM.from_pretrained(d, **kw)
    return m.eval(), note


def read_saved(d):
    out = {}
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def check_saved_equals(ref, saved, decoded=None):
    """Every reference parameter equals the saved tensor (upcast exactly) or, for MXFP4 experts, the numpy decode
    of the saved blocks/scales; every saved tensor is used."""
    used = set()
    for n, p in ref.named_parameters():
        if n in saved:
            v = saved[n].float()
            used.add(n)
        else:
            assert decoded is not None and n.endswith(("gate_up_proj", "down_proj")), n
            blocks, scales = saved[n + "_blocks"].numpy(), saved[n + "_scales"].numpy()
            v = torch.from_numpy(np.ascontiguousarray(mxfp4_decode(blocks, scales).swapaxes(1, 2))).float()
            assert np.array_equal(v.double().numpy(), decoded[n]), n
            used |= {n + "_blocks", n + "_scales"}
        assert v.shape == p.shape and torch.equal(v, p.detach()), n
    assert used == set(saved), set(saved) - used


def find_prompt(ref, s, fseed):
    P, G, V, K = s["prompt_len"], s["gen"], s["vocab"], s["topk"]
    assert P > s["window"] + 2
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
            out = ref(torch.tensor([ids]), use_cache=False, output_router_logits=True)
        logits = out.logits[0].float()
        assert logits.shape == (P + G, V)
        assert logits[P - 1: -1].argmax(-1).tolist() == ids[P:]
        rl = out.router_logits
        assert len(rl) == len(s["layer_types"]) and rl[0].shape == (P + G, s["experts"]), (len(rl), rl[0].shape)
        srt = [torch.sort(r.float(), dim=-1, descending=True).values for r in rl]
        min_gap = min((x[:, K - 1] - x[:, K]).min().item() for x in srt)
        if min_gap < MIN_ROUTER_GAP:
            continue
        return ids, logits, min_gap, attempt + 1
    raise RuntimeError(f"{s['name']}: no prompt with robust greedy/routing margins found")


def decode_check(ref, ids, P, logits, s):
    """use_cache prefill of the prompt, then one token at a time; sliding layers keep window-1 past keys."""
    with torch.no_grad():
        out = ref(torch.tensor([ids[:P]]), use_cache=True)
        pkv = out.past_key_values
        kinds = [type(layer).__name__ for layer in pkv.layers]
        assert kinds == ["DynamicSlidingWindowLayer" if t == SW else "DynamicLayer" for t in s["layer_types"]], kinds
        rows = [out.logits[0]]
        for t in range(P, len(ids)):
            o = ref(torch.tensor([[ids[t]]]), past_key_values=pkv, use_cache=True)
            pkv = o.past_key_values
            rows.append(o.logits[0])
        lens = [layer.keys.shape[-2] for layer in pkv.layers]
        assert lens == [s["window"] - 1 if t == SW else len(ids) for t in s["layer_types"]], lens
    dec = torch.cat(rows, 0).float()
    diff = (dec - logits).abs().max().item()
    assert diff < DECODE_TOL, diff
    return diff


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
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in h.items()}


def mlx_info(d, cn):
    """Informational only (nothing asserted, nothing written): mlx-lm's forward on the MXFP4 folder vs golden and vs
    the numpy forward with truncated YaRN (mlx-lm always floors/ceils the YaRN correction range)."""
    try:
        import mlx.core as mx
        from pathlib import Path
        from mlx_lm.utils import load_model
    except Exception as ex:  # pragma: no cover
        return f"mlx-lm not available ({type(ex).__name__})"
    mx.set_default_device(mx.cpu)
    m, _ = load_model(Path(d))
    g = json.load(open(os.path.join(d, "golden.json")))
    out = np.array(m(mx.array([g["ids"]]))[0].astype(mx.float32)).astype(np.float64)
    cfg, w, _ = cn.load(d)
    c = cn.parse_config(cfg)
    p = {k: v.astype(np.float64) for k, v in cn.canonical(cfg, w, c).items()}
    trunc = cn.forward(c, p, np.array(g["ids"]), variant="yarn_truncate")
    return (f"mlx-lm {md_version('mlx-lm')} load_model + forward: vs golden max |diff| "
            f"{np.abs(out - np.array(g['logits'])).max():.3g}, vs numpy with truncated YaRN {np.abs(out - trunc).max():.3g}")


def md_version(pkg):
    import importlib.metadata as md
    try:
        return md.version(pkg)
    except Exception:
        return "-"


def load_check_numpy():
    spec = importlib.util.spec_from_file_location("check_numpy_gpt_oss", os.path.join(HERE, "check_numpy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------------------
# MLX folders (mlx_lm.convert)
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
            arr = np.frombuffer(buf, dtype={"U32": "<u4", "U8": "u1", "F32": "<f4"}[dt])
        out[k] = arr.reshape(v["shape"]).copy()
        info[k] = (dt, list(v["shape"]))
    return out, info, meta


def unpack_bits(wq, bits):
    """U32 words [..., n] -> [..., n * 32 / bits] fields, lowest bits of each little-endian word first."""
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")
    b = bitstream.reshape(*bitstream.shape[:-1], bitstream.shape[-1] // bits, bits).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint32)


def mlx_sanitize_by_hand(hf):
    """HF unquantized gpt-oss tensors -> mlx-lm's own (already sanitized) names: experts.{gate,up}_proj.weight
    [E, I, H] = the even / odd columns of gate_up_proj [E, H, 2I], transposed; down_proj.weight [E, H, I];
    {gate,up}_proj.bias = the even / odd entries of gate_up_proj_bias (docs/families/gpt_oss.md section 4)."""
    out = {}
    for k, v in hf.items():
        if k.endswith("experts.gate_up_proj"):
            p = k[: -len("gate_up_proj")]
            out[p + "gate_proj.weight"] = v[..., 0::2].transpose(1, 2).contiguous()
            out[p + "up_proj.weight"] = v[..., 1::2].transpose(1, 2).contiguous()
        elif k.endswith("experts.down_proj"):
            out[k + ".weight"] = v.transpose(1, 2).contiguous()
        elif k.endswith("experts.gate_up_proj_bias"):
            p = k[: -len("gate_up_proj_bias")]
            out[p + "gate_proj.bias"] = v[..., 0::2].contiguous()
            out[p + "up_proj.bias"] = v[..., 1::2].contiguous()
        elif k.endswith("experts.down_proj_bias"):
            out[k.replace("down_proj_bias", "down_proj.bias")] = v
        else:
            out[k] = v
    return out


def mlx_to_hf(t, L):
    """Dequantized MLX tensors (numpy) -> HF GptOssForCausalLM names / orientation (exact re-arrangement)."""
    hf = {k: v for k, v in t.items() if ".mlp.experts." not in k}
    for l in range(L):
        e = f"model.layers.{l}.mlp.experts."
        g, u, dn = t[e + "gate_proj.weight"], t[e + "up_proj.weight"], t[e + "down_proj.weight"]
        gu = np.empty((g.shape[0], g.shape[2], 2 * g.shape[1]), dtype=np.float32)
        gu[..., 0::2], gu[..., 1::2] = g.swapaxes(1, 2), u.swapaxes(1, 2)
        gb, ub = t[e + "gate_proj.bias"], t[e + "up_proj.bias"]
        gub = np.empty((gb.shape[0], 2 * gb.shape[1]), dtype=np.float32)
        gub[:, 0::2], gub[:, 1::2] = gb, ub
        hf[e + "gate_up_proj"], hf[e + "gate_up_proj_bias"] = gu, gub
        hf[e + "down_proj"], hf[e + "down_proj_bias"] = np.ascontiguousarray(dn.swapaxes(1, 2)), t[e + "down_proj.bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in hf.items()}


def mlx_convert_quiet(**kw):
    import contextlib
    import io
    from mlx_lm import convert as mlx_convert
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mlx_convert(**kw)
    return buf.getvalue()


def gen_mlx(s, model, d, fseed, tmp):
    """Writes the source folder, runs mlx_lm.convert into d, checks what it wrote, dequantizes every quantized
    matrix exactly and writes an HF float32 folder of those weights (v5 config, YaRN truncate false).
    Returns (that folder, the source folder transformers reads, info)."""
    import mlx.core as mx
    mx.set_default_device(mx.cpu)
    L, H, E, I = len(s["layer_types"]), s["hidden"], s["experts"], s["inter"]
    info = {}
    src = os.path.join(tmp, s["name"] + "-src")
    os.makedirs(src)
    if s["source"] == "mxfp4":
        # released MXFP4 layout (like oss_mxfp4); the in-memory model now holds exactly the file's values
        _, info["src_mxfp4"] = write_mxfp4(s, model, src, fseed)
        hf_src = src
    else:
        # an unquantized bf16 HF-layout checkpoint in the released config spelling (like oss_bf16_released)...
        hf_src = os.path.join(tmp, s["name"] + "-hf-bf16")
        os.makedirs(hf_src)
        write_hf(s, model, hf_src)
        save_tokenizer(hf_src, s["vocab"])
        # ...which mlx-lm 0.32 cannot load (its sanitize renames gate_up_proj without `.weight` and slices the
        # wrong axis); recorded, not asserted
        try:
            mlx_convert_quiet(hf_path=hf_src, mlx_path=os.path.join(tmp, s["name"] + "-hf-try"), quantize=True,
                              q_group_size=s["q"]["q_group_size"], q_bits=s["q"]["q_bits"], q_mode=s["q"]["q_mode"])
            info["hf_layout_convert"] = "mlx_lm.convert of the HF layout worked (not used)"
        except Exception as ex:
            msg = str(ex).strip().splitlines()
            info["hf_layout_convert"] = f"{type(ex).__name__}: {msg[0]} {' '.join(m.strip() for m in msg[1:3])} ..."
        # so the same bf16 tensors go to mlx-lm in its own expert naming (sanitize returns early on gate_proj.weight)
        st_save(mlx_sanitize_by_hand(read_saved(hf_src)), os.path.join(src, "model.safetensors"))
        shutil.copy(os.path.join(hf_src, "config.json"), src)
    save_tokenizer(src, s["vocab"])
    src_cfg = json.load(open(os.path.join(src, "config.json")))
    src_t, src_info, _ = read_st_np(os.path.join(src, "model.safetensors"))
    if s["source"] == "mxfp4":  # the source's expert biases under mlx-lm's names (gate = even, up = odd entries)
        for k in [k for k in src_t if k.endswith(("gate_up_proj_bias", "down_proj_bias"))]:
            dt = src_info[k][0]
            for new, v in mlx_sanitize_by_hand({k: torch.from_numpy(src_t[k])}).items():
                src_t[new], src_info[new] = v.numpy(), (dt, list(v.shape))
    if os.path.isdir(d):
        shutil.rmtree(d)
    log = mlx_convert_quiet(hf_path=src, mlx_path=d, quantize=True, **s["q"])
    info["bpw"] = next((ln.split("with ")[1].rstrip(".") for ln in log.splitlines() if "bits per weight" in ln), "?")

    # ---- config.json as written
    cfg = json.load(open(os.path.join(d, "config.json")))
    q = cfg["quantization"]
    assert cfg["quantization_config"] == q  # a copy ("support hf model tree"); the mxfp4 quant_method entry is gone
    rs = cfg["rope_scaling"]
    assert rs == src_cfg["rope_scaling"] and rs["truncate"] is False and rs["rope_type"] == "yarn", rs
    assert cfg["rope_theta"] == src_cfg["rope_theta"] and "rope_parameters" not in cfg
    assert {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")} == \
        {k: v for k, v in src_cfg.items() if k != "quantization_config"}, "convert changed other config keys"
    top = {k: v for k, v in q.items() if not isinstance(v, dict)}
    per = {k: v for k, v in q.items() if isinstance(v, dict)}
    assert top == {"group_size": 32, "bits": 4, "mode": "mxfp4"}, top
    router = {f"model.layers.{l}.mlp.router": {"group_size": 64, "bits": 8} for l in range(L)}  # no "mode"
    if s["source"] == "mxfp4":
        a8 = {"group_size": 64, "bits": 8, "mode": "affine"}
        want = {"model.embed_tokens": a8, "lm_head": a8, **router}
        want.update({f"model.layers.{l}.self_attn.{m}": a8
                     for l in range(L) for m in ("q_proj", "k_proj", "v_proj", "o_proj")})
    else:
        want = router
    assert per == want, (sorted(per), sorted(want))
    info["quantization"] = q

    # ---- tensors: every matrix quantized, with the mode config.json gives it
    t, tinfo, meta = read_st_np(os.path.join(d, "model.safetensors"))
    assert meta == {"format": "mlx"}, meta
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    assert set(idx["weight_map"]) == set(t) and set(idx["weight_map"].values()) == {"model.safetensors"}
    mods = sorted(k[: -len(".scales")] for k in t if k.endswith(".scales"))
    lin = ["model.embed_tokens", "lm_head"] + [f"model.layers.{l}.{m}" for l in range(L) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.router",
        "mlp.experts.gate_proj", "mlp.experts.up_proj", "mlp.experts.down_proj")]
    assert mods == sorted(lin), set(mods) ^ set(lin)
    deq, modes, np_vs_mx = {}, {}, 0.0
    for p in mods:
        par = q[p] if p in per else top
        G, B, mode = par["group_size"], par["bits"], par.get("mode", "affine")
        wq, sc = t[p + ".weight"], t[p + ".scales"]
        assert tinfo[p + ".weight"][0] == "U32"
        in_dim = wq.shape[-1] * 32 // B
        assert in_dim == sc.shape[-1] * G and wq.shape[:-1] == sc.shape[:-1], (p, wq.shape, sc.shape)
        if mode == "mxfp4":
            assert tinfo[p + ".scales"][0] == "U8" and p + ".biases" not in t
            ref = np.array(mx.dequantize(mx.array(wq), mx.array(sc), group_size=G, bits=B, mode="mxfp4",
                                         dtype=mx.float32))
            blocks = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8).reshape(*sc.shape, 16)
            w = mxfp4_decode(blocks, sc).astype(np.float32)  # the OpenAI blocks layout, exact
        else:
            bi = t[p + ".biases"]
            assert tinfo[p + ".scales"][0] == tinfo[p + ".biases"][0] == "BF16", p
            ref = np.array(mx.dequantize(mx.array(wq), mx.array(sc), mx.array(bi), group_size=G, bits=B,
                                         mode="affine", dtype=mx.float32))
            f32 = np.float32
            w = (np.repeat(sc.astype(f32), G, -1) * unpack_bits(wq, B).astype(f32) + np.repeat(bi.astype(f32), G, -1))
        dd = float(np.abs(ref - w).max())
        np_vs_mx = max(np_vs_mx, dd)
        assert dd == 0.0, (p, dd)
        deq[p + ".weight"] = w
        modes[p] = (mode, B, G)
    qkeys = {p + x for p in modes for x in (".weight", ".scales", ".biases")}  # (".bias" = the Linear's own bias)
    for k, v in t.items():
        if k not in qkeys:
            assert tinfo[k][0] in ("BF16", "F32"), k
            deq[k] = v.astype(np.float32)
            # unquantized tensors (norms, sinks, every Linear / expert bias) pass through unchanged (dtype, value)
            assert src_info[k] == tinfo[k] and np.array_equal(src_t[k], v), k
    info["np_vs_mx"] = np_vs_mx
    info["n_unquantized"] = len(set(t) - qkeys)

    # ---- what the quantization did to each source matrix
    if s["source"] == "mxfp4":
        # experts: the source blocks / scales, split into gate (even rows) / up (odd rows), byte for byte
        for l in range(L):
            e = f"model.layers.{l}.mlp.experts."
            gb, gs = src_t[e + "gate_up_proj_blocks"], src_t[e + "gate_up_proj_scales"]
            for m, sl in (("gate_proj", slice(0, None, 2)), ("up_proj", slice(1, None, 2))):
                assert np.array_equal(np.ascontiguousarray(t[e + m + ".weight"], dtype="<u4").view(np.uint8),
                                      gb[:, sl].reshape(E, I, H // 2)), (l, m)
                assert np.array_equal(t[e + m + ".scales"], gs[:, sl]), (l, m)
            assert np.array_equal(np.ascontiguousarray(t[e + "down_proj.weight"], dtype="<u4").view(np.uint8),
                                  src_t[e + "down_proj_blocks"].reshape(E, H, I // 2)), l
            assert np.array_equal(t[e + "down_proj.scales"], src_t[e + "down_proj_scales"]), l
        srcw = {k: v for k, v in src_t.items() if not k.endswith(("_blocks", "_scales"))}
    else:
        srcw = src_t
    err = {}
    for p, (mode, B, G) in modes.items():
        if p + ".weight" not in srcw:
            continue  # (Q8: the experts, unchanged MXFP4)
        sw = srcw[p + ".weight"]
        rel = float(np.abs(deq[p + ".weight"] - sw).max() / np.abs(sw).max())
        kind = f"{mode} {B}-bit g{G}"
        err[kind] = max(err.get(kind, 0.0), rel)
    info["quant_rel_err"] = err
    # MLX's mxfp4 encoder: shared exponent per group of 32 vs the source amax (ceil(log2(amax / 6)) never
    # saturates; OCP / OpenAI's floor(log2(amax)) - 2 can)
    if s["source"] == "bf16":
        n_ceil = n_ocp = n_all = 0
        for p, (mode, B, G) in modes.items():
            if mode != "mxfp4":
                continue
            sw = srcw[p + ".weight"].astype(np.float64)
            amax = np.abs(sw.reshape(*sw.shape[:-1], -1, 32)).max(-1)
            e = t[p + ".scales"].astype(np.int64) - 127
            n_all += e.size
            n_ceil += int((e == np.ceil(np.log2(amax / 6))).sum())
            n_ocp += int((e == np.floor(np.log2(amax)) - 2).sum())
        codes = np.unique(np.concatenate([unpack_bits(t[p + ".weight"], 4).ravel() for p in modes
                                          if modes[p][0] == "mxfp4"]))
        info["mxfp4_encoder"] = dict(groups=n_all, ceil_log2_amax_over_6=n_ceil, ocp_floor_minus_2=n_ocp,
                                     codes=len(codes))

    # ---- the HF float32 folder of the dequantized weights (transformers-5 config: rope_parameters, truncate false)
    hf = mlx_to_hf(deq, L)
    deqd = os.path.join(tmp, s["name"] + "-dequant-hf")
    os.makedirs(deqd)
    st_save({k: torch.from_numpy(v) for k, v in hf.items()}, os.path.join(deqd, "model.safetensors"))
    write_json(os.path.join(deqd, "config.json"), json.loads(model.config.to_json_string()))
    names = {n for n, _ in model.named_parameters()}
    assert set(hf) == names, set(hf) ^ names
    return deqd, hf_src, info


def mlx_forward(d, ids):
    """mlx-lm's own forward on the MLX folder, parameters upcast to float32 (scales / biases too)."""
    import mlx.core as mx
    from pathlib import Path
    from mlx.utils import tree_map
    from mlx_lm.utils import load_model
    mx.set_default_device(mx.cpu)
    m, _ = load_model(Path(d))
    m.update(tree_map(lambda v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v, m.parameters()))
    return np.array(m(mx.array([ids]))[0].astype(mx.float32)).astype(np.float64)


def gen_one_mlx(s, out_root, seed, tmp, cn):
    d = os.path.join(out_root, s["name"])
    fseed = (zlib.crc32(s["name"].encode()) + 1000003 * seed) & 0x7FFFFFFF
    model = build_model(s, fseed)
    deqd, hf_src, extra = gen_mlx(s, model, d, fseed, tmp)
    saved = read_saved(deqd)
    ref, _ = load_reference(deqd)
    assert type(ref).__name__ == "GptOssForCausalLM"
    assert ref.config._attn_implementation == "eager" and ref.config._experts_implementation == "eager"
    c = ref.config
    assert c.layer_types == s["layer_types"] and c.num_experts_per_tok == s["topk"] and c.sliding_window == s["window"]
    assert c.rope_parameters["rope_type"] == "yarn" and c.rope_parameters["truncate"] is False
    assert torch.equal(ref.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    check_saved_equals(ref, saved)
    extra["dtypes"] = {
        "norms": sorted({dt for k, (dt, _) in st_listing(d).items() if "norm" in k}),
        "sinks": sorted({dt for k, (dt, _) in st_listing(d).items() if k.endswith("sinks")}),
        "other": sorted({dt for k, (dt, _) in st_listing(d).items() if "norm" not in k and not k.endswith("sinks")}),
    }

    ids, logits, min_gap, attempts = find_prompt(ref, s, fseed)
    P = s["prompt_len"]
    dec_diff = decode_check(ref, ids, P, logits, s)
    # informational: the unquantized source (as transformers reads it) vs the quantized golden
    src_ref, _ = load_reference(hf_src)
    with torch.no_grad():
        extra["quant_shift"] = (src_ref(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    ref_g = AutoModelForCausalLM.from_config(c, attn_implementation="eager",
                                             experts_implementation="grouped_mm").float().eval()
    ref_g.load_state_dict(ref.state_dict())
    with torch.no_grad():
        extra["grouped_mm_diff"] = (ref_g(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    extra["default_experts_impl"] = ref_g.config._experts_implementation

    write_golden(os.path.join(d, "golden.json"), ids, P, logits.numpy().tolist(), ATOL)

    # mlx-lm's own forward: it always truncates the YaRN correction range, so it is compared with golden (truncate
    # false) and with transformers on the same dequantized weights but `truncate: true`
    tdir = os.path.join(tmp, s["name"] + "-dequant-hf-truncate")
    os.makedirs(tdir)
    tc = json.load(open(os.path.join(deqd, "config.json")))
    tc["rope_parameters"]["truncate"] = True
    write_json(os.path.join(tdir, "config.json"), tc)
    shutil.copy(os.path.join(deqd, "model.safetensors"), tdir)
    ref_t, _ = load_reference(tdir)
    assert ref_t.config.rope_parameters["truncate"] is True
    with torch.no_grad():
        lt = ref_t(torch.tensor([ids]), use_cache=False).logits[0].double().numpy()
    ml = mlx_forward(d, ids)
    gold = logits.double().numpy()
    extra["mlx"] = dict(vs_golden=float(np.abs(ml - gold).max()), vs_hf_truncate=float(np.abs(ml - lt).max()),
                        hf_truncate_vs_golden=float(np.abs(lt - gold).max()),
                        greedy_same=ml[P - 1: -1].argmax(-1).tolist() == ids[P:])
    assert extra["mlx"]["vs_hf_truncate"] < MLX_CROSS_TOL, extra["mlx"]
    cfg, w, _ = cn.load(d)
    cc = cn.parse_config(cfg)
    p64 = {k: v.astype(np.float64) for k, v in cn.canonical(cfg, w, cc).items()}
    trunc = cn.forward(cc, p64, np.array(ids), variant="yarn_truncate")
    extra["mlx"]["vs_numpy_truncate"] = float(np.abs(ml - trunc).max())

    res = cn.check_dir(d, variants=True, assert_features=True)
    assert res["ok"], res
    extra["numpy"] = res
    for fn in os.listdir(d):
        os.chmod(os.path.join(d, fn), 0o644)
    srt = torch.sort(logits, dim=-1, descending=True).values
    margins = srt[:, 0] - srt[:, 1]
    rot = model.model.rotary_emb
    return dict(
        name=s["name"], dir=d, size=dir_size(d), files=sorted(os.listdir(d)), prompt_len=P, n_ids=len(ids),
        attempts=attempts, min_greedy_margin=margins[P - 1: -1].min().item(), min_router_gap=min_gap,
        logit_absmax=logits.abs().max().item(), decode_diff=dec_diff, covers=s["covers"], extra=extra,
        yarn=s["_yarn"], layer_types="".join("S" if t == SW else "F" for t in s["layer_types"]),
        shape=f"V{s['vocab']} H{s['hidden']} L{len(s['layer_types'])} attn {s['heads']}q/{s['kv_heads']}kv "
              f"hd{s['head_dim']} window {s['window']} E{s['experts']} k{s['topk']} I{s['inter']} "
              f"theta {s['rope_theta']} yarn factor {s['yarn_factor']} L0 {s['yarn_orig']} eps {s['eps']} "
              f"mlx from {s['source']} ({s['q']})",
        listing=st_listing(d), attention_factor=rot.attention_scaling,
    )


# ---------------------------------------------------------------------------------------------------------
def gen_one(s, out_root, seed, tmp, cn):
    d = os.path.join(out_root, s["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    fseed = (zlib.crc32(s["name"].encode()) + 1000003 * seed) & 0x7FFFFFFF
    model = build_model(s, fseed)
    extra = {}
    decoded = None
    if s["layout"] == "mxfp4":
        decoded, extra["mxfp4"] = write_mxfp4(s, model, d, fseed)
    else:
        write_hf(s, model, d)
    saved = read_saved(d)
    ref, note = load_reference(d)
    if note:
        extra["load_note"] = note
    assert type(ref).__name__ == "GptOssForCausalLM"
    assert ref.config._attn_implementation == "eager" and ref.config._experts_implementation == "eager"
    c = ref.config
    assert c.layer_types == s["layer_types"] and c.num_experts_per_tok == s["topk"] and c.sliding_window == s["window"]
    assert c.rope_parameters["rope_type"] == "yarn" and c.rope_parameters["truncate"] is False
    assert float(c.rope_parameters["rope_theta"]) == float(s["rope_theta"])
    assert torch.equal(ref.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq), (ref.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    check_saved_equals(ref, saved, decoded)
    if s["layout"] == "hf":  # the in-memory source model, rounded to the storage dtype, equals the file
        for n, p in model.named_parameters():
            assert torch.equal(saved[n], p.detach().to(saved[n].dtype)), n
    extra["dtypes"] = {
        "norms": sorted({str(v.dtype).replace("torch.", "") for k, v in saved.items() if "norm" in k}),
        "sinks": sorted({str(v.dtype).replace("torch.", "") for k, v in saved.items() if k.endswith("sinks")}),
        "other": sorted({str(v.dtype).replace("torch.", "") for k, v in saved.items()
                         if "norm" not in k and not k.endswith("sinks")}),
    }

    ids, logits, min_gap, attempts = find_prompt(ref, s, fseed)
    P = s["prompt_len"]
    dec_diff = decode_check(ref, ids, P, logits, s)

    # the in-memory source model (rounded to what the file holds) computes the same logits
    with torch.no_grad():
        l2 = model(torch.tensor([ids]), use_cache=False).logits[0]
    if s["dtype"] == "float32" or s["layout"] == "mxfp4":
        assert torch.equal(l2, logits), (l2 - logits).abs().max()
    extra["source_diff"] = (l2 - logits).abs().max().item()  # bf16 hf: source model is unrounded f32
    if s["spelling"] == "released":
        # the same weights under the transformers-5 config spelling -> bit-identical logits
        alt = os.path.join(tmp, s["name"] + "-v5cfg")
        os.makedirs(alt)
        v5 = json.loads(model.config.to_json_string())
        if s["layout"] == "mxfp4":
            v5["quantization_config"] = {"modules_to_not_convert": list(MXFP4_NOT_CONVERT), "quant_method": "mxfp4"}
        write_json(os.path.join(alt, "config.json"), v5)
        shutil.copy(os.path.join(d, "model.safetensors"), alt)
        ref2, _ = load_reference(alt)
        with torch.no_grad():
            l3 = ref2(torch.tensor([ids]), use_cache=False).logits[0]
        assert torch.equal(l3, logits), (l3 - logits).abs().max()
        assert ref2.config.rope_parameters == c.rope_parameters, (ref2.config.rope_parameters, c.rope_parameters)
        # transformers reads num_experts_per_tok only: the legacy key is kept as an unused attribute
        assert getattr(c, "experts_per_token", None) == s["topk"]
    # the default experts implementation (grouped_mm) agrees (informational; the golden uses eager)
    ref_g = AutoModelForCausalLM.from_config(c, attn_implementation="eager",
                                             experts_implementation="grouped_mm").float().eval()
    ref_g.load_state_dict(ref.state_dict())
    with torch.no_grad():
        extra["grouped_mm_diff"] = (ref_g(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    extra["default_experts_impl"] = ref_g.config._experts_implementation

    write_golden(os.path.join(d, "golden.json"), ids, P, logits.numpy().tolist(), ATOL)
    if s["layout"] == "mxfp4":
        extra["mlx"] = mlx_info(d, cn)

    # independent numpy forward from the raw files + feature-visibility variants (asserts inside)
    res = cn.check_dir(d, variants=True, assert_features=True)
    assert res["ok"], res
    extra["numpy"] = res

    for fn in os.listdir(d):  # safetensors creates its file 0600
        os.chmod(os.path.join(d, fn), 0o644)
    srt = torch.sort(logits, dim=-1, descending=True).values
    margins = srt[:, 0] - srt[:, 1]
    return dict(
        name=s["name"], dir=d, size=dir_size(d), files=sorted(os.listdir(d)), prompt_len=P, n_ids=len(ids),
        attempts=attempts, min_greedy_margin=margins[P - 1: -1].min().item(), min_router_gap=min_gap,
        logit_absmax=logits.abs().max().item(), decode_diff=dec_diff, covers=s["covers"], extra=extra,
        yarn=s["_yarn"], layer_types="".join("S" if t == SW else "F" for t in s["layer_types"]),
        shape=f"V{s['vocab']} H{s['hidden']} L{len(s['layer_types'])} attn {s['heads']}q/{s['kv_heads']}kv "
              f"hd{s['head_dim']} window {s['window']} E{s['experts']} k{s['topk']} I{s['inter']} "
              f"theta {s['rope_theta']} yarn factor {s['yarn_factor']} L0 {s['yarn_orig']} eps {s['eps']} "
              f"{s['layout']} {s['dtype']}",
        listing=st_listing(d),
    )


def s_rounding(r):
    return r["extra"].get("source_diff", 0) > 0


def describe(r):
    print(f"\n#### {r['name']}\n```")
    for k in sorted(r["listing"]):
        if ".layers." in k and not k.startswith("model.layers.0."):
            continue
        dt, sh = r["listing"][k]
        print(f"{k:52s} {dt:5s} {sh}")
    L = len(r["layer_types"])
    if L > 1:
        print(f"(+ layers 1..{L - 1} likewise)")
    print("```")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output root (default: this folder)")
    ap.add_argument("--shapes-seed", type=int, default=0,
                    help="0 = the committed set; any other value = a new random set of shapes and weights")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    ap.add_argument("--describe", action="store_true", help="print tensor listings")
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

    import importlib.metadata as md

    def ver(p):
        try:
            return md.version(p)
        except Exception:
            return "-"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors {ver('safetensors')}, "
          f"numpy {np.__version__}, accelerate {ver('accelerate')}, kernels {ver('kernels')}, "
          f"shapes-seed {args.shapes_seed}")
    with tempfile.TemporaryDirectory(prefix="gptossfx-") as tmp:
        results = [(gen_one_mlx if s["layout"] == "mlx" else gen_one)(s, args.out, args.shapes_seed, tmp, cn)
                   for s in specs]
    for r in results:
        ex = r["extra"]
        print(f"\n{r['name']}: {r['size'] / 1024:.1f} KiB ({', '.join(r['files'])}), ids {r['n_ids']} "
              f"(prompt {r['prompt_len']})")
        print(f"  {r['shape']}; layer types {r['layer_types']}")
        print(f"  covers: {r['covers']}")
        y = r["yarn"]
        print(f"  YaRN: low {y['low']:.3f} high {y['high']:.3f} ramp {y['ramp']} ({y['changed']} dims changed), "
              f"attention_factor {y['attention_factor']:.6f}")
        print(f"  saved dtypes: norms {ex['dtypes']['norms']}, sinks {ex['dtypes']['sinks']}, "
              f"others {ex['dtypes']['other']}")
        if "mxfp4" in ex:
            print(f"  MXFP4: all {ex['mxfp4']['codes']} e2m1 codes used; e8m0 scales {ex['mxfp4']['scales']}; "
                  f"transformers dequant == numpy decode (exact)")
        if "quantization" in ex:  # MLX folders
            q = ex["quantization"]
            top = {k: v for k, v in q.items() if not isinstance(v, dict)}
            kinds = {}
            for k, v in q.items():
                if isinstance(v, dict):
                    kinds.setdefault(json.dumps(v), []).append(k)
            ent = "; ".join(f"{v} x{len(ks)} ({', '.join(ks[:2])}{', ...' if len(ks) > 2 else ''})"
                            for v, ks in kinds.items())
            print(f"  mlx_lm.convert ({ex['bpw']}): quantization top level {json.dumps(top)}; per-path entries: {ent}")
            print(f"  mx.dequantize == numpy decode (max |diff| {ex['np_vs_mx']}); max relative quantization error "
                  "per kind: " + ", ".join(f"{k} {v:.3g}" for k, v in ex["quant_rel_err"].items()))
            if "mxfp4_encoder" in ex:
                me = ex["mxfp4_encoder"]
                print(f"  MLX mxfp4 encoder: {me['ceil_log2_amax_over_6']}/{me['groups']} group exponents = "
                      f"ceil(log2(amax/6)), {me['ocp_floor_minus_2']}/{me['groups']} = floor(log2(amax))-2 (OCP); "
                      f"{me['codes']} of 16 e2m1 codes used")
            if "hf_layout_convert" in ex:
                print(f"  mlx_lm.convert of the same source in the HF layout: {ex['hf_layout_convert']}")
            print(f"  (info) unquantized source (transformers) vs golden: max |diff| {ex['quant_shift']:.3g}")
            m = ex["mlx"]
            print(f"  mlx-lm forward (f32): vs golden {m['vs_golden']:.3g} "
                  f"(greedy {'same' if m['greedy_same'] else 'DIFFERS'}), vs transformers with truncate: true "
                  f"{m['vs_hf_truncate']:.3g}, vs numpy truncated {m['vs_numpy_truncate']:.3g}; "
                  f"transformers truncate true vs false (golden) {m['hf_truncate_vs_golden']:.3g}")
        elif "mlx" in ex:
            print(f"  (info) {ex['mlx']}")
        if s_rounding(r):
            print(f"  (info) bf16 rounding of the source weights moves the logits by {ex['source_diff']:.3g}")
        if "load_note" in ex:
            print(f"  load: {ex['load_note']}")
        print(f"  min greedy margin {r['min_greedy_margin']:.4f}, min router gap {r['min_router_gap']:.4f}, "
              f"max|logit| {r['logit_absmax']:.2f}, prompt attempts {r['attempts']}")
        print(f"  decode (prefill + one token at a time) vs one pass: max |diff| {r['decode_diff']:.3g}")
        print(f"  default experts impl ({ex['default_experts_impl']}) vs eager: max |diff| {ex['grouped_mm_diff']:.3g}")
        npres = ex["numpy"]
        print(f"  check_numpy (f64) vs golden: max |diff| {npres['max_diff']:.3g}; f32 noise floor "
              f"{npres['f32_floor']:.3g}")
        print("  wrong variants (max |diff| vs golden): " +
              ", ".join(f"{k} {v:.3g}" for k, v in npres["variants"].items()))
    if args.describe:
        for r in results:
            describe(r)
    total = sum(r["size"] for r in results)
    print(f"\ntotal {total / 1024:.1f} KiB in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
