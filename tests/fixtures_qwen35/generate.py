#!/usr/bin/env python3
"""Generate tiny random Qwen3.5-MoE / Qwen3-Next checkpoints (Gated DeltaNet hybrids) + reference
logits (golden.json).

Usage:
    pip install torch transformers safetensors numpy "mlx[cpu]" mlx-lm tokenizers   # transformers >= 5.2
    python3 tests/fixtures_qwen35/generate.py                   # regenerate the committed set here
    python3 tests/fixtures_qwen35/generate.py --out /tmp/fq     # same set, elsewhere (byte-identical)
    python3 tests/fixtures_qwen35/generate.py --out /tmp/fq7 --shapes-seed 7
                                                                # a NEW random set of shapes + weights with the
                                                                # same coverage per fixture name ("not in the repo")
    python3 tests/fixtures_qwen35/generate.py --only q35_flat_f32,next_dense
    python3 tests/fixtures_qwen35/generate.py --describe        # also print tensor listings

Every fixture folder: config.json, model.safetensors (+ for MLX: index, tokenizer, model card) and golden.json:

    {"ids": [...], "prompt_len": P, "atol": 0.002, "logits": [[...], ...]}

ids = a random prompt of P (66..80) tokens + the reference's greedy continuation (6..8 tokens); logits[i] =
float32 logits at position i of ONE forward pass over all ids. P > 64 so that HF's chunked delta-rule prefill
(chunk 64) spans two chunks.

Reference = the written checkpoint reloaded with AutoModelForCausalLM.from_pretrained(dir, dtype=float32,
attn_implementation="eager", experts_implementation="eager") (bf16 weights upcast exactly), with fla /
causal_conv1d / kernels NOT installed so the torch fallbacks run (asserted). For MLX: HF on the dequantized
weights mapped back to HF names/conventions.

Checks per fixture: the saved tensors equal the reference's parameters; full-pass argmax = greedy continuation;
every greedy step has a top1-top2 margin >= 0.05 and every router decision a k-th/(k+1)-th router-logit gap
>= MIN_ROUTER_GAP (else a new prompt); the decode path (use_cache=True prefill of the prompt, then one token at a
time: causal_conv1d_update + torch_recurrent_gated_delta_rule) agrees with the one-pass logits within 1e-4; for
rewritten configs, transformers reads them to identical logits; for qwen3_next, the de-grouped
in_proj_qkvz/in_proj_ba fed to a Qwen3.5 GatedDeltaNet module give the same output as the grouped module.
"""

import argparse
import copy
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import zlib

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))

MIN_GREEDY_MARGIN = 0.05
# k-th vs (k+1)-th router logit. 5e-3 as in tests/fixtures would need hundreds of prompt draws here
# (70+ tokens x 3-5 MoE layers); 2e-3 is still ~100x the router-logit error of an f32 engine (~1e-5).
MIN_ROUTER_GAP = 2e-3
ATOL = 2e-3
DECODE_TOL = 1e-4
# mlx-lm (all params cast to float32) vs golden. These nets' plain-f32 noise floor is ~1e-5..1e-4
# (check_numpy.py --f32), so this is a sanity bound, not a precision claim.
MLX_CROSS_TOL = 5e-4

LIN, FULL = "linear_attention", "full_attention"

