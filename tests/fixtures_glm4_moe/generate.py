#!/usr/bin/env python3
"""Generate tiny random GLM-4.5 / GLM-4.6 MoE (model_type glm4_moe) checkpoints + reference logits (golden.json).

Usage:
    pip install torch transformers safetensors numpy            # transformers >= 5.2 (made with 5.23.0)
    pip install "mlx[cpu]" mlx-lm tokenizers                    # the MLX fixture (made with mlx 0.32.x, mlx-lm 0.32.2)
    python3 tests/fixtures_glm4_moe/generate.py                 # regenerate the committed set here
    python3 tests/fixtures_glm4_moe/generate.py --out /tmp/fg   # same set, elsewhere (byte-identical)
    python3 tests/fixtures_glm4_moe/generate.py --out /tmp/fg7 --shapes-seed 7
                                                                # a NEW random set of shapes + weights with the
                                                                # same coverage per fixture name ("not in the repo")
    python3 tests/fixtures_glm4_moe/generate.py --only glm_hf_f32,glm_mlx_4bit
    python3 tests/fixtures_glm4_moe/generate.py --describe      # also print tensor listings and configs
    python3 tests/fixtures_glm4_moe/generate.py --probes        # also run the loader probes (config defaults, dtypes,
                                                                # names transformers accepts, mlx-lm limits); prints only

Every fixture folder: config.json, model.safetensors and golden.json (the MLX folder holds what mlx_lm.convert
writes: + model.safetensors.index.json, a tiny tokenizer, a model card README.md):

    {"ids": [...], "prompt_len": P, "atol": 0.002, "logits": [[...], ...]}

ids = a random prompt of P (20..30) tokens + the reference's greedy continuation (6 tokens); logits[i] = float32
logits at position i of ONE forward over all ids (use_cache=False).

Reference = the written folder reloaded with AutoModelForCausalLM.from_pretrained(dir, dtype=float32,
attn_implementation="eager", experts_implementation="eager") on CPU (bf16 weights upcast exactly; the F32
e_score_correction_bias as stored). For MLX: transformers on an HF float32 folder of the exactly dequantized MLX
weights (released per-expert names).

Checks per fixture: the saved tensor names are exactly the expected layout (built independently of transformers);
every reference parameter / e_score_correction_bias buffer equals the saved tensor (upcast exactly; per-expert
gate/up concatenated, down stacked) and every saved tensor is used except the MTP layer (which transformers reports as
unexpected, and which transformers' own MtpModel loader accepts with no missing key once its layer regex is pointed at
it); full-pass argmax = greedy continuation; every greedy step has a top1-top2 margin >= 0.05 and every router
decision a k-th/(k+1)-th selection-score gap >= 2e-3 (and a group-score gap >= 2e-3 where groups are limited), else a
new prompt; the decode path (use_cache prefill, then one token at a time) agrees with the one-pass logits within 1e-4;
the released config spelling is read to bit-identical logits as the transformers-5 spelling; mlx-lm's own forward is
within 5e-4 of golden (MLX fixture); and check_numpy.py (independent numpy float64 forward from the raw files) matches
golden within atol while each deliberately wrong variant moves the logits by far more than atol.
"""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the reference runs on CPU

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
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
MIN_ROUTER_GAP = 2e-3  # k-th vs (k+1)-th selection score (sigmoid + correction bias, after group masking)
ATOL = 2e-3
DECODE_TOL = 1e-4
MLX_CROSS_TOL = 5e-4  # mlx-lm's own forward (all params cast to f32) vs golden

# The config.json key set of the released zai-org/GLM-4.5-Air (GLM-4.5 / GLM-4.6 use the same keys; GLM-4.5 and
# GLM-4.6 have use_qk_norm true), sorted. Values other than shapes / routing / token ids follow GLM-4.5-Air.
RELEASED_KEYS = ["architectures", "attention_bias", "attention_dropout", "eos_token_id", "first_k_dense_replace",
                 "head_dim", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
                 "max_position_embeddings", "model_type", "moe_intermediate_size", "n_group", "n_routed_experts",
                 "n_shared_experts", "norm_topk_prob", "num_attention_heads", "num_experts_per_tok",
                 "num_hidden_layers", "num_key_value_heads", "num_nextn_predict_layers", "pad_token_id",
                 "partial_rotary_factor", "rms_norm_eps", "rope_scaling", "rope_theta", "routed_scaling_factor",
                 "tie_word_embeddings", "topk_group", "torch_dtype", "transformers_version", "use_cache",
                 "use_qk_norm", "vocab_size"]

# ---------------------------------------------------------------------------------------------------------
# The committed set.
#   layout: hf       - what transformers 5.23 save_pretrained writes: per-expert mlp.experts.{e}.{gate,up,down}_proj,
#                      router mlp.gate.weight + mlp.gate.e_score_correction_bias, mlp.shared_experts.*, dense
#                      mlp.{gate,up,down}_proj in the first_k_dense_replace layers; no MTP layer
#           released - the same names + the MTP layer model.layers.{num_hidden_layers}.* (eh_proj, enorm, hnorm,
#                      shared_head.{norm,head}, embed_tokens, a full MoE decoder layer) as in the GLM-4.5 release,
#                      bf16 with the F32 e_score_correction_bias
#           mlx      - mlx_lm.convert(quantize=True) of a 'released' bf16 source
#   spelling: v5       - transformers-5 save_pretrained config (rope_parameters with rope_theta and
#                        partial_rotary_factor inside, dtype)
#             released - the GLM-4.5-Air config.json key set (top-level rope_theta, partial_rotary_factor,
#                        rope_scaling null, torch_dtype, transformers_version 4.54.0)
# bias: e_score_correction_bias = bias_offset + bias_scale * randn
# ---------------------------------------------------------------------------------------------------------
BASE_SPECS = [
    dict(
        name="glm_hf_f32", layout="hf", dtype="float32", spelling="v5", mtp=False,
        covers="transformers-5 config as save_pretrained writes it (rope_parameters {rope_type default, rope_theta "
               "1000000.0, partial_rotary_factor 0.5}, explicit head_dim, num_nextn_predict_layers 1 but no MTP "
               "tensors); float32; first_k_dense_replace 1 (layer 0 dense, intermediate 80); use_qk_norm (per head); "
               "attention_bias (q/k/v); GQA 6q/2kv head_dim 16 (q width 96 != hidden 48; rotary dims 8); "
               "12 experts in 4 groups, topk_group 2, top-3; moe_intermediate 20; 2 shared experts (shared width "
               "40); routed_scaling_factor 2.5; norm_topk_prob true; mixed-sign correction bias",
        vocab=232, hidden=48, layers=3, heads=6, kv_heads=2, head_dim=16, inter=80, moe_inter=20, experts=12, topk=3,
        n_group=4, topk_group=2, n_shared=2, first_dense=1, rsf=2.5, norm_topk=True, qk_norm=True, attn_bias=True,
        rope_theta=1000000.0, prf=0.5, eps=1e-5, bias_scale=0.4, bias_offset=0.0, prompt_len=24, gen=6,
    ),
    dict(
        name="glm_released_bf16", layout="released", dtype="bfloat16", spelling="released", mtp=True,
        covers="released GLM-4.5-Air config key set (top-level rope_theta 1000000, partial_rotary_factor 0.5, "
               "rope_scaling null, head_dim, num_nextn_predict_layers 1, torch_dtype bfloat16, transformers_version "
               "4.54.0); bfloat16 with F32 e_score_correction_bias; MTP layer model.layers.3.* (eh_proj, enorm, "
               "hnorm, shared_head.norm / .head, embed_tokens + a full MoE decoder layer) to be skipped; "
               "use_qk_norm false (as Air); attention_bias; GQA 4q/2kv head_dim 16 (q width 64 != hidden 40); "
               "16 experts, n_group 1, top-4; moe_intermediate 24; 1 shared expert; intermediate 96; "
               "routed_scaling_factor 2.5 (GLM-4.5/4.6's; Air has 1.0)",
        vocab=256, hidden=40, layers=3, heads=4, kv_heads=2, head_dim=16, inter=96, moe_inter=24, experts=16, topk=4,
        n_group=1, topk_group=1, n_shared=1, first_dense=1, rsf=2.5, norm_topk=True, qk_norm=False, attn_bias=True,
        rope_theta=1000000, prf=0.5, eps=1e-5, bias_scale=0.4, bias_offset=0.0, prompt_len=26, gen=6,
    ),
    dict(
        name="glm_mlx_4bit", layout="mlx", dtype="bfloat16", spelling="released", mtp=True,
        q=dict(q_bits=4, q_group_size=32),
        covers="mlx_lm.convert(quantize=True, q_bits=4, q_group_size=32) of a released-layout bf16 source (with MTP "
               "layer, which sanitize drops): mlp.switch_mlp.{gate,up,down}_proj [E,out,in/8] U32 + BF16 scales / "
               "biases, shared experts / dense MLP / q,k,v,o / embeddings / lm_head 4-bit g32, router mlp.gate "
               "BF16 and e_score_correction_bias F32 NOT quantized, q/k/v biases and norms BF16; use_qk_norm "
               "(GLM-4.5 style); GQA 4q/2kv head_dim 32 (q width 128 != hidden 64; rotary dims 16); 8 experts in 2 "
               "groups, topk_group 1, top-2; moe_intermediate 64; intermediate 128; routed_scaling_factor 1.0 (Air); "
               "correction bias offset +2 (all positive)",
        vocab=240, hidden=64, layers=3, heads=4, kv_heads=2, head_dim=32, inter=128, moe_inter=64, experts=8, topk=2,
        n_group=2, topk_group=1, n_shared=1, first_dense=1, rsf=1.0, norm_topk=True, qk_norm=True, attn_bias=True,
        rope_theta=1000000, prf=0.5, eps=1e-5, bias_scale=0.4, bias_offset=2.0, prompt_len=25, gen=6,
    ),
]