# ---------------------------------------------------------------------------------------------------------
# The committed set.
#   family: q35 (qwen3_5_moe[_text]) or next (qwen3_next)
#   layout: flat_fused  - qwen3_5_moe_text flat config, model.layers.*, fused experts (gate_up_proj/down_proj)
#           released    - qwen3_5_moe composite config (text_config + vision_config), model.language_model.*,
#                         fused experts, + model.visual.* + mtp.* tensors; full_attention_interval
#           per_expert  - qwen3_5_moe_text flat config, experts.{e}.{gate,up,down}_proj.weight (= save_pretrained)
#           next        - qwen3_next flat config, grouped in_proj_qkvz/in_proj_ba, per-expert experts
#           mlx         - mlx_lm.convert(quantize=True) of a 'released'-layout source
# ---------------------------------------------------------------------------------------------------------
BASE_SPECS = [
    dict(
        name="q35_flat_f32", family="q35", layout="flat_fused", dtype="float32",
        covers="qwen3_5_moe_text flat config; float32; model.layers.* + lm_head.weight; fused experts "
               "gate_up_proj [E,2I,H] / down_proj [E,H,I] (no .weight); explicit layer_types [lin,full,lin,full]; "
               "Hv = 2 Hk; attention 2q/1kv head_dim 32 (rotary_dim 8); top-2 of 6",
        vocab=256, hidden=40, layer_types=[LIN, FULL, LIN, FULL],
        heads=2, kv_heads=1, head_dim=32, lk_heads=2, lv_heads=4, lk_dim=16, lv_dim=16, conv_k=4,
        experts=6, topk=2, moe_inter=12, shared_inter=16, rope_theta=1e7, eps=1e-6,
        prompt_len=68, gen=8,
    ),
    dict(
        name="q35_released_bf16", family="q35", layout="released", dtype="bfloat16",
        covers="released layout: composite qwen3_5_moe config (text_config + small vision_config, "
               "Qwen3_5MoeForConditionalGeneration), full_attention_interval 4 over 5 layers (no layer_types) -> "
               "[lin,lin,lin,full,lin]; bfloat16 (A_log float32); model.language_model.* + top-level lm_head; "
               "model.visual.* and mtp.* tensors present (to be skipped); fused experts; Hv = 4 Hk; 4q/2kv "
               "head_dim 16 (rotary_dim 4); top-3 of 8",
        vocab=288, hidden=48, layers=5, interval=4,
        heads=4, kv_heads=2, head_dim=16, lk_heads=2, lv_heads=8, lk_dim=16, lv_dim=8, conv_k=4,
        experts=8, topk=3, moe_inter=12, shared_inter=16, rope_theta=1e7, eps=1e-6,
        prompt_len=72, gen=7,
    ),
    dict(
        name="q35_per_expert", family="q35", layout="per_expert", dtype="float32",
        covers="qwen3_5_moe_text flat config; float32; per-expert experts.{e}.{gate,up,down}_proj.weight (what "
               "save_pretrained writes in transformers 5.23); layer_types [full,lin,lin] (full first); Hv = Hk; "
               "linear key dim 24 != value dim 16; MHA 2q/2kv head_dim 24 (rotary_dim 6); top-2 of 5; eps 1e-5",
        vocab=272, hidden=40, layer_types=[FULL, LIN, LIN],
        heads=2, kv_heads=2, head_dim=24, lk_heads=2, lv_heads=2, lk_dim=24, lv_dim=16, conv_k=4,
        experts=5, topk=2, moe_inter=16, shared_inter=20, rope_theta=1e7, eps=1e-5,
        prompt_len=75, gen=6,
    ),
    dict(
        name="next_dense", family="next", layout="next", dtype="float32",
        covers="qwen3_next flat config (transformers-5 spelling: rope_parameters, layer_types); float32; grouped "
               "in_proj_qkvz / in_proj_ba; per-expert experts; mlp_only_layers [1] -> dense MLP (intermediate_size 40) "
               "in layer 1, MoE in 0,2,3; norm_topk_prob false; Hv = 4 Hk (2 key heads); layer_types "
               "[lin,lin,full,lin]; 4q/1kv head_dim 16; rope_theta 5e6; top-3 of 6",
        vocab=256, hidden=40, layer_types=[LIN, LIN, FULL, LIN],
        heads=4, kv_heads=1, head_dim=16, lk_heads=2, lv_heads=8, lk_dim=16, lv_dim=8, conv_k=4,
        experts=6, topk=3, moe_inter=12, shared_inter=16, inter=40, mlp_only_layers=[1], sparse_step=1,
        norm_topk=False, rope_theta=5e6, eps=1e-6,
        prompt_len=70, gen=8,
    ),
    dict(
        name="next_sparse_step", family="next", layout="next", dtype="float32", released_spelling=True,
        covers="qwen3_next flat config in the released (transformers 4.57) spelling: top-level rope_theta + "
               "partial_rotary_factor, full_attention_interval 3 over 5 layers (no layer_types) -> "
               "[lin,lin,full,lin,lin], torch_dtype; decoder_sparse_step 2 -> MoE in 1,3, dense MLP "
               "(intermediate_size 48) in 0,2,4; norm_topk_prob true; Hv = 2 Hk; 4q/2kv head_dim 32; top-2 of 8",
        vocab=264, hidden=32, layers=5, interval=3,
        heads=4, kv_heads=2, head_dim=32, lk_heads=2, lv_heads=4, lk_dim=16, lv_dim=16, conv_k=4,
        experts=8, topk=2, moe_inter=16, shared_inter=16, inter=48, mlp_only_layers=[], sparse_step=2,
        norm_topk=True, rope_theta=5e6, eps=1e-6,
        prompt_len=66, gen=8,
    ),
    dict(
        name="q35_mlx_4bit", family="q35", layout="mlx", dtype="bfloat16", bits=4, group=32,
        covers="mlx_lm.convert(quantize=True, q_bits=4, q_group_size=32) of a released-layout bf16 qwen3_5_moe "
               "model: language_model.model.*, switch_mlp, norms stored as 1+w, conv1d [C,K,1], A_log float32; "
               "router mlp.gate + shared_expert_gate 8-bit g64 (config overrides); full_attention_interval 2 "
               "over 4 layers [lin,full,lin,full]; Hv = 2 Hk; 2q/1kv head_dim 32; top-2 of 4",
        vocab=256, hidden=64, layers=4, interval=2,
        heads=2, kv_heads=1, head_dim=32, lk_heads=2, lv_heads=4, lk_dim=16, lv_dim=16, conv_k=4,
        experts=4, topk=2, moe_inter=32, shared_inter=32, rope_theta=1e7, eps=1e-6,
        prompt_len=70, gen=7,
    ),
]


def layer_types_of(s):
    if s.get("layer_types"):
        return list(s["layer_types"])
    return [LIN if (i + 1) % s["interval"] else FULL for i in range(s["layers"])]


def n_params(s):
    """Rough parameter count of the text model (to keep randomized fixtures under ~1 MB with golden.json)."""
    H, V = s["hidden"], s["vocab"]
    lt = layer_types_of(s)
    kd, vd = s["lk_heads"] * s["lk_dim"], s["lv_heads"] * s["lv_dim"]
    lin = H * (2 * kd + vd) + H * vd + 2 * H * s["lv_heads"] + vd * H + (2 * kd + vd) * s["conv_k"]
    full = H * s["heads"] * s["head_dim"] * 2 + 2 * H * s["kv_heads"] * s["head_dim"] + s["heads"] * s["head_dim"] * H
    moe = s["experts"] * 3 * H * s["moe_inter"] + 3 * H * s["shared_inter"] + (s["experts"] + 1) * H
    n = 2 * V * H + sum(lin if t == LIN else full for t in lt)
    for l in range(len(lt)):
        if s["family"] == "next" and (l in s["mlp_only_layers"] or (l + 1) % s["sparse_step"]):
            n += 3 * H * s["inter"]
        else:
            n += moe
    return n


def randomize(spec, rng):
    """New random shapes/hyper-parameters keeping each fixture's coverage property (redrawn until weights +
    golden.json come to ~800 KB or less)."""
    for _ in range(1000):
        s = randomize_once(spec, rng)
        bytes_per = 4 if s["dtype"] == "float32" else (2 if s["layout"] != "mlx" else 0.7)
        golden = (s["prompt_len"] + s["gen"]) * s["vocab"] * 11
        if n_params(s) * bytes_per + golden <= 800_000:
            return s
    raise RuntimeError("no small enough random shapes")