def head_dim_of(s):
    return s["head_dim"] or s["hidden"] // s["heads"]


def n_bytes(s):
    """Rough size of weights + golden.json (to keep randomized fixtures at ~800 KB or less)."""
    H, V, L, E = s["hidden"], s["vocab"], s["layers"], s["experts"]
    d = head_dim_of(s)
    qd, kd = s["heads"] * d, s["kv_heads"] * d
    attn = 2 * H * qd + 2 * H * kd
    dense = 3 * H * s["inter"]
    moe = 3 * E * H * s["moe_inter"] + 3 * H * s["moe_inter"] * s["n_shared"]
    router = E * H
    nd = min(s["first_dense"], L)
    n_mat = L * attn + nd * dense + (L - nd) * moe + 2 * V * H
    n_vec = L * (3 * H + 2 * d + qd + 2 * kd) + (L - nd) * E
    golden = (s["prompt_len"] + s["gen"]) * V * 11.5
    if s["layout"] == "mlx":
        return n_mat * (s["q"]["q_bits"] / 8 + 4 / s["q"]["q_group_size"]) + 2 * ((L - nd) * router + n_vec) \
            + golden + 16000
    b = 4 if s["dtype"] == "float32" else 2
    total = b * (n_mat + (L - nd) * router + n_vec) + golden
    if s["mtp"]:
        total += b * (attn + moe + router + 2 * V * H + 2 * H * H + 6 * H)
    return total


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
    s["layers"] = rng.choice([2, 3])
    s["prompt_len"] = rng.randrange(20, 31)
    s["eps"] = rng.choice([1e-5, 1e-6])
    s["topk"] = rng.randrange(2, 5)
    if name == "glm_hf_f32":
        s["n_group"] = rng.choice([2, 3, 4])
        gs = rng.choice([2, 3, 4])
        s["experts"] = s["n_group"] * gs
        s["topk_group"] = rng.randrange(1, s["n_group"])
        s["n_shared"] = rng.choice([1, 2])
        s["rope_theta"] = rng.choice([50000.0, 500000.0, 1000000.0])
        if not (8 <= s["experts"] <= 16) or s["topk"] >= s["topk_group"] * gs:
            return None
    elif name == "glm_released_bf16":
        s["experts"] = rng.randrange(8, 17)
    else:  # mlx: 2 groups, keep 1
        s["experts"] = rng.choice([8, 10, 12, 14, 16])
        if s["topk"] >= s["experts"] // 2:
            return None
    if s["layout"] == "mlx":  # every quantized matrix needs in-features divisible by the group (32); brief: x64
        s["hidden"] = 64
        s["heads"] = rng.choice([2, 4])
        s["kv_heads"] = rng.choice([k for k in (1, 2) if s["heads"] % k == 0 and k < s["heads"]])
        s["head_dim"] = rng.choice([16, 32])
        s["inter"] = rng.choice([128, 192])
        s["moe_inter"] = rng.choice([64, 128])
        s["rope_theta"] = rng.choice([1000000, 500000])
    else:
        s["hidden"] = rng.choice([32, 40, 48])
        s["kv_heads"] = rng.choice([1, 2])
        s["heads"] = s["kv_heads"] * rng.choice([2, 3, 4])
        s["head_dim"] = rng.choice([8, 12, 16])
        if s["heads"] * s["head_dim"] == s["hidden"]:
            return None
        s["inter"] = rng.choice([x for x in range(48, 112, 16) if x != s["hidden"]])
        s["moe_inter"] = rng.choice([x for x in (16, 20, 24, 32) if x != s["hidden"] and x != s["inter"]])
    if s["moe_inter"] * s["n_shared"] == s["hidden"] or s["moe_inter"] == s["inter"]:
        return None
    s["covers"] = f"[randomized shapes, shapes-seed] {name}: " + spec["covers"].split(";")[0]
    return s


# ---------------------------------------------------------------------------------------------------------
# HF model construction
# ---------------------------------------------------------------------------------------------------------
def v5_kwargs(s):
    V = s["vocab"]
    return dict(
        vocab_size=V, hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"], intermediate_size=s["inter"],
        moe_intermediate_size=s["moe_inter"], n_routed_experts=s["experts"], num_experts_per_tok=s["topk"],
        n_group=s["n_group"], topk_group=s["topk_group"], n_shared_experts=s["n_shared"],
        first_k_dense_replace=s["first_dense"], routed_scaling_factor=s["rsf"], norm_topk_prob=s["norm_topk"],
        use_qk_norm=s["qk_norm"], attention_bias=s["attn_bias"], rms_norm_eps=s["eps"],
        rope_parameters={"rope_type": "default", "rope_theta": float(s["rope_theta"]),
                         "partial_rotary_factor": s["prf"]},
        max_position_embeddings=131072, tie_word_embeddings=False, hidden_act="silu", num_nextn_predict_layers=1,
        pad_token_id=V - 3, eos_token_id=[V - 3, V - 2, V - 1], bos_token_id=None, initializer_range=0.02,
    )


def init_value(n, shape, g, H):
    """Large-ish random values so that every feature (correction bias, groups, scaling, renormalisation, shared
    expert, partial half-split RoPE, per-head q/k norms, attention biases, ...) changes the logits."""
    r = torch.randn(shape, generator=g)
    if "norm" in n:  # input / post_attention / final, q_norm, k_norm, MTP enorm / hnorm / shared_head.norm
        return 1.0 + 0.3 * r
    if n.endswith("embed_tokens.weight"):
        return r
    if n.endswith("mlp.gate.weight"):  # router: logits ~ N(0, 2^2) -> sigmoid scores spread over (0, 1)
        return 2.0 * r / H ** 0.5
    if n.endswith("_proj.bias"):  # q / k / v biases
        return 0.5 * r
    if n.endswith("lm_head.weight") or n.endswith("shared_head.head.weight"):
        return 2.0 * r / H ** 0.5
    if n.endswith("experts.gate_up_proj"):
        return 1.5 * r / shape[-1] ** 0.5
    if n.endswith("experts.down_proj"):
        return 1.5 * r / shape[-1] ** 0.5
    if ".mlp." in n:  # dense / shared expert gate, up, down
        return 1.5 * r / shape[-1] ** 0.5
    return r / shape[-1] ** 0.5  # q / k / v / o, eh_proj


def build_model(s, fseed):
    torch.manual_seed(fseed)
    cfg = AutoConfig.for_model("glm4_moe", **v5_kwargs(s))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", experts_implementation="eager")
    model = model.float().eval()
    H = s["hidden"]
    g = torch.Generator().manual_seed(fseed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(init_value(n, p.shape, g, H))
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                assert b.dtype == torch.float32
                b.copy_(s["bias_offset"] + s["bias_scale"] * torch.randn(b.shape, generator=g))
    rot = model.model.rotary_emb
    d = head_dim_of(s)
    r = int(d * s["prf"])
    want = 1.0 / (float(s["rope_theta"]) ** (np.arange(0, r, 2, dtype=np.float64) / r))
    assert rot.inv_freq.numel() == r // 2 and np.abs(rot.inv_freq.double().numpy() - want).max() < 1e-6
    assert rot.attention_scaling == 1.0
    a = model.model.layers[0].self_attn
    assert a.head_dim == d and a.scaling == d ** -0.5
    if s["qk_norm"]:
        assert a.q_norm.weight.shape == (d,) and a.k_norm.weight.shape == (d,)
    assert a.o_proj.bias is None and (a.q_proj.bias is not None) == s["attn_bias"]
    for l, layer in enumerate(model.model.layers):
        moe = l >= s["first_dense"]
        assert (type(layer.mlp).__name__ == "Glm4MoeMoE") == moe
        if moe:
            assert layer.mlp.shared_experts.gate_proj.weight.shape == (s["moe_inter"] * s["n_shared"], H)
    return model


def mtp_tensors(s, model, fseed):
    """The MTP layer model.layers.{L}.* of the GLM-4.5 release (random values, bf16; e_score_correction_bias F32):
    a full MoE decoder layer + enorm, hnorm, eh_proj [H, 2H], shared_head.norm, and copies of the main
    embed_tokens / lm_head as embed_tokens / shared_head.head."""
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeDecoderLayer
    L, H, E = s["layers"], s["hidden"], s["experts"]
    g = torch.Generator().manual_seed(fseed + 7)
    layer = Glm4MoeDecoderLayer(model.config, L)
    assert type(layer.mlp).__name__ == "Glm4MoeMoE"
    p = f"model.layers.{L}."
    out = {}
    with torch.no_grad():
        for n, t in sorted(layer.state_dict().items()):
            if n.endswith("e_score_correction_bias"):
                out[p + n] = (s["bias_offset"] + s["bias_scale"] * torch.randn(t.shape, generator=g)).float()
                continue
            v = init_value(n, t.shape, g, H).to(torch.bfloat16)
            if n.endswith("experts.gate_up_proj"):
                Im = v.shape[1] // 2
                for e in range(E):
                    out[f"{p}mlp.experts.{e}.gate_proj.weight"] = v[e, :Im].clone()
                    out[f"{p}mlp.experts.{e}.up_proj.weight"] = v[e, Im:].clone()
            elif n.endswith("experts.down_proj"):
                for e in range(E):
                    out[f"{p}mlp.experts.{e}.down_proj.weight"] = v[e].clone()
            else:
                out[p + n] = v
        for n, shape in (("enorm.weight", (H,)), ("hnorm.weight", (H,)), ("eh_proj.weight", (H, 2 * H)),
                         ("shared_head.norm.weight", (H,))):
            out[p + n] = init_value(n, shape, g, H).to(torch.bfloat16)
        out[p + "embed_tokens.weight"] = model.model.embed_tokens.weight.detach().to(torch.bfloat16).clone()
        out[p + "shared_head.head.weight"] = model.lm_head.weight.detach().to(torch.bfloat16).clone()
    return out


# ---------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------
def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def st_save(tensors, path):
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, path, metadata={"format": "pt"})


def released_config(model, s):
    """config.json in the released zai-org/GLM-4.5-Air spelling (its key set; top-level rope_theta and
    partial_rotary_factor, rope_scaling null, torch_dtype, transformers_version 4.54.0)."""
    c = json.loads(model.config.to_json_string())
    rp = c.pop("rope_parameters")
    assert rp == {"rope_type": "default", "rope_theta": float(s["rope_theta"]), "partial_rotary_factor": s["prf"]}, rp
    c["rope_theta"] = s["rope_theta"]  # int, as released
    c["partial_rotary_factor"] = s["prf"]
    c["rope_scaling"] = None
    c.pop("dtype", None)
    c["torch_dtype"] = "bfloat16"
    c["transformers_version"] = "4.54.0"
    c["architectures"] = ["Glm4MoeForCausalLM"]
    out = {k: c[k] for k in RELEASED_KEYS}
    assert out["head_dim"] == s["head_dim"] and out["num_nextn_predict_layers"] == 1
    return out


def write_folder(s, model, d, fseed, layout=None):
    """hf: save_pretrained of a float32 copy + its config (keys sorted); released: save_pretrained of a bf16 copy
    (e_score_correction_bias kept F32, as released) + the MTP layer + the released config spelling."""
    layout = layout or s["layout"]
    dtype = getattr(torch, s["dtype"])
    m = copy.deepcopy(model).to(dtype)  # note: .to() also casts the F32 e_score_correction_bias buffers
    if layout != "hf":
        for (n, b), (_, b0) in zip(m.named_buffers(), model.named_buffers()):
            if n.endswith("e_score_correction_bias"):
                b.data = b0.detach().clone().float()
    m.save_pretrained(d)
    del m
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    if layout == "hf":
        with open(os.path.join(d, "config.json")) as f:
            write_json(os.path.join(d, "config.json"), json.load(f))
        return
    sd = read_saved(d)
    mtp = mtp_tensors(s, model, fseed) if s["mtp"] else {}
    assert not set(sd) & set(mtp)
    sd.update(mtp)
    st_save(sd, os.path.join(d, "model.safetensors"))
    write_json(os.path.join(d, "config.json"), released_config(model, s))