def randomize_once(spec, rng):
    s = copy.deepcopy(spec)
    name = s["name"]
    ratio = s["lv_heads"] // s["lk_heads"]  # Hv/Hk kept per fixture
    s["lk_heads"] = rng.choice([1, 2]) if ratio > 1 else 2
    if name == "next_dense":
        s["lk_heads"] = 2  # grouping needs >= 2 key heads to be visible
    s["lv_heads"] = s["lk_heads"] * ratio
    s["lk_dim"] = rng.choice([8, 16, 24])
    s["lv_dim"] = rng.choice([8, 16]) if name != "q35_per_expert" else rng.choice([d for d in (8, 16, 24) if d != s["lk_dim"]])
    s["kv_heads"] = rng.choice([1, 2])
    s["heads"] = s["kv_heads"] * rng.choice([1, 2]) if name != "q35_per_expert" else s["kv_heads"]
    s["head_dim"] = rng.choice([16, 24, 32])  # rotary_dim = head_dim/4 is even
    s["vocab"] = rng.randrange(256, 321)
    s["experts"] = rng.randrange(4, 9)
    s["topk"] = rng.choice([2, 3])
    s["moe_inter"] = rng.choice([8, 12, 16])
    s["shared_inter"] = rng.choice([12, 16, 24])
    s["rope_theta"] = 5e6 if s["family"] == "next" else rng.choice([1e6, 1e7])
    s["eps"] = rng.choice([1e-6, 1e-5])
    s["prompt_len"] = rng.randrange(66, 81)
    s["gen"] = rng.randrange(6, 9)
    if name == "q35_mlx_4bit":
        G = rng.choice([32, 64])
        s["group"], s["hidden"] = G, 64
        s["heads"] = s["kv_heads"] * rng.choice([1, 2])
        s["head_dim"] = 64 // s["heads"] if 64 // s["heads"] in (16, 32, 64) else 32
        s["lv_dim"] = 64 // s["lv_heads"] if 64 % s["lv_heads"] == 0 and 64 // s["lv_heads"] >= 8 else 16
        s["lv_heads"] = 64 // s["lv_dim"]
        s["lk_heads"] = max(1, s["lv_heads"] // ratio)
        s["moe_inter"] = s["shared_inter"] = rng.choice([G, 2 * G]) if G == 32 else 64
        s["layers"], s["interval"] = rng.choice([(4, 2), (5, 2), (4, 3), (5, 4)])
    else:
        s["hidden"] = rng.choice([32, 40, 48]) if s["dtype"] == "float32" else rng.choice([48, 64])
        if "layer_types" in s:
            n = rng.randrange(3, 6)
            lt = [rng.choice([LIN, FULL]) for _ in range(n)]
            lt[0 if name == "q35_per_expert" else rng.randrange(0, n - 1)] = FULL  # a full layer not only at the end
            if lt.count(LIN) < 2:  # at least two linear-attention layers
                for i in rng.sample([i for i in range(n) if i != lt.index(FULL)], 2):
                    lt[i] = LIN
            s["layer_types"] = lt
        else:  # interval-derived layer types with a linear layer after the first full one
            s["interval"] = rng.choice([2, 3, 4])
            s["layers"] = rng.randrange(s["interval"] + 1, 6)
    L = len(layer_types_of(s))
    if s["family"] == "next":
        s["inter"] = rng.choice([24, 40, 48])
        if name == "next_dense":
            s["mlp_only_layers"] = [rng.randrange(0, L)]
            s["sparse_step"] = 1
        else:
            s["sparse_step"] = 2
            s["mlp_only_layers"] = []
    s["covers"] = f"[randomized shapes, shapes-seed] {spec['name']}: " + spec["covers"].split(";")[0] + \
        f"; Hv/Hk {ratio}; layer_types {['F' if t == FULL else 'L' for t in layer_types_of(s)]}"
    return s


# ---------------------------------------------------------------------------------------------------------
# HF model construction
# ---------------------------------------------------------------------------------------------------------
def text_kwargs(s):
    rd = int(s["head_dim"] * 0.25)
    assert rd % 2 == 0 and rd > 0, ("rotary_dim must be even", s["head_dim"])
    kw = dict(
        vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=len(layer_types_of(s)),
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
        linear_num_key_heads=s["lk_heads"], linear_num_value_heads=s["lv_heads"],
        linear_key_head_dim=s["lk_dim"], linear_value_head_dim=s["lv_dim"], linear_conv_kernel_dim=s["conv_k"],
        num_experts=s["experts"], num_experts_per_tok=s["topk"], moe_intermediate_size=s["moe_inter"],
        shared_expert_intermediate_size=s["shared_inter"], rms_norm_eps=s["eps"], tie_word_embeddings=False,
        initializer_range=0.15, max_position_embeddings=256, hidden_act="silu", attention_bias=False,
        layer_types=layer_types_of(s),
    )
    if s["family"] == "q35":
        half = rd // 2
        sec = [half // 3 + (i < half % 3) for i in range(3)]  # sums to rotary_dim/2: [11, 11, 10] for 32
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": float(s["rope_theta"]),
                                 "partial_rotary_factor": 0.25, "mrope_section": sec, "mrope_interleaved": True}
    else:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": float(s["rope_theta"]),
                                 "partial_rotary_factor": 0.25}
        kw.update(intermediate_size=s["inter"], decoder_sparse_step=s["sparse_step"],
                  mlp_only_layers=list(s["mlp_only_layers"]), norm_topk_prob=s["norm_topk"])
    return kw


VISION = {"depth": 1, "hidden_size": 32, "num_heads": 4, "intermediate_size": 32, "patch_size": 4,
          "temporal_patch_size": 2, "spatial_merge_size": 1, "num_position_embeddings": 16}


def build_model(s, fseed):
    torch.manual_seed(fseed)
    tk = text_kwargs(s)
    if s["layout"] in ("released", "mlx"):
        cfg = AutoConfig.for_model("qwen3_5_moe", text_config=tk, vision_config=dict(VISION, out_hidden_size=s["hidden"]),
                                   tie_word_embeddings=False)
        from transformers import Qwen3_5MoeForConditionalGeneration
        model = Qwen3_5MoeForConditionalGeneration._from_config(cfg, attn_implementation="eager",
                                                                  experts_implementation="eager")
        text_cfg = cfg.text_config
    else:
        cfg = AutoConfig.for_model("qwen3_5_moe_text" if s["family"] == "q35" else "qwen3_next", **tk)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", experts_implementation="eager")
        text_cfg = cfg
    model = model.float().eval()
    # the partial rotary factor really landed: rotary_dim = head_dim/4
    rot = [m for n, m in model.named_modules() if n.endswith("rotary_emb") and "visual" not in n]
    assert len(rot) == 1 and rot[0].inv_freq.numel() == int(s["head_dim"] * 0.25) // 2, rot[0].inv_freq.shape
    assert text_cfg.layer_types == layer_types_of(s)
    g = torch.Generator().manual_seed(fseed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "visual" in n:
                continue
            if n.endswith("linear_attn.norm.weight"):  # plain weight (init 1), shared by all value heads
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif n.endswith(("layernorm.weight", "q_norm.weight", "k_norm.weight")) or n.endswith("model.norm.weight") \
                    or n.endswith("language_model.norm.weight"):  # zero-centred, used as (1 + w)
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif n.endswith("A_log"):  # decay rate A in [0.02, 1]: memory that lasts a few..tens of tokens
                p.copy_(torch.empty(p.shape).uniform_(0.02, 1.0, generator=g).log())
            elif n.endswith("dt_bias"):
                p.copy_(torch.empty(p.shape).uniform_(-1.5, 0.5, generator=g))
            elif n.endswith("mlp.gate.weight"):  # router: larger spread -> robust top-k decisions
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif n.endswith("conv1d.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model


def check_torch_fallbacks():
    """fla / causal_conv1d / kernels absent; the wrapped delta-rule and conv functions resolve to torch code."""
    import importlib
    for pkg in ("fla", "causal_conv1d"):
        try:
            importlib.import_module(pkg)
            raise SystemExit(f"{pkg} is importable: uninstall it so the torch reference path runs")
        except ImportError:
            pass
    from transformers.utils import import_utils
    if hasattr(import_utils, "is_kernels_available"):
        assert not import_utils.is_kernels_available(), "uninstall `kernels`"
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as m35
    from transformers.models.qwen3_next import modeling_qwen3_next as mnx
    names = ["torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
             "causal_conv1d_update"]
    for mod in (m35, mnx):
        for fn in names:
            f = getattr(mod, fn)
            cells = dict(zip(f.__code__.co_freevars, (c.cell_contents for c in f.__closure__ or ())))
            assert cells.get("is_new_implementation") is False, (mod.__name__, fn, cells.keys())


class CallCounter:
    """Counts calls of the module-level delta-rule / conv functions the layers look up at call time."""

    NAMES = ["torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
             "causal_conv1d_update"]

    def __init__(self):
        from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as m35
        from transformers.models.qwen3_next import modeling_qwen3_next as mnx
        self.mods = (m35, mnx)
        self.orig = {(m, n): getattr(m, n) for m in self.mods for n in self.NAMES}
        self.counts = {n: 0 for n in self.NAMES}

    def __enter__(self):
        for (m, n), f in self.orig.items():
            def wrap(*a, _f=f, _n=n, **k):
                self.counts[_n] += 1
                return _f(*a, **k)
            setattr(m, n, wrap)
        return self

    def __exit__(self, *exc):
        for (m, n), f in self.orig.items():
            setattr(m, n, f)

    def take(self):
        c = dict(self.counts)
        for n in self.counts:
            self.counts[n] = 0
        return c


# ---------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------
def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def st_save(tensors, path):
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, path, metadata={"format": "pt"})


def cast_sd(sd, dtype):
    """Cast to the storage dtype; A_log stays float32 (as in released bf16 checkpoints / mlx cast_predicate)."""
    dt = getattr(torch, dtype)
    return {k: (v.float() if k.endswith("A_log") else v.to(dt)) for k, v in sd.items()}


def mtp_tensors(s, g, dtype):
    """A few tensors under mtp.* (multi-token-prediction head of released checkpoints; loaders must skip them)."""
    H, E, I = s["hidden"], s["experts"], s["moe_inter"]
    D, Hq, Hkv = s["head_dim"], s["heads"], s["kv_heads"]
    shapes = {
        "mtp.fc.weight": [H, 2 * H],
        "mtp.pre_fc_norm_embedding.weight": [H], "mtp.pre_fc_norm_hidden.weight": [H], "mtp.norm.weight": [H],
        "mtp.layers.0.input_layernorm.weight": [H], "mtp.layers.0.post_attention_layernorm.weight": [H],
        "mtp.layers.0.self_attn.q_proj.weight": [Hq * 2 * D, H], "mtp.layers.0.self_attn.k_proj.weight": [Hkv * D, H],
        "mtp.layers.0.self_attn.v_proj.weight": [Hkv * D, H], "mtp.layers.0.self_attn.o_proj.weight": [H, Hq * D],
        "mtp.layers.0.self_attn.q_norm.weight": [D], "mtp.layers.0.self_attn.k_norm.weight": [D],
        "mtp.layers.0.mlp.gate.weight": [E, H],
        "mtp.layers.0.mlp.experts.gate_up_proj": [E, 2 * I, H], "mtp.layers.0.mlp.experts.down_proj": [E, H, I],
        "mtp.layers.0.mlp.shared_expert_gate.weight": [1, H],
    }
    return {k: (0.15 * torch.randn(v, generator=g)).to(getattr(torch, dtype)) for k, v in shapes.items()}


def released_config(model, s, path):
    """config.json in the released Qwen3.5-MoE shape: full_attention_interval instead of layer_types, the
    extra released text keys, vision_config.model_type "qwen3_5_moe" (HF rewrites it)."""
    c = json.loads(model.config.to_json_string())
    tc = c["text_config"]
    assert tc.pop("layer_types") == layer_types_of(s)
    tc["full_attention_interval"] = s["interval"]
    tc.update(attn_output_gate=True, mamba_ssm_dtype="float32", mtp_num_hidden_layers=1,
              mtp_use_dedicated_embeddings=False, dtype=s["dtype"])
    c["vision_config"]["model_type"] = "qwen3_5_moe"
    c["dtype"] = s["dtype"]
    c["architectures"] = ["Qwen3_5MoeForConditionalGeneration"]
    c["transformers_version"] = transformers.__version__
    write_json(path, c)


def next_released_spelling(path, s):
    """qwen3_next config.json as released (transformers 4.57): top-level rope_theta / partial_rotary_factor,
    full_attention_interval (no layer_types), torch_dtype, rope_scaling null."""
    with open(path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters")
    assert rp["rope_type"] == "default" and rp["partial_rotary_factor"] == 0.25
    c["rope_theta"] = rp["rope_theta"]
    c["partial_rotary_factor"] = rp["partial_rotary_factor"]
    c["rope_scaling"] = None
    assert c.pop("layer_types") == layer_types_of(s)
    c["full_attention_interval"] = s["interval"]
    c["torch_dtype"] = c.pop("dtype")
    write_json(path, c)


def write_fixture(s, model, d, fseed, tmp):
    """Writes config.json + weights for the non-MLX layouts. Returns the set of names that should be skipped."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if s["layout"] == "flat_fused":
        model.config.save_pretrained(d)
        st_save(cast_sd(sd, s["dtype"]), os.path.join(d, "model.safetensors"))
    elif s["layout"] == "released":
        released_config(model, s, os.path.join(d, "config.json"))
        g = torch.Generator().manual_seed(fseed + 2)
        t = cast_sd(sd, s["dtype"])
        t.update(mtp_tensors(s, g, s["dtype"]))
        st_save(t, os.path.join(d, "model.safetensors"))
    elif s["layout"] in ("per_expert", "next"):
        m = model.to(getattr(torch, s["dtype"]))
        m.save_pretrained(d)
        model.float()
        gc = os.path.join(d, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
        # save_pretrained already sorts keys in config.json; rewrite through write_json for a stable format
        with open(os.path.join(d, "config.json")) as f:
            write_json(os.path.join(d, "config.json"), json.load(f))
        if s.get("released_spelling"):
            next_released_spelling(os.path.join(d, "config.json"), s)
    else:
        raise ValueError(s["layout"])


# ---------------------------------------------------------------------------------------------------------
# Reading back / reference
# ---------------------------------------------------------------------------------------------------------
def load_reference(d):
    return AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager").eval()


def read_saved(d):
    out = {}
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    for fn in files:
        with safe_open(os.path.join(d, fn), "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def hf_param_to_saved(name, saved, prefix_map):
    """Value of in-memory parameter `name` (Qwen3_5MoeForCausalLM / Qwen3NextForCausalLM naming) from the saved
    tensors, handling prefix (model. vs model.language_model.) and fused vs per-expert experts."""
    pre = name
    if name.startswith("model.") and prefix_map:
        pre = prefix_map + name[len("model."):]
    if pre in saved:
        return saved[pre].float()
    if name.endswith("experts.gate_up_proj"):
        b = pre[: -len("gate_up_proj")]
        E = len({k.split(".")[-3] for k in saved if k.startswith(b) and k.endswith("gate_proj.weight")})
        return torch.stack([torch.cat([saved[f"{b}{e}.gate_proj.weight"], saved[f"{b}{e}.up_proj.weight"]], 0)
                            for e in range(E)]).float()
    if name.endswith("experts.down_proj"):
        b = pre[: -len("down_proj")]
        E = len({k.split(".")[-3] for k in saved if k.startswith(b) and k.endswith("down_proj.weight")})
        return torch.stack([saved[f"{b}{e}.down_proj.weight"] for e in range(E)]).float()
    raise KeyError(name)


def check_saved_equals(ref, saved, prefix_map, model_src):
    used = set()
    params = dict(ref.named_parameters())
    src = dict(model_src.named_parameters()) if model_src is not None else None
    for n, p in params.items():
        v = hf_param_to_saved(n, saved, prefix_map)
        assert v.shape == p.shape and torch.equal(v, p.detach()), n
        if src is not None:  # the in-memory source model, rounded to the storage dtype
            sn = n if n in src else "model.language_model." + n[len("model."):]
            assert torch.equal(v, src[sn].detach().to(saved_dtype_of(saved, n, prefix_map)).float()), n
    return params


def saved_dtype_of(saved, n, prefix_map):
    pre = prefix_map + n[len("model."):] if (n.startswith("model.") and prefix_map) else n
    if pre in saved:
        return saved[pre].dtype
    for k, v in saved.items():
        if ".experts." in k:
            return v.dtype
    raise KeyError(n)


def sparse_layers_of(cfg):
    if cfg.model_type == "qwen3_next":
        return [l for l in range(cfg.num_hidden_layers)
                if l not in cfg.mlp_only_layers and cfg.num_experts > 0 and (l + 1) % cfg.decoder_sparse_step == 0]
    return list(range(cfg.num_hidden_layers))


def find_prompt(ref, s, fseed, counter):
    P, G, V, K = s["prompt_len"], s["gen"], s["vocab"], s["topk"]
    sparse = sparse_layers_of(ref.config)
    g = torch.Generator().manual_seed(fseed)
    for attempt in range(300):
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
            counter.take()
            out = ref(torch.tensor([ids]), use_cache=False, output_router_logits=True)
            c = counter.take()
        n_lin = ref.config.layer_types.count(LIN)
        assert c["torch_chunk_gated_delta_rule"] == n_lin and c["causal_conv1d_fn"] == n_lin, c
        assert c["torch_recurrent_gated_delta_rule"] == 0 and c["causal_conv1d_update"] == 0, c
        logits = out.logits[0].float()
        assert logits.shape == (P + G, V)
        assert logits[P - 1: -1].argmax(-1).tolist() == ids[P:]
        rl = out.router_logits
        assert len(rl) == len(sparse), (len(rl), sparse)
        srt = [torch.sort(r.float(), dim=-1, descending=True).values for r in rl]
        min_gap = min((x[:, K - 1] - x[:, K]).min().item() for x in srt)
        if min_gap < MIN_ROUTER_GAP:
            continue
        return ids, logits, min_gap, attempt + 1
    raise RuntimeError(f"{s['name']}: no prompt with robust greedy/routing margins found")


def decode_check(ref, ids, P, logits, counter):
    """use_cache prefill of the prompt, then one token at a time through the continuation (recurrent path)."""
    n_lin = ref.config.layer_types.count(LIN)
    with torch.no_grad():
        counter.take()
        out = ref(torch.tensor([ids[:P]]), use_cache=True)
        c = counter.take()
        assert c["torch_chunk_gated_delta_rule"] == n_lin and c["torch_recurrent_gated_delta_rule"] == 0, c
        rows = [out.logits[0]]
        pkv = out.past_key_values
        for t in range(P, len(ids)):
            o = ref(torch.tensor([[ids[t]]]), past_key_values=pkv, use_cache=True)
            pkv = o.past_key_values
            rows.append(o.logits[0])
        c = counter.take()
        steps = len(ids) - P
        assert c["torch_recurrent_gated_delta_rule"] == n_lin * steps and c["causal_conv1d_update"] == n_lin * steps, c
        assert c["torch_chunk_gated_delta_rule"] == 0 and c["causal_conv1d_fn"] == 0, c
    dec = torch.cat(rows, 0).float()
    diff = (dec - logits).abs().max().item()
    assert diff < DECODE_TOL, diff
    return diff


def next_grouping_check(ref, s):
    """De-group in_proj_qkvz / in_proj_ba (released Qwen3-Next layout) into Qwen3.5's in_proj_qkv/z/b/a and check
    that a Qwen3_5MoeGatedDeltaNet with those weights computes exactly what the Qwen3NextGatedDeltaNet computes."""
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeGatedDeltaNet
    cfg = ref.config
    li = cfg.layer_types.index(LIN)
    nx = ref.model.layers[li].linear_attn
    Hk, Hv, Dk, Dv = cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim
    r = Hv // Hk
    W = nx.in_proj_qkvz.weight.detach().view(Hk, 2 * Dk + 2 * r * Dv, -1)
    q, k, v, z = torch.split(W, [Dk, Dk, r * Dv, r * Dv], dim=1)
    Wqkv = torch.cat([q.reshape(-1, W.shape[-1]), k.reshape(-1, W.shape[-1]), v.reshape(-1, W.shape[-1])], 0)
    Wz = z.reshape(-1, W.shape[-1])
    BA = nx.in_proj_ba.weight.detach().view(Hk, 2 * r, -1)
    Wb, Wa = BA[:, :r].reshape(Hv, -1), BA[:, r:].reshape(Hv, -1)
    c35 = AutoConfig.for_model("qwen3_5_moe_text", **{k_: getattr(cfg, k_) for k_ in (
        "hidden_size", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
        "linear_value_head_dim", "linear_conv_kernel_dim", "rms_norm_eps", "hidden_act", "layer_types",
        "num_hidden_layers")})
    m35 = Qwen3_5MoeGatedDeltaNet(c35, li).eval()
    with torch.no_grad():
        m35.in_proj_qkv.weight.copy_(Wqkv)
        m35.in_proj_z.weight.copy_(Wz)
        m35.in_proj_b.weight.copy_(Wb)
        m35.in_proj_a.weight.copy_(Wa)
        for n in ("conv1d.weight", "dt_bias", "A_log", "norm.weight", "out_proj.weight"):
            m35.get_parameter(n).copy_(nx.get_parameter(n))
        x = torch.randn(1, 70, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
        d = (m35(x) - nx(x)).abs().max().item()
    assert d < 1e-5, d  # same math; separate vs fused matmuls may round differently
    return d


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
    """name -> (dtype, shape) from the raw safetensors headers."""
    out = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            with open(os.path.join(d, fn), "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                h = json.loads(f.read(n))
            h.pop("__metadata__", None)
            for k, v in h.items():
                out[k] = (v["dtype"], v["shape"])
    return out


# ---------------------------------------------------------------------------------------------------------
# MLX
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
            arr = np.frombuffer(buf, dtype={"U32": "<u4", "F32": "<f4", "F16": "<f2"}[dt])
        out[k] = arr.reshape(v["shape"]).copy()
        info[k] = (dt, list(v["shape"]))
    return out, info, meta


def unpack_bits(wq, bits):
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")
    n = bitstream.shape[-1] // bits
    b = bitstream.reshape(*bitstream.shape[:-1], n, bits).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint32)


def dequant_np(wq, scales, biases, bits, group):
    q = unpack_bits(wq, bits).astype(np.float32)
    s_ = np.repeat(scales.astype(np.float32), group, axis=-1)
    b_ = np.repeat(biases.astype(np.float32), group, axis=-1)
    assert s_.shape == q.shape
    return (s_ * q + b_).astype(np.float32)


def gen_mlx(s, model, d, fseed, tmp):
    """mlx_lm.convert of a released-layout bf16 source; returns (dequantized HF f32 dir, info dict)."""
    import mlx.core as mx
    from mlx_lm import convert as mlx_convert

    src = os.path.join(tmp, s["name"] + "-hf")
    os.makedirs(src)
    write_fixture(dict(s, layout="released"), model, src, fseed, tmp)
    save_tokenizer(src, s["vocab"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    mlx_convert(hf_path=src, mlx_path=d, quantize=True, q_group_size=s["group"], q_bits=s["bits"])

    cfg_json = json.load(open(os.path.join(d, "config.json")))
    q = cfg_json["quantization"]
    assert cfg_json["quantization_config"] == q
    tensors, info, meta = read_st_np(os.path.join(d, "model.safetensors"))
    assert meta == {"format": "mlx"}, meta
    H = s["hidden"]
    # the router and shared-expert gate got 8-bit g64 overrides via mlx-lm's qwen3_5 quant_predicate
    overrides = {k: v for k, v in q.items() if isinstance(v, dict)}
    L = len(layer_types_of(s))
    want = {f"language_model.model.layers.{l}.mlp.{m}": {"group_size": 64, "bits": 8}
            for l in range(L) for m in ("gate", "shared_expert_gate")}
    assert overrides == want, overrides
    deq, np_vs_mx, qinfo = {}, 0.0, {}
    for p in sorted({k[: -len(".scales")] for k in tensors if k.endswith(".scales")}):
        wq, sc, bi = tensors[p + ".weight"], tensors[p + ".scales"], tensors[p + ".biases"]
        ov = q.get(p)
        G, B = (ov["group_size"], ov["bits"]) if isinstance(ov, dict) else (q["group_size"], q["bits"])
        in_dim = wq.shape[-1] * 32 // B
        assert in_dim == sc.shape[-1] * G, (p, wq.shape, sc.shape)
        w = dequant_np(wq, sc, bi, B, G)
        ref = np.array(mx.dequantize(mx.array(wq), mx.array(sc.astype(np.float32)), mx.array(bi.astype(np.float32)),
                                     group_size=G, bits=B, dtype=mx.float32))
        dd = float(np.abs(ref - w).max())
        np_vs_mx = max(np_vs_mx, dd)
        assert dd == 0.0, (p, dd)
        deq[p + ".weight"] = w
        qinfo[p] = (B, G)
    for k, v in tensors.items():
        if k.rsplit(".", 1)[0] in qinfo:
            continue
        deq[k] = v.astype(np.float32)
    assert info[next(k for k in info if k.endswith("A_log"))][0] == "F32"
    assert all(info[k][0] == "BF16" for k in info if k.endswith("conv1d.weight"))

    # MLX names/conventions -> HF checkpoint names (released layout, fused experts)
    hf = {}
    shifted = (".input_layernorm.weight", ".post_attention_layernorm.weight", ".q_norm.weight", ".k_norm.weight")
    n_shift = 0
    for k, v in deq.items():
        assert k.startswith("language_model."), k
        kk = k[len("language_model."):]
        if kk.startswith("model."):
            kk = "model.language_model." + kk[len("model."):]
        if kk.endswith(shifted) or kk == "model.language_model.norm.weight":
            v = v - np.float32(1.0)  # mlx-lm stored 1 + w (in bf16); HF uses (1 + w)
            n_shift += 1
        if kk.endswith("conv1d.weight"):
            assert v.shape[-1] == 1 and v.shape[1] == s["conv_k"], v.shape
            v = np.moveaxis(v, 2, 1)  # [C, K, 1] -> [C, 1, K]
        hf[kk] = np.ascontiguousarray(v)
    for l in range(L):
        pre = f"model.language_model.layers.{l}.mlp."
        gp, up, dp = (hf.pop(pre + f"switch_mlp.{x}_proj.weight") for x in ("gate", "up", "down"))
        hf[pre + "experts.gate_up_proj"] = np.concatenate([gp, up], axis=1)
        hf[pre + "experts.down_proj"] = dp
    deqd = os.path.join(tmp, s["name"] + "-dequant-hf")
    os.makedirs(deqd)
    st_save({k: torch.from_numpy(v) for k, v in hf.items()}, os.path.join(deqd, "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(deqd, "config.json"))
    # source (bf16) vs MLX: same names and shapes; unquantized tensors identical except the shifted norms
    # (bf16(1 + w) - 1 differs from w by the bf16 rounding of 1 + w)
    srcw = read_saved(src)
    assert set(hf) == {k for k in srcw if not k.startswith(("mtp.", "model.visual."))}, set(hf) ^ set(srcw)
    for k, v in hf.items():
        sv = srcw[k].float().numpy()
        assert sv.shape == v.shape, k
        if k.endswith(("A_log", "dt_bias", "conv1d.weight", "linear_attn.norm.weight")):
            assert np.array_equal(sv, v), k
    return deqd, dict(np_vs_mx=np_vs_mx, qinfo=qinfo, overrides=overrides, n_shift=n_shift, cfg_json=cfg_json)


def mlx_forward(d, ids):
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_map
    model, _ = mlx_lm.load(d)
    model.update(tree_map(lambda v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v,
                          model.parameters()))
    out = model(mx.array([ids]))
    return np.array(out.astype(mx.float32))[0]


# ---------------------------------------------------------------------------------------------------------
def gen_one(s, out_root, seed, tmp, counter):
    d = os.path.join(out_root, s["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    fseed = (zlib.crc32(s["name"].encode()) + 1000003 * seed) & 0x7FFFFFFF
    model = build_model(s, fseed)
    extra = {}

    if s["layout"] == "mlx":
        refdir, extra = gen_mlx(s, model, d, fseed, tmp)
        saved = read_saved(refdir)
        prefix_map = "model.language_model."
        src_model = None
    else:
        write_fixture(s, model, d, fseed, tmp)
        refdir = d
        saved = read_saved(d)
        prefix_map = "model.language_model." if s["layout"] == "released" else ""
        src_model = model

    ref = load_reference(refdir)
    assert ref.config._attn_implementation == "eager" and ref.config._experts_implementation == "eager"
    assert type(ref).__name__ == ("Qwen3NextForCausalLM" if s["family"] == "next" else "Qwen3_5MoeForCausalLM")
    assert ref.config.layer_types == layer_types_of(s)
    rot = ref.model.rotary_emb.inv_freq
    assert rot.numel() == int(s["head_dim"] * 0.25) // 2
    if src_model is not None and s["layout"] == "released":
        check_saved_equals(ref, saved, prefix_map, None)
        # the in-memory source, rounded to bf16, equals the saved tensors
        for n, p in src_model.named_parameters():
            if "visual" in n:
                continue
            key = n
            assert torch.equal(saved[key].float(), p.detach().to(saved[key].dtype).float()), n
    else:
        check_saved_equals(ref, saved, prefix_map, src_model)
    if s["layout"] == "released":
        skipped = sorted(k for k in saved if k.startswith(("mtp.", "model.visual.")))
        assert any(k.startswith("mtp.") for k in skipped) and any(k.startswith("model.visual.") for k in skipped)
        extra["skipped"] = len(skipped)
    if s["family"] == "next":
        extra["grouping_diff"] = next_grouping_check(ref, s)

    ids, logits, min_gap, attempts = find_prompt(ref, s, fseed, counter)
    P = s["prompt_len"]
    dec_diff = decode_check(ref, ids, P, logits, counter)

    if s["layout"] == "released":
        # the full VLM class on the same folder: identical text logits
        from transformers import Qwen3_5MoeForConditionalGeneration
        vlm = Qwen3_5MoeForConditionalGeneration.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager").eval()
        with torch.no_grad():
            l2 = vlm(torch.tensor([ids]), use_cache=False).logits[0]
        assert torch.equal(l2, logits), (l2 - logits).abs().max()
    if s.get("released_spelling"):
        # same weights under the transformers-5 spelling of the config -> identical logits
        alt = os.path.join(tmp, s["name"] + "-v5cfg")
        os.makedirs(alt)
        model.config.save_pretrained(alt)
        shutil.copy(os.path.join(d, "model.safetensors"), alt)
        with torch.no_grad():
            l2 = load_reference(alt)(torch.tensor([ids]), use_cache=False).logits[0]
        assert torch.equal(l2, logits), (l2 - logits).abs().max()
    if s["layout"] in ("flat_fused", "per_expert", "next"):
        # the in-memory source model computes the same logits
        with torch.no_grad():
            l2 = model(torch.tensor([ids]), use_cache=False).logits[0]
        assert (l2 - logits).abs().max().item() == 0.0

    write_golden(os.path.join(d, "golden.json"), ids, P, logits.numpy().tolist(), ATOL)

    if s["layout"] == "mlx":
        ml = mlx_forward(d, ids)
        extra["mlx_f32_diff"] = float(np.abs(ml - logits.numpy()).max())
        assert extra["mlx_f32_diff"] < MLX_CROSS_TOL, extra["mlx_f32_diff"]
        assert ml[P - 1: -1].argmax(-1).tolist() == ids[P:]

    srt = torch.sort(logits, dim=-1, descending=True).values
    margins = srt[:, 0] - srt[:, 1]
    files = sorted(os.listdir(d))
    cfg = ref.config
    return dict(
        name=s["name"], dir=d, size=dir_size(d), files=files, prompt_len=P, n_ids=len(ids), attempts=attempts,
        min_greedy_margin=margins[P - 1: -1].min().item(), min_router_gap=min_gap,
        logit_absmax=logits.abs().max().item(), decode_diff=dec_diff, covers=s["covers"], extra=extra,
        sparse_layers=sparse_layers_of(cfg), layer_types=["F" if t == FULL else "L" for t in cfg.layer_types],
        shape=f"V{s['vocab']} H{s['hidden']} L{len(cfg.layer_types)} attn {s['heads']}q/{s['kv_heads']}kv hd{s['head_dim']} "
              f"(rot {int(s['head_dim'] * 0.25)}) lin Hk{s['lk_heads']}/Hv{s['lv_heads']} Dk{s['lk_dim']}/Dv{s['lv_dim']} "
              f"E{s['experts']} k{s['topk']} I{s['moe_inter']} shared{s['shared_inter']}"
              f"{' dense_I' + str(s['inter']) if s['family'] == 'next' else ''} {s['dtype']}",
        listing=st_listing(d),
    )


def describe(r):
    print(f"\n#### {r['name']}\n```")
    lst = r["listing"]
    lin = r["layer_types"].index("L")
    full = r["layer_types"].index("F")
    dense = [l for l in range(len(r["layer_types"])) if l not in r["sparse_layers"]]
    show = {lin, full} | set(dense[:1])
    seen_exp = set()
    for k in sorted(lst):
        parts = k.split(".")
        if "layers" in parts:
            li = int(parts[parts.index("layers") + 1])
            if k.startswith("mtp."):
                pass
            elif li not in show:
                continue
            if ".experts." in k and parts[parts.index("experts") + 1].isdigit():
                e = int(parts[parts.index("experts") + 1])
                if e > 0:
                    key = (li, "experts")
                    if key not in seen_exp:
                        seen_exp.add(key)
                        print(f"  ... experts.1..{max(int(x.split('.')[parts.index('experts') + 1]) for x in lst if x.startswith('.'.join(parts[:parts.index('experts') + 1]) + '.'))} likewise")
                    continue
        if k.startswith("model.visual.") and not k.startswith("model.visual.patch_embed"):
            continue
        dt, sh = lst[k]
        print(f"{k:66s} {dt:5s} {sh}")
    nv = sum(1 for k in lst if k.startswith("model.visual."))
    if nv:
        print(f"  (+ {nv} model.visual.* tensors in all)")
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
    check_torch_fallbacks()

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
    if any(s["layout"] == "mlx" for s in specs):
        import mlx.core as mx
        mx.set_default_device(mx.cpu)
    os.makedirs(args.out, exist_ok=True)

    import importlib.metadata as md

    def ver(p):
        try:
            return md.version(p)
        except Exception:
            return "-"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors {ver('safetensors')}, "
          f"numpy {np.__version__}, mlx {ver('mlx')}, mlx-lm {ver('mlx-lm')}, shapes-seed {args.shapes_seed}")
    with tempfile.TemporaryDirectory(prefix="q35fx-") as tmp, CallCounter() as counter:
        results = [gen_one(s, args.out, args.shapes_seed, tmp, counter) for s in specs]
    for r in results:
        print(f"\n{r['name']}: {r['size'] / 1024:.1f} KiB ({', '.join(r['files'])}), ids {r['n_ids']} (prompt {r['prompt_len']})")
        print(f"  {r['shape']}; layer types {''.join(r['layer_types'])}; MoE layers {r['sparse_layers']}")
        print(f"  covers: {r['covers']}")
        print(f"  min greedy margin {r['min_greedy_margin']:.4f}, min router gap {r['min_router_gap']:.4f}, "
              f"max|logit| {r['logit_absmax']:.2f}, prompt attempts {r['attempts']}")
        print(f"  decode (prefill + recurrent steps) vs one pass: max |diff| {r['decode_diff']:.3g}")
        ex = r["extra"]
        if "grouping_diff" in ex:
            print(f"  de-grouped qkvz/ba in a Qwen3.5 GatedDeltaNet vs Qwen3-Next module: max |diff| {ex['grouping_diff']:.3g}")
        if "skipped" in ex:
            print(f"  {ex['skipped']} model.visual.* / mtp.* tensors present and ignored by transformers")
        if "mlx_f32_diff" in ex:
            bits = sorted(set(ex["qinfo"].values()))
            print(f"  MLX (bits, group) present: {bits}; overrides {len(ex['overrides'])}; numpy vs mx.dequantize "
                  f"max |diff| {ex['np_vs_mx']:.3g}; norms shifted back: {ex['n_shift']}")
            print(f"  mlx-lm float32 forward vs golden: max |diff| {ex['mlx_f32_diff']:.3g}")
    if args.describe:
        for r in results:
            describe(r)
    total = sum(r["size"] for r in results)
    print(f"\ntotal {total / 1024:.1f} KiB in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