def expected_names(s, layout=None):
    """The tensor names of each layout (built independently of what transformers writes)."""
    layout = layout or s["layout"]
    L, E = s["layers"], s["experts"]
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}

    def layer(l, moe):
        p = f"model.layers.{l}."
        out = {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        out |= {p + f"self_attn.{m}_proj.weight" for m in "qkvo"}
        if s["attn_bias"]:
            out |= {p + f"self_attn.{m}_proj.bias" for m in "qkv"}
        if s["qk_norm"]:
            out |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
        if not moe:
            return out | {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        out |= {p + "mlp.gate.weight", p + "mlp.gate.e_score_correction_bias"}
        out |= {p + f"mlp.shared_experts.{x}_proj.weight" for x in ("gate", "up", "down")}
        return out | {p + f"mlp.experts.{e}.{x}_proj.weight" for e in range(E) for x in ("gate", "up", "down")}

    for l in range(L):
        names |= layer(l, l >= s["first_dense"])
    if layout == "released" and s["mtp"]:
        p = f"model.layers.{L}."
        names |= layer(L, True)
        names |= {p + x for x in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                                  "shared_head.head.weight", "embed_tokens.weight")}
    return names


# ---------------------------------------------------------------------------------------------------------
# Reading back / reference
# ---------------------------------------------------------------------------------------------------------
def load_reference(d, **kw):
    out = AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager", **kw)
    if isinstance(out, tuple):  # output_loading_info=True
        return out[0].eval(), out[1]
    return out.eval()


def read_saved(d):
    out = {}
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def saved_view(n, saved, E):
    """The saved tensor(s) behind the in-memory parameter / buffer n: per-expert files -> fused gate_up_proj
    [E, 2Im, H] = cat(gate [Im, H], up [Im, H]) per expert, down_proj [E, H, Im]. Returns (tensor, saved names)."""
    if n in saved:
        return saved[n], {n}
    if n.endswith("mlp.experts.gate_up_proj"):
        pre = n[: -len("gate_up_proj")]
        names = [f"{pre}{e}.{x}_proj.weight" for e in range(E) for x in ("gate", "up")]
        t = torch.stack([torch.cat([saved[f"{pre}{e}.gate_proj.weight"], saved[f"{pre}{e}.up_proj.weight"]], 0)
                         for e in range(E)])
        return t, set(names)
    if n.endswith("mlp.experts.down_proj"):
        pre = n[: -len("down_proj")]
        names = [f"{pre}{e}.down_proj.weight" for e in range(E)]
        return torch.stack([saved[x] for x in names]), set(names)
    raise KeyError(n)


def params_and_biases(m):
    yield from m.named_parameters()
    for n, b in m.named_buffers():
        if n.endswith("e_score_correction_bias"):
            yield n, b


def check_saved_equals(ref, saved, s, src=None):
    """Every reference parameter / correction-bias buffer equals the saved tensor(s) (upcast exactly); every saved
    tensor is used except the MTP layer; optionally the in-memory source model rounded to the saved dtype equals the
    file. Returns the unused (MTP) names."""
    used = set()
    srcp = dict(params_and_biases(src)) if src is not None else None
    for n, p in params_and_biases(ref):
        v, names = saved_view(n, saved, s["experts"])
        used |= names
        assert v.shape == p.shape and torch.equal(v.float(), p.detach().float()), n
        if n.endswith("e_score_correction_bias"):
            assert p.dtype == torch.float32 and v.dtype == torch.float32, (n, p.dtype, v.dtype)
        if srcp is not None:
            assert torch.equal(v, srcp[n].detach().to(v.dtype)), n
    unused = set(saved) - used
    assert all(int(re.match(r"model\.layers\.(\d+)\.", k).group(1)) >= s["layers"] for k in unused), unused
    return unused


def router_decisions(router_logits, ref, s, cn):
    """Margins of every routing decision (numpy route() of check_numpy, i.e. the transformers router)."""
    c = cn.parse_config(json.loads(ref.config.to_json_string()))
    cap = {}
    moe_layers = [l for l in range(s["layers"]) if l >= s["first_dense"]]
    assert len(router_logits) == len(moe_layers), (len(router_logits), moe_layers)
    p = {}
    for l, lg in zip(moe_layers, router_logits):
        assert lg.shape[-1] == s["experts"]
        cap[l] = lg.double().numpy()
        p[f"{l}.ebias"] = ref.model.layers[l].mlp.gate.e_score_correction_bias.double().numpy()
    return cn.routing_stats(c, p, cap)


def find_prompt(ref, s, fseed, cn):
    P, G, V = s["prompt_len"], s["gen"], s["vocab"]
    g = torch.Generator().manual_seed(fseed)
    for attempt in range(2000):
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
        st = router_decisions(out.router_logits, ref, s, cn)
        if st["min_expert_gap"] < MIN_ROUTER_GAP or (st["min_group_gap"] is not None
                                                     and st["min_group_gap"] < MIN_ROUTER_GAP):
            continue
        # coverage: the correction bias, and where groups are limited the group limit and the group scoring
        # (top-2 sum, not max), each change the chosen experts of at least one decision
        grouped = s["n_group"] > 1 and s["topk_group"] < s["n_group"]
        if st["bias_changes"] == 0 or (grouped and (st["group_changes"] == 0 or st["gmax_changes"] == 0)):
            continue
        return ids, logits, st, attempt + 1
    raise RuntimeError(f"{s['name']}: no prompt with robust greedy/routing margins found")


def check_router_matches_numpy(ref, ids, s, cn):
    """The transformers router's (indices, weights) == check_numpy's route() on the same logits."""
    c = cn.parse_config(json.loads(ref.config.to_json_string()))
    got = {}
    hooks = []
    for l, layer in enumerate(ref.model.layers):
        if l >= s["first_dense"]:
            hooks.append(layer.mlp.gate.register_forward_hook(
                lambda m, i, o, _l=l: got.__setitem__(_l, tuple(t.detach().clone() for t in o))))
    with torch.no_grad():
        ref(torch.tensor([ids]), use_cache=False)
    for h in hooks:
        h.remove()
    worst = 0.0
    for l, (lg, w, idx) in got.items():
        b = ref.model.layers[l].mlp.gate.e_score_correction_bias.double().numpy()
        top, wt, _, _ = cn.route(lg.double().numpy(), b, c)
        order_t, order_n = torch.sort(idx, -1).indices.numpy(), np.argsort(top, -1)
        assert np.array_equal(np.sort(idx.numpy(), -1), np.sort(top, -1)), l
        wt_t = np.take_along_axis(w.double().numpy(), order_t, -1)
        wt_n = np.take_along_axis(wt, order_n, -1)
        worst = max(worst, float(np.abs(wt_t - wt_n).max()))
    assert worst < 1e-6, worst
    return worst


def decode_check(ref, ids, P, logits, s):
    """use_cache prefill of the prompt, then one token at a time."""
    with torch.no_grad():
        out = ref(torch.tensor([ids[:P]]), use_cache=True)
        pkv = out.past_key_values
        kinds = [type(layer).__name__ for layer in pkv.layers]
        assert kinds == ["DynamicLayer"] * s["layers"], kinds
        rows = [out.logits[0]]
        for t in range(P, len(ids)):
            o = ref(torch.tensor([[ids[t]]]), past_key_values=pkv, use_cache=True)
            pkv = o.past_key_values
            rows.append(o.logits[0])
        lens = [layer.keys.shape[-2] for layer in pkv.layers]
        assert lens == [len(ids)] * s["layers"], lens
    dec = torch.cat(rows, 0).float()
    diff = (dec - logits).abs().max().item()
    assert diff < DECODE_TOL, diff
    return diff


def check_mtp_transformers(d, s, saved, unused):
    """transformers' own MTP loader (modeling_layers.MtpModel) on the written folder. Glm4MoeForCausalLM's
    _keys_to_ignore_on_load_unexpected names only layers 92 / 46 (GLM-4.5 / GLM-4.5-Air), which MtpModel also uses
    as its weight regex; pointed at layer L it must load every MTP parameter (it raises on a missing one) with the
    values in the file."""
    from transformers.modeling_layers import MtpModel
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeForCausalLM
    L = s["layers"]
    old = Glm4MoeForCausalLM._keys_to_ignore_on_load_unexpected
    Glm4MoeForCausalLM._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{L}.*"]
    try:
        main = load_reference(d)
        mtp = MtpModel.from_pretrained(main)
    finally:
        Glm4MoeForCausalLM._keys_to_ignore_on_load_unexpected = old
    p = f"model.layers.{L}."
    n_checked = 0
    for n, t in params_and_biases(mtp):
        if n in ("embed_tokens.weight", "shared_head.weight"):  # tied to the main model
            continue
        assert n.startswith("layers.0."), n
        rest = n[len("layers.0."):]
        if rest.startswith("mtp_block."):
            rest = rest[len("mtp_block."):]
        elif rest.startswith("post_norm."):
            rest = "shared_head.norm." + rest[len("post_norm."):]
        v, _ = saved_view(p + rest, saved, s["experts"])
        assert torch.equal(v.float(), t.detach().float()), n
        n_checked += 1
    # the two copies that MtpModel takes from the main model instead
    assert torch.equal(saved[p + "embed_tokens.weight"], saved["model.embed_tokens.weight"])
    assert torch.equal(saved[p + "shared_head.head.weight"], saved["lm_head.weight"])
    return n_checked


def impl_diffs(ref, ids, logits):
    """Informational: transformers' other implementations (sdpa attention, grouped_mm experts) vs eager."""
    out = {}
    for attn, exp in (("sdpa", "eager"), ("eager", "grouped_mm")):
        m = AutoModelForCausalLM.from_config(ref.config, attn_implementation=attn,
                                             experts_implementation=exp).float().eval()
        m.load_state_dict(ref.state_dict())
        with torch.no_grad():
            out[f"{attn}/{exp}"] = (m(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    fresh = type(ref.config).from_dict(ref.config.to_dict())
    dflt = AutoModelForCausalLM.from_config(fresh)  # nothing requested: transformers' own choice on this machine
    out["defaults"] = f"{dflt.config._attn_implementation}/{dflt.config._experts_implementation}"
    return out


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


def st_header(d):
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def st_listing(d):
    """name -> (dtype, shape) from the raw safetensors header."""
    h = st_header(d)
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in h.items()}


def md_version(pkg):
    import importlib.metadata as md
    try:
        return md.version(pkg)
    except Exception:
        return "-"


def load_check_numpy():
    spec = importlib.util.spec_from_file_location("check_numpy_glm4_moe", os.path.join(HERE, "check_numpy.py"))
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
    """U32 words [..., n] -> [..., n * 32 / bits] fields, lowest bits of each little-endian word first."""
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")
    b = bitstream.reshape(*bitstream.shape[:-1], bitstream.shape[-1] // bits, bits).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint32)


def mlx_convert_quiet(**kw):
    from mlx_lm import convert as mlx_convert
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mlx_convert(**kw)
    return buf.getvalue()


def gen_mlx(s, model, d, tmp, fseed):
    """Writes a released-layout bf16 source (with MTP layer), runs mlx_lm.convert into d, checks what it wrote,
    dequantizes every quantized matrix exactly and writes an HF float32 folder of those weights (released per-expert
    names, the source config). Returns (that folder, the source folder, info)."""
    import mlx.core as mx
    mx.set_default_device(mx.cpu)
    L, E, first = s["layers"], s["experts"], s["first_dense"]
    info = {}
    src = os.path.join(tmp, s["name"] + "-src")
    os.makedirs(src)
    write_folder(s, model, src, fseed, layout="released")
    save_tokenizer(src, s["vocab"])
    src_cfg = json.load(open(os.path.join(src, "config.json")))
    src_t, src_info, _ = read_st_np(os.path.join(src, "model.safetensors"))
    assert set(src_t) == expected_names(s, "released")
    if os.path.isdir(d):
        shutil.rmtree(d)
    log = mlx_convert_quiet(hf_path=src, mlx_path=d, quantize=True, **s["q"])
    info["bpw"] = next((ln.split("with ")[1].rstrip(".") for ln in log.splitlines() if "bits per weight" in ln), "?")
    info["files"] = sorted(os.listdir(d))

    # ---- config.json as written: the source's keys unchanged + quantization (= quantization_config)
    cfg = json.load(open(os.path.join(d, "config.json")))
    q = cfg["quantization"]
    assert cfg["quantization_config"] == q
    assert {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")} == src_cfg, \
        "convert changed other config keys"
    G, B = s["q"]["q_group_size"], s["q"]["q_bits"]
    assert q == {"group_size": G, "bits": B, "mode": "affine"}, q  # no per-path entries
    info["quantization"] = q

    # ---- tensors
    t, tinfo, meta = read_st_np(os.path.join(d, "model.safetensors"))
    assert meta == {"format": "mlx"}, meta
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    assert set(idx["weight_map"]) == set(t) and set(idx["weight_map"].values()) == {"model.safetensors"}
    assert not any(k.startswith(f"model.layers.{L}.") for k in t), "sanitize keeps the MTP layer?"
    info["mtp_dropped"] = sum(1 for k in src_t if k.startswith(f"model.layers.{L}."))
    mods = sorted(k[: -len(".scales")] for k in t if k.endswith(".scales"))
    lin = ["model.embed_tokens", "lm_head"]
    for l in range(L):
        lin += [f"model.layers.{l}.self_attn.{m}_proj" for m in "qkvo"]
        if l < first:
            lin += [f"model.layers.{l}.mlp.{x}_proj" for x in ("gate", "up", "down")]
        else:
            lin += [f"model.layers.{l}.mlp.{y}.{x}_proj" for y in ("switch_mlp", "shared_experts")
                    for x in ("gate", "up", "down")]
    assert mods == sorted(lin), set(mods) ^ set(lin)
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
    kinds = {}
    for k in unq:  # norms, q/k/v biases, router weight (BF16) and e_score_correction_bias (F32): unchanged
        assert src_info[k] == tinfo[k] and np.array_equal(src_t[k], t[k]), k
        kind = ("e_score_correction_bias" if k.endswith("e_score_correction_bias") else
                "router mlp.gate.weight" if k.endswith("mlp.gate.weight") else
                "q/k/v bias" if k.endswith("_proj.bias") else "norm" if "norm" in k else "?")
        assert kind != "?", k
        kinds.setdefault(kind, set()).add(tinfo[k][0])
        deq[k] = t[k].astype(np.float32)
    info["unquantized"] = {k: sorted(v) for k, v in sorted(kinds.items())}
    assert info["unquantized"]["e_score_correction_bias"] == ["F32"]
    assert info["unquantized"]["router mlp.gate.weight"] == ["BF16"]
    info["np_vs_mx"] = np_vs_mx

    # ---- back to the HF released per-expert names, float32
    hf = {}
    for k, v in deq.items():
        if ".mlp.switch_mlp." in k:
            pre, rest = k.split(".mlp.switch_mlp.")
            assert v.shape[0] == E
            for e in range(E):
                hf[f"{pre}.mlp.experts.{e}.{rest}"] = np.ascontiguousarray(v[e])
        else:
            hf[k] = np.ascontiguousarray(v)
    src_main = {k for k in src_t if not k.startswith(f"model.layers.{L}.")}
    assert set(hf) == src_main, set(hf) ^ src_main
    err = {}
    for k, v in hf.items():
        assert v.shape == src_t[k].shape, k
        if "norm" in k or k.endswith(("bias", "mlp.gate.weight")):
            continue
        kind = "experts" if ".experts." in k else "shared" if "shared_experts" in k else \
            "dense" if ".mlp." in k else "embed/lm_head" if "embed" in k or "lm_head" in k else "attention"
        err[kind] = max(err.get(kind, 0.0), float(np.abs(v - src_t[k]).max() / np.abs(src_t[k]).max()))
    info["quant_rel_err"] = err
    deqd = os.path.join(tmp, s["name"] + "-dequant-hf")
    os.makedirs(deqd)
    st_save({k: torch.from_numpy(v) for k, v in hf.items()}, os.path.join(deqd, "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(deqd, "config.json"))
    return deqd, src, info


def mlx_forward(d, ids):
    """mlx-lm's own forward on a folder, parameters upcast to float32 (scales / biases too)."""
    import mlx.core as mx
    from pathlib import Path
    from mlx.utils import tree_map
    from mlx_lm.utils import load_model
    mx.set_default_device(mx.cpu)
    m, _ = load_model(Path(d))
    m.update(tree_map(lambda v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v, m.parameters()))
    return np.array(m(mx.array([ids]))[0].astype(mx.float32)).astype(np.float64)


def mlx_info(d):
    """Informational (nothing asserted): mlx-lm 0.32.2 on an HF folder vs golden."""
    try:
        import mlx_lm  # noqa: F401
    except Exception as ex:  # pragma: no cover
        return f"mlx-lm not available ({type(ex).__name__})"
    g = json.load(open(os.path.join(d, "golden.json")))
    try:
        out = mlx_forward(d, g["ids"])
    except Exception as ex:
        return f"mlx-lm {md_version('mlx-lm')} load_model fails: {type(ex).__name__}: {' '.join(str(ex).split())[:200]}"
    return (f"mlx-lm {md_version('mlx-lm')} load_model (sanitize stacks experts, drops the MTP layer) + forward: vs "
            f"golden max |diff| {np.abs(out - np.array(g['logits'])).max():.3g}")


# ---------------------------------------------------------------------------------------------------------
def gen_one(s, out_root, seed, tmp, cn):
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
        write_folder(s, model, d, fseed)
        refdir = srcdir = d
        assert set(st_listing(d)) == expected_names(s), set(st_listing(d)) ^ expected_names(s)
        meta = st_header(d)["__metadata__"]
        assert meta == {"format": "pt"}, meta
    saved = read_saved(refdir)
    ref, linfo = load_reference(refdir, output_loading_info=True)
    assert type(ref).__name__ == "Glm4MoeForCausalLM"
    assert ref.config._attn_implementation == "eager" and ref.config._experts_implementation == "eager"
    assert not linfo["missing_keys"] and not linfo["mismatched_keys"], linfo
    c = ref.config
    assert c.num_experts_per_tok == s["topk"] and c.n_routed_experts == s["experts"] and c.n_group == s["n_group"]
    assert c.topk_group == s["topk_group"] and c.routed_scaling_factor == s["rsf"] and c.use_qk_norm == s["qk_norm"]
    assert c.first_k_dense_replace == s["first_dense"] and c.n_shared_experts == s["n_shared"]
    assert c.num_key_value_heads == s["kv_heads"] and c.head_dim == s["head_dim"]
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": s["rope_theta"],
                                 "partial_rotary_factor": s["prf"]}, c.rope_parameters
    assert torch.equal(ref.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    if s["layout"] == "mlx":
        unused = check_saved_equals(ref, saved, s)
    else:
        unused = check_saved_equals(ref, saved, s, src=model)
    # transformers reports the MTP layer as unexpected (per-expert names already merged to experts.gate_up_proj /
    # experts.down_proj by its weight converter); nothing else is unexpected
    fuse = {re.sub(r"\.experts\.\d+\.(gate|up)_proj\.weight$", ".experts.gate_up_proj",
                   re.sub(r"\.experts\.\d+\.down_proj\.weight$", ".experts.down_proj", k)) for k in unused}
    assert set(linfo["unexpected_keys"]) == fuse, set(linfo["unexpected_keys"]) ^ fuse
    extra["unexpected"] = len(unused)
    if s["layout"] == "released" and s["mtp"]:
        assert unused and all(k.startswith(f"model.layers.{s['layers']}.") for k in unused)
        extra["mtp_checked"] = check_mtp_transformers(d, s, saved, unused)
    lst = st_listing(d)
    extra["dtypes"] = sorted({dt for dt, _ in lst.values()})
    extra["bias_dtype"] = sorted({dt for k, (dt, _) in lst.items() if k.endswith("e_score_correction_bias")})

    ids, logits, rstats, attempts = find_prompt(ref, s, fseed, cn)
    extra["router_np_weight_diff"] = check_router_matches_numpy(ref, ids, s, cn)
    P = s["prompt_len"]
    dec_diff = decode_check(ref, ids, P, logits, s)

    if s["layout"] != "mlx":
        with torch.no_grad():  # the in-memory source model (unrounded f32)
            l2 = model(torch.tensor([ids]), use_cache=False).logits[0]
        extra["source_diff"] = (l2 - logits).abs().max().item()
        if s["dtype"] == "float32":
            assert extra["source_diff"] == 0.0, extra["source_diff"]
    if s["spelling"] == "released":
        # the same weights under the transformers-5 config spelling -> bit-identical logits
        alt = os.path.join(tmp, s["name"] + "-v5cfg")
        os.makedirs(alt)
        write_json(os.path.join(alt, "config.json"), json.loads(model.config.to_json_string()))
        shutil.copy(os.path.join(refdir, "model.safetensors"), alt)
        ref2 = load_reference(alt)
        with torch.no_grad():
            l3 = ref2(torch.tensor([ids]), use_cache=False).logits[0]
        assert torch.equal(l3, logits), (l3 - logits).abs().max()
        assert ref2.config.rope_parameters == c.rope_parameters
        extra["released_vs_v5"] = 0.0
    extra["impl"] = impl_diffs(ref, ids, logits)

    write_golden(os.path.join(d, "golden.json"), ids, P, logits.numpy().tolist(), ATOL)

    if s["layout"] == "mlx":
        ml = mlx_forward(d, ids)
        gold = logits.double().numpy()
        extra["mlx_vs_golden"] = float(np.abs(ml - gold).max())
        extra["mlx_greedy_same"] = ml[P - 1: -1].argmax(-1).tolist() == ids[P:]
        assert extra["mlx_vs_golden"] < MLX_CROSS_TOL, extra["mlx_vs_golden"]
        # the unquantized bf16 source (transformers) vs golden: what 4-bit quantization does to these logits
        srcm = load_reference(srcdir)
        with torch.no_grad():
            extra["quant_shift"] = (srcm(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    else:
        extra["mlx_info"] = mlx_info(d)

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
        attempts=attempts, min_greedy_margin=margins[P - 1: -1].min().item(), routing=rstats,
        logit_absmax=logits.abs().max().item(), decode_diff=dec_diff, covers=s["covers"], extra=extra,
        layers=s["layers"], config=json.load(open(os.path.join(d, "config.json"))),
        shape=f"V{s['vocab']} H{s['hidden']} L{s['layers']} (dense {s['first_dense']}) attn {s['heads']}q/"
              f"{s['kv_heads']}kv hd{head_dim_of(s)} rot{int(head_dim_of(s) * s['prf'])} qk_norm {s['qk_norm']} "
              f"bias {s['attn_bias']}; E{s['experts']} k{s['topk']} groups {s['n_group']}/{s['topk_group']} "
              f"shared {s['n_shared']} Im{s['moe_inter']} I{s['inter']} rsf {s['rsf']}; theta {s['rope_theta']} "
              f"eps {s['eps']}; {s['layout']} {s['dtype']}",
        listing=lst,
    )


# ---------------------------------------------------------------------------------------------------------
# Probes (--probes): config defaults, dtypes, names transformers accepts, mlx-lm limits. Nothing is written to --out.
# ---------------------------------------------------------------------------------------------------------
def probes(tmp):
    print("\n# probes")
    # 1. config defaults
    dd = os.path.join(tmp, "probe_cfg")
    os.makedirs(dd)
    write_json(os.path.join(dd, "config.json"), {"model_type": "glm4_moe", "hidden_size": 64, "num_attention_heads": 4})
    c = AutoConfig.from_pretrained(dd)
    print(f"probe: minimal config {{hidden 64, heads 4}} -> num_key_value_heads {c.num_key_value_heads}, head_dim "
          f"{getattr(c, 'head_dim', '(no attribute)')}, rope_parameters {c.rope_parameters}, n_group {c.n_group}, "
          f"topk_group {c.topk_group}, norm_topk_prob {c.norm_topk_prob}, routed_scaling_factor "
          f"{c.routed_scaling_factor}, n_shared_experts {c.n_shared_experts}, first_k_dense_replace "
          f"{c.first_k_dense_replace}, use_qk_norm {c.use_qk_norm}, attention_bias {c.attention_bias}, "
          f"num_nextn_predict_layers {c.num_nextn_predict_layers}, tie_word_embeddings {c.tie_word_embeddings}, "
          f"n_routed_experts {c.n_routed_experts}, num_experts_per_tok {c.num_experts_per_tok}, "
          f"moe_intermediate_size {c.moe_intermediate_size}, intermediate_size {c.intermediate_size}")
    write_json(os.path.join(dd, "config.json"), {"model_type": "glm4_moe", "hidden_size": 64, "num_attention_heads": 4,
                                                 "rope_theta": 500000, "partial_rotary_factor": 0.25,
                                                 "rope_parameters": {"rope_type": "default", "rope_theta": 20000.0}})
    c = AutoConfig.from_pretrained(dd)
    print(f"probe: rope_parameters {{rope_theta 20000.0}} + top-level rope_theta 500000, partial_rotary_factor 0.25 "
          f"-> rope_parameters {c.rope_parameters}")
    # 2. dtypes of e_score_correction_bias
    s = dict(BASE_SPECS[1], name="probe", mtp=False, vocab=64, experts=8, topk=2)
    model = build_model(s, 4321)
    d1 = os.path.join(tmp, "probe_to_bf16")
    m = copy.deepcopy(model).to(torch.bfloat16)
    m.save_pretrained(d1)
    h1 = st_listing(d1)
    d2 = os.path.join(tmp, "probe_f32")
    model.save_pretrained(d2)
    m2 = AutoModelForCausalLM.from_pretrained(d2, dtype=torch.bfloat16)
    d3 = os.path.join(tmp, "probe_from_pretrained_bf16")
    m2.save_pretrained(d3)
    h3 = st_listing(d3)
    k = "model.layers.1.mlp.gate.e_score_correction_bias"
    print(f"probe: e_score_correction_bias saved as {h1[k][0]} after model.to(bfloat16).save_pretrained; "
          f"from_pretrained(dtype=bfloat16) keeps it {m2.model.layers[1].mlp.gate.e_score_correction_bias.dtype} "
          f"(_keep_in_fp32_modules_strict) and save_pretrained then writes {h3[k][0]} (router weight "
          f"{h3['model.layers.1.mlp.gate.weight'][0]})")
    # 3. names from_pretrained accepts
    ids = torch.arange(3, 3 + 20) % s["vocab"]
    with torch.no_grad():
        base = model(ids[None], use_cache=False).logits[0]
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved = read_saved(d2)
    no_bias = {k: v for k, v in saved.items() if not k.endswith("e_score_correction_bias")}
    variants = {
        "save_pretrained (per-expert mlp.experts.{e}.{gate,up,down}_proj.weight)": saved,
        "in-memory fused (mlp.experts.gate_up_proj [E,2Im,H], mlp.experts.down_proj)": sd,
        "per-expert without mlp.gate.e_score_correction_bias": no_bias,
    }
    print("probe: names transformers.from_pretrained accepts for Glm4MoeForCausalLM (logits vs the source model):")
    for i, (what, t) in enumerate(variants.items()):
        dd = os.path.join(tmp, f"probe_names{i}")
        os.makedirs(dd)
        write_json(os.path.join(dd, "config.json"), json.loads(model.config.to_json_string()))
        st_save(t, os.path.join(dd, "model.safetensors"))
        try:
            mm, li = load_reference(dd, output_loading_info=True)
            with torch.no_grad():
                diff = (mm(ids[None], use_cache=False).logits[0] - base).abs().max().item()
            miss, unexp = sorted(li.get("missing_keys") or []), sorted(li.get("unexpected_keys") or [])
            zero = ""
            if miss:
                zero = f"; loaded bias all zero: {bool((mm.model.layers[1].mlp.gate.e_score_correction_bias == 0).all())}"
            print(f"  {what}: max |diff| {diff:.3g}; missing {len(miss)}{' e.g. ' + miss[0] if miss else ''}, "
                  f"unexpected {len(unexp)}{zero}")
        except Exception as ex:
            print(f"  {what}: {type(ex).__name__}: {str(ex).splitlines()[0][:120]}")
    # 4. mlx-lm
    try:
        from mlx_lm.models.glm4_moe import ModelArgs
    except Exception as ex:  # pragma: no cover
        print(f"probe: mlx-lm not available ({type(ex).__name__})")
        return
    v5 = json.loads(model.config.to_json_string())
    try:
        ModelArgs.from_dict(v5)
        print("probe: mlx-lm glm4_moe.ModelArgs.from_dict(transformers-5 config): accepted")
    except Exception as ex:
        print(f"probe: mlx-lm glm4_moe.ModelArgs.from_dict(transformers-5 config): {type(ex).__name__}: "
              f"{' '.join(str(ex).split())[:200]}")
    rel = released_config(model, s)
    rel.pop("head_dim")
    try:
        ModelArgs.from_dict(rel)
        print("probe: mlx-lm ModelArgs without head_dim: accepted")
    except Exception as ex:
        print(f"probe: mlx-lm ModelArgs from the released spelling without head_dim: {type(ex).__name__}: "
              f"{' '.join(str(ex).split())[:160]}")
    # mlx-lm's group masking (0.0) vs transformers' (-inf) on random routers with a mixed-sign correction bias
    import mlx.core as mx
    from mlx_lm.models.glm4_moe import group_expert_select
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeTopkRouter
    mx.set_default_device(mx.cpu)
    cfg = AutoConfig.for_model("glm4_moe", hidden_size=16, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                               topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True)
    r = Glm4MoeTopkRouter(cfg)
    gg = torch.Generator().manual_seed(5)
    for scale, off in ((0.4, 0.0), (1.0, -1.0), (0.4, 2.0)):
        with torch.no_grad():
            r.weight.copy_(2.0 * torch.randn(r.weight.shape, generator=gg) / 4.0)
            r.e_score_correction_bias.copy_(off + scale * torch.randn(16, generator=gg))
        x = torch.randn(4000, 16, generator=gg)
        with torch.no_grad():
            lg, w, idx = r(x)
        inds, sc = group_expert_select(mx.array(lg.numpy()), mx.array(r.e_score_correction_bias.numpy()), 4, 4, 2,
                                       2.5, True)
        a = np.sort(idx.numpy(), -1)
        b = np.sort(np.array(inds), -1)
        print(f"probe: mlx-lm group_expert_select vs transformers router (16 experts, 4 groups keep 2, top-4, bias "
              f"{off:+} + {scale} randn): different expert sets for {int((a != b).any(-1).sum())} of {len(a)} tokens")


# ---------------------------------------------------------------------------------------------------------
def describe(r):
    print(f"\n#### {r['name']}\n```")
    keep_layers = {"0", "1"}
    for k in sorted(r["listing"]):
        mm = re.match(r"model\.layers\.(\d+)\.", k)
        if mm and mm.group(1) not in keep_layers and int(mm.group(1)) < r["layers"]:
            continue
        parts = k.split(".")
        if "experts" in parts:
            nxt = parts[parts.index("experts") + 1]
            if nxt.isdigit() and nxt != "0":
                continue
        dt, sh = r["listing"][k]
        print(f"{k:60s} {dt:5s} {sh}")
    print("(experts 1..E-1 like expert 0; layers 2..L-1 like layer 1)")
    print("```")
    print("config.json:\n```json\n" + json.dumps(r["config"], indent=2, sort_keys=True) + "\n```")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output root (default: this folder)")
    ap.add_argument("--shapes-seed", type=int, default=0,
                    help="0 = the committed set; any other value = a new random set of shapes and weights")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    ap.add_argument("--describe", action="store_true", help="print tensor listings and configs")
    ap.add_argument("--probes", action="store_true", help="also run the loader probes (prints only)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except Exception:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
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

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors "
          f"{md_version('safetensors')}, numpy {np.__version__}, mlx {md_version('mlx')}, mlx-lm "
          f"{md_version('mlx-lm')}, tokenizers {md_version('tokenizers')}, accelerate {md_version('accelerate')}, "
          f"kernels {md_version('kernels')}, shapes-seed {args.shapes_seed}")
    with tempfile.TemporaryDirectory(prefix="glm4moefx-") as tmp:
        results = [gen_one(s, args.out, args.shapes_seed, tmp, cn) for s in specs]
        if args.probes:
            probes(tmp)
    for r in results:
        ex = r["extra"]
        rt = r["routing"]
        print(f"\n{r['name']}: {r['size'] / 1024:.1f} KiB ({', '.join(r['files'])}), ids {r['n_ids']} "
              f"(prompt {r['prompt_len']})")
        print(f"  {r['shape']}")
        print(f"  covers: {r['covers']}")
        print(f"  saved dtypes {ex['dtypes']} (e_score_correction_bias {ex['bias_dtype']}); tensors transformers "
              f"reports as unexpected (MTP layer): {ex['unexpected']}"
              + (f"; transformers MtpModel loads all {ex['mtp_checked']} MTP parameters (values checked)"
                 if "mtp_checked" in ex else ""))
        if "quantization" in ex:
            print(f"  mlx_lm.convert ({ex['bpw']}): quantization {json.dumps(ex['quantization'])} (= "
                  f"quantization_config, no per-path entries); MTP tensors dropped by sanitize: {ex['mtp_dropped']}; "
                  f"unquantized: {ex['unquantized']}; mx.dequantize == numpy decode (max |diff| {ex['np_vs_mx']}); "
                  f"max relative quantization error: " +
                  ", ".join(f"{k} {v:.3g}" for k, v in ex["quant_rel_err"].items()))
            print(f"  (info) unquantized bf16 source (transformers) vs golden: max |diff| {ex['quant_shift']:.3g}")
            print(f"  mlx-lm forward (f32) vs golden: max |diff| {ex['mlx_vs_golden']:.3g} "
                  f"(greedy {'same' if ex['mlx_greedy_same'] else 'DIFFERS'})")
        if "released_vs_v5" in ex:
            print("  released spelling vs transformers-5 spelling of the same weights: bit-identical logits")
        if ex.get("source_diff"):
            print(f"  (info) bf16 rounding of the source weights moves the logits by {ex['source_diff']:.3g}")
        if "mlx_info" in ex:
            print(f"  (info) {ex['mlx_info']}")
        print(f"  routing over the golden ids: {rt['decisions']} decisions; correction bias changes the chosen set in "
              f"{rt['bias_changes']}, the group limit in {rt['group_changes']}, max- instead of top-2-sum group "
              f"scores in {rt['gmax_changes']}; min selection gap "
              f"{rt['min_expert_gap']:.4f}, min group gap {rt['min_group_gap']}; transformers router weights vs "
              f"numpy route(): {ex['router_np_weight_diff']:.2g}")
        print(f"  min greedy margin {r['min_greedy_margin']:.4f}, max|logit| {r['logit_absmax']:.2f}, prompt attempts "
              f"{r['attempts']}")
        print(f"  decode (prefill + one token at a time) vs one pass: max |diff| {r['decode_diff']:.3g}")
        print(f"  (info) defaults {ex['impl']['defaults']}; vs eager/eager: " +
              ", ".join(f"{k} {v:.3g}" for k, v in ex["impl"].items() if k != "defaults"))
        npres = ex["numpy"]
        print(f"  check_numpy (f64) vs golden: max |diff| {npres['max_diff']:.3g}; f32 noise floor "
              f"{npres['f32_floor']:.3g}; skipped MTP layers {npres['skipped_mtp_layers']}")
        print("  wrong variants (max |diff| vs golden): " +
              ", ".join(f"{k} {v:.3g}" for k, v in npres["variants"].items()))
        if npres["info"]:
            print("  informational: " + ", ".join(f"{k} {v:.3g}" for k, v in npres["info"].items()))
        if npres["equivalent"]:
            print("  equivalent: " + ", ".join(f"{k} {v:.2g}" for k, v in npres["equivalent"].items()))
    if args.describe:
        for r in results:
            describe(r)
    total = sum(r["size"] for r in results)
    print(f"\ntotal {total / 1024:.1f} KiB in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
