#!/usr/bin/env python3
"""Generate tiny MLX-quantized Qwen3-MoE checkpoints (made by mlx-lm's own
converter) + reference logits (golden.json).

Usage:
    pip install "mlx[cpu]" mlx-lm torch transformers safetensors numpy tokenizers
    python3 tests/fixtures_mlx/generate.py                  # regenerate the committed set here
    python3 tests/fixtures_mlx/generate.py --out /tmp/fxm   # same set, elsewhere
    python3 tests/fixtures_mlx/generate.py --out /tmp/fxm2 --shapes-seed 7
                                                            # a NEW random set of shapes and weights
                                                            # (same coverage per fixture name)
    python3 tests/fixtures_mlx/generate.py --only q4_g64    # one (or a comma-separated list)
    python3 tests/fixtures_mlx/generate.py --out /tmp/fxm3 --extra 3:32,6:128
                                                            # other (bits, group) pairs than the committed set
    python3 tests/fixtures_mlx/generate.py --describe       # also print config `quantization`
                                                            # sections and tensor listings

Per fixture:
 1. a tiny random HF `Qwen3MoeForCausalLM` (random init, initializer_range 0.15,
    random RMSNorm weights) is `save_pretrained`-ed to a temp folder, its
    config.json rewritten to the released-checkpoint spelling (mlx-lm 0.32's
    qwen3_moe ModelArgs needs top-level `rope_theta`, `num_experts`,
    `head_dim`; `torch_dtype` makes mlx-lm keep the source dtype) and a tiny
    WordLevel tokenizer saved beside it (the converter insists on one);
 2. `mlx_lm.convert(hf_path=src, mlx_path=<fixture>, quantize=True,
    q_group_size=G, q_bits=B[, quant_predicate="mixed_3_6"])` writes the fixture
    folder exactly as mlx-lm writes it (config.json, model.safetensors,
    model.safetensors.index.json, tokenizer.json, tokenizer_config.json,
    README.md model card);
 3. every quantized tensor of the MLX output is dequantized in float32 by an
    independent numpy decoder (u32 words -> little-endian LSB-first bit stream;
    w = f32(scale) * q + f32(bias) per group) and cross-checked against
    `mlx.core.dequantize(..., dtype=float32)`; the MLX names are mapped back to
    HF checkpoint names (switch_mlp stacked experts ->
    `mlp.experts.{e}.{gate,up,down}_proj.weight`), saved as a float32 HF
    checkpoint and loaded with `AutoModelForCausalLM.from_pretrained(...,
    dtype=float32, attn_implementation="eager", experts_implementation="eager")`;
 4. golden.json (same format as tests/fixtures): random prompt + greedy
    continuation, float32 logits at every position of ids from ONE forward pass,
    with the same acceptance checks (greedy top1-top2 margin >= 0.05, router
    k/k+1 gap >= 5e-3, else a new prompt);
 5. cross-check: mlx-lm's own forward (`mlx_lm.load` + `model(ids)`, all float
    parameters incl. scales/biases cast to float32) vs golden.
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
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3MoeConfig, Qwen3MoeForCausalLM

import mlx.core as mx
import mlx_lm
from mlx.utils import tree_map
from mlx_lm import convert as mlx_convert

HERE = os.path.dirname(os.path.abspath(__file__))

MIN_GREEDY_MARGIN = 0.05
MIN_ROUTER_GAP = 5e-3
ATOL = 2e-3
# mlx-lm (float32) vs the HF float32 reference on the dequantized weights.
MLX_CROSS_TOL = 1e-4

# ---------------------------------------------------------------------------
# The committed set. All dims that are the input dim of a quantized matrix are
# multiples of the group size, except where a fixture says otherwise (mlx-lm
# then leaves that matrix unquantized). hidden must be a multiple of 64: Qwen3-MoE's
# own quant predicate quantizes the router `mlp.gate` with group 64 / 8 bits.
# ---------------------------------------------------------------------------
BASE_SPECS = [
    dict(
        name="q4_g64",
        covers="4-bit group 64 (mlx default recipe: routers 8-bit g64 via per-module override); bfloat16 source -> bf16 scales/biases; "
               "untied quantized lm_head; GQA 2 (4q/2kv); head_dim 32; top-2 of 8; norm_topk_prob=true",
        dtype="bfloat16", bits=4, group=64, recipe=None,
        vocab=272, hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32,
        experts=8, topk=2, moe_inter=64, inter=96, norm_topk=True, rope_theta=1e6, eps=1e-6,
        prompt_len=8, gen=8,
    ),
    dict(
        name="q8_g32",
        covers="8-bit group 32 (router still 8-bit but group 64); float16 source -> f16 scales/biases; tie_word_embeddings=true "
               "(quantized embed_tokens doubles as lm_head, no lm_head.* tensors); MQA (4q/1kv); head_dim 16; top-3 of 6; "
               "moe_intermediate 96 (multiple of 32, not of 64); norm_topk_prob=false; eps 1e-5; rope_theta 1e4",
        dtype="float16", bits=8, group=32, recipe=None, tie=True,
        vocab=240, hidden=64, layers=2, heads=4, kv_heads=1, head_dim=16,
        experts=6, topk=3, moe_inter=96, inter=96, norm_topk=False, rope_theta=1e4, eps=1e-5,
        prompt_len=7, gen=7,
    ),
    dict(
        name="mixed_3_6",
        covers="mlx-lm recipe mixed_3_6 (group 64): every quantized module has a per-module override in config.json; 3-bit by "
               "default, 6-bit for lm_head and for v_proj + switch_mlp.down_proj of layers 2,3 (of 4); routers and embed_tokens "
               "3-bit; bfloat16 source; GQA 2; head_dim 32 (o_proj in-dim 128); top-2 of 8",
        dtype="bfloat16", bits=None, group=64, recipe="mixed_3_6",
        vocab=256, hidden=64, layers=4, heads=4, kv_heads=2, head_dim=32,
        experts=8, topk=2, moe_inter=64, inter=96, norm_topk=True, rope_theta=1e6, eps=1e-6,
        prompt_len=8, gen=8,
    ),
    dict(
        name="q2_g128",
        covers="2-bit group 128 (router 8-bit g64); float32 source -> f32 scales/biases; GQA 2 (2q/1kv); head_dim 64; "
               "top-2 of 4; moe_intermediate 128; vocab 200; rope_theta 5e5",
        dtype="float32", bits=2, group=128, recipe=None,
        vocab=200, hidden=128, layers=2, heads=2, kv_heads=1, head_dim=64,
        experts=4, topk=2, moe_inter=128, inter=128, norm_topk=True, rope_theta=5e5, eps=1e-6,
        prompt_len=9, gen=6,
    ),
    dict(
        name="q6_g64",
        covers="6-bit group 64 (values straddle u32 words); bfloat16 source; dense/sparse interleave decoder_sparse_step=2 over "
               "4 layers (MoE in 1,3; dense MLP in 0,2 with intermediate_size 96); dense down_proj in-dim 96 is not a multiple "
               "of 64 so mlx-lm leaves it UNQUANTIZED (plain bf16 .weight, no .scales, no config entry); MHA (4q/4kv); "
               "head_dim 16; top-2 of 6; norm_topk_prob=false",
        dtype="bfloat16", bits=6, group=64, recipe=None, decoder_sparse_step=2,
        vocab=264, hidden=64, layers=4, heads=4, kv_heads=4, head_dim=16,
        experts=6, topk=2, moe_inter=64, inter=96, norm_topk=False, rope_theta=1e6, eps=1e-6,
        prompt_len=8, gen=8,
    ),
    dict(
        name="q5_g32",
        covers="5-bit group 32 (values straddle u32 words; router 8-bit g64); float16 source; GQA 4 (8q/2kv); head_dim 8; "
               "top-4 of 10; moe_intermediate 32 (one group per row of down_proj)",
        dtype="float16", bits=5, group=32, recipe=None,
        vocab=232, hidden=64, layers=2, heads=8, kv_heads=2, head_dim=8,
        experts=10, topk=4, moe_inter=32, inter=64, norm_topk=True, rope_theta=1e6, eps=1e-6,
        prompt_len=6, gen=8,
    ),
]


def extra_spec(bits, group):
    """q4_g64's fixture with another (bits, group): every quantized input dim a multiple of the group."""
    if bits not in (2, 3, 4, 5, 6, 8) or group not in (32, 64, 128):
        sys.exit(f"--extra: unsupported bits {bits} / group {group} (bits 2,3,4,5,6,8; groups 32,64,128)")
    s = copy.deepcopy(BASE_SPECS[0])
    s.update(name=f"q{bits}_g{group}", bits=bits, group=group,
             covers=f"{bits}-bit group {group} on q4_g64's shapes (router 8-bit g64); bfloat16 source",
             moe_inter=max(64, group), inter=max(96, group) if group != 64 else 96)
    return s


def recipe_spec(recipe):
    """mixed_3_6's fixture converted with another mlx-lm recipe (mixed_2_6, mixed_3_4, mixed_4_6)."""
    if recipe not in ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"):
        sys.exit(f"--recipes: unknown mlx-lm recipe {recipe} (mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6)")
    s = copy.deepcopy(next(b for b in BASE_SPECS if b["name"] == "mixed_3_6"))
    s.update(name=recipe, recipe=recipe,
             covers=f"mlx-lm recipe {recipe} (group 64) on mixed_3_6's shapes; bfloat16 source")
    return s


def randomize(spec, rng):
    """New random shapes keeping each fixture's coverage property (bits, group, dtype, recipe, tie, dense mix)."""
    s = copy.deepcopy(spec)
    name, G = s["name"], s["group"]
    s["hidden"] = 128 if G == 128 else rng.choice([64, 128])
    s["moe_inter"] = rng.choice([m for m in (32, 64, 96, 128) if m % G == 0])
    kv = rng.choice([1, 2])
    ratio = rng.choice([1, 2, 4])
    heads = kv * ratio
    hds = [hd for hd in (8, 16, 24, 32, 48, 64, 128) if (heads * hd) % G == 0 and heads * hd <= 256]
    s.update(heads=heads, kv_heads=kv, head_dim=rng.choice(hds))
    s["vocab"] = rng.randrange(200, 321)
    s["experts"] = rng.randrange(4, 11)
    s["topk"] = rng.randrange(2, min(4, s["experts"] - 1) + 1)
    s["norm_topk"] = bool(rng.getrandbits(1))
    s["rope_theta"] = rng.choice([1e4, 5e4, 5e5, 1e6, 1e7])
    s["eps"] = rng.choice([1e-6, 1e-5])
    if s["recipe"]:
        s["layers"] = rng.randrange(4, 7)
    elif name == "q6_g64":
        s["layers"] = rng.randrange(4, 7)
        s["decoder_sparse_step"] = 2
        s["inter"] = G * rng.randrange(1, 3) + G // 2  # not a multiple of G -> dense down_proj stays unquantized
    else:
        s["layers"] = rng.randrange(2, 4)
        s["inter"] = G * rng.randrange(1, 3)
    s["prompt_len"] = rng.randrange(3, 13)
    s["gen"] = rng.randrange(6, 9)
    s["covers"] = (f"[randomized shapes] {name}: {s['dtype']} source; bits {s['bits'] or s['recipe']} group {G}"
                   f"{'; tied embeddings' if s.get('tie') else ''}"
                   f"{'; dense/sparse interleave, unquantized dense down_proj' if name == 'q6_g64' else ''}; "
                   f"GQA {ratio}; norm_topk_prob={str(s['norm_topk']).lower()}")
    return s


# ---------------------------------------------------------------------------
# Source HF model
# ---------------------------------------------------------------------------
def make_config(s):
    return Qwen3MoeConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"], hidden_act="silu", max_position_embeddings=256, initializer_range=0.15,
        rms_norm_eps=s["eps"], tie_word_embeddings=s.get("tie", False), attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": float(s["rope_theta"])},
        decoder_sparse_step=s.get("decoder_sparse_step", 1), mlp_only_layers=s.get("mlp_only_layers", []),
        moe_intermediate_size=s["moe_inter"], num_experts_per_tok=s["topk"], num_experts=s["experts"],
        norm_topk_prob=s["norm_topk"], use_sliding_window=False,
    )


def released_spelling(cfg_path):
    """transformers-5 config.json -> released Qwen3-MoE spelling (what mlx-lm 0.32 expects)."""
    with open(cfg_path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters")
    assert rp.get("rope_type", "default") == "default", rp
    c["rope_theta"] = rp["rope_theta"]
    c["rope_scaling"] = None
    if "num_local_experts" in c:
        c["num_experts"] = c.pop("num_local_experts")
    c["torch_dtype"] = c.pop("dtype")
    c["max_window_layers"] = c["num_hidden_layers"]
    with open(cfg_path, "w") as f:
        json.dump(dict(sorted(c.items())), f, indent=2)
        f.write("\n")


def save_tokenizer(d, vocab_size):
    """A tiny WordLevel tokenizer with exactly vocab_size tokens (only there to satisfy mlx_lm.convert)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {f"t{i}": i for i in range(vocab_size - 2)}
    vocab["<unk>"] = vocab_size - 2
    vocab["<|endoftext|>"] = vocab_size - 1
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|endoftext|>").save_pretrained(d)


def make_source(s, src, fseed):
    torch.manual_seed(fseed)
    cfg = make_config(s)
    model = Qwen3MoeForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5))
    model = model.to(getattr(torch, s["dtype"]))
    model.save_pretrained(src)
    gc = os.path.join(src, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    released_spelling(os.path.join(src, "config.json"))
    save_tokenizer(src, s["vocab"])
    return cfg


# ---------------------------------------------------------------------------
# Reading the MLX output independently (numpy only)
# ---------------------------------------------------------------------------
ST_DTYPES = {"U32": np.uint32, "F32": np.float32, "F16": np.float16, "BF16": "bf16", "U8": np.uint8,
             "I32": np.int32, "I64": np.int64}


def read_safetensors(path):
    """-> (dict name -> (np array; bf16 upcast exactly to f32), dict name -> (dtype string, shape), metadata)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    base = 8 + n
    out, info = {}, {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        buf = raw[base + a : base + b]
        dt = ST_DTYPES[v["dtype"]]
        if dt == "bf16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=np.dtype(dt).newbyteorder("<"))
        out[k] = arr.reshape(v["shape"]).copy()
        info[k] = (v["dtype"], list(v["shape"]), (a, b))
    return out, info, meta


def unpack_bits(wq, bits):
    """uint32 [..., W] -> integer codes [..., W*32/bits]: each row is a little-endian byte stream read
    least-significant-bit first; element i occupies stream bits [i*bits, (i+1)*bits)."""
    assert sys.byteorder == "little"
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")
    n = bitstream.shape[-1] // bits
    assert n * bits == bitstream.shape[-1]
    b = bitstream.reshape(*bitstream.shape[:-1], n, bits).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint32)


def pack_bits(q, bits):
    """Inverse of unpack_bits (used only to check our reading of the layout against mx.quantize)."""
    q = np.asarray(q, dtype=np.uint32)
    b = ((q[..., None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    stream = b.reshape(*q.shape[:-1], q.shape[-1] * bits)
    by = np.packbits(stream, axis=-1, bitorder="little")
    return by.view("<u4")


def dequant_np(wq, scales, biases, bits, group):
    q = unpack_bits(wq, bits).astype(np.float32)
    s = np.repeat(scales.astype(np.float32), group, axis=-1)
    b = np.repeat(biases.astype(np.float32), group, axis=-1)
    assert s.shape == q.shape, (s.shape, q.shape)
    return (s * q + b).astype(np.float32)


def verify_packing():
    """Pin down the bit layout with integer-valued weights: the codes mx.quantize chose are recovered exactly as
    (w - bias) / scale, and its u32 words must equal our own LSB-first packing of those codes."""
    facts = {}
    rng = np.random.default_rng(0)
    for bits in (2, 3, 4, 5, 6, 8):
        G = 32
        top = 2 ** bits - 1
        q = rng.integers(0, 2 ** bits, size=(4, 128)).astype(np.int64)
        q[:, ::G] = 0            # every group spans the full code range
        q[:, 1::G] = top
        q[:2] -= top             # rows 0,1: values in [-top, 0]; rows 2,3: values in [0, top]
        wq, sc, bi = mx.quantize(mx.array(q.astype(np.float32)), group_size=G, bits=bits)
        wq, sc, bi = np.array(wq), np.array(sc), np.array(bi)
        assert wq.dtype == np.uint32 and wq.shape == (4, 128 * bits // 32), (bits, wq.shape)
        assert sc.shape == bi.shape == (4, 128 // G)
        codes = (q - np.repeat(bi, G, -1)) / np.repeat(sc, G, -1)
        assert np.array_equal(codes, np.round(codes)) and codes.min() == 0 and codes.max() == top, bits
        codes = codes.astype(np.uint32)
        assert np.array_equal(wq, pack_bits(codes, bits)), bits
        assert np.array_equal(unpack_bits(wq, bits), codes), bits
        facts[bits] = dict(scale_neg_range=float(sc[0, 0]), bias_neg_range=float(bi[0, 0]),
                           scale_pos_range=float(sc[2, 0]), bias_pos_range=float(bi[2, 0]),
                           codes=codes[2, :12].tolist(), words=[f"0x{int(x):08x}" for x in wq[2, :3]])
    return facts


# ---------------------------------------------------------------------------
# Dequantize the MLX checkpoint and map back to HF names
# ---------------------------------------------------------------------------
def quant_params_for(qcfg, path):
    v = qcfg.get(path)
    if v is False:
        return None
    if isinstance(v, dict):
        return v["group_size"], v["bits"], v.get("mode", "affine")
    return qcfg["group_size"], qcfg["bits"], qcfg.get("mode", "affine")


def dequantize_checkpoint(dst, cfg_json, s):
    tensors, info, meta = read_safetensors(os.path.join(dst, "model.safetensors"))
    qcfg = cfg_json["quantization"]
    assert cfg_json["quantization_config"] == qcfg, "quantization_config should duplicate quantization"
    out, qinfo = {}, {}
    max_np_vs_mx = 0.0
    bases = sorted({k[: -len(".scales")] for k in tensors if k.endswith(".scales")})
    for p in bases:
        wq, sc, bi = tensors[p + ".weight"], tensors[p + ".scales"], tensors[p + ".biases"]
        assert info[p + ".weight"][0] == "U32"
        assert info[p + ".scales"][0] == info[p + ".biases"][0] == {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[s["dtype"]]
        gp = quant_params_for(qcfg, p)
        assert gp is not None, p
        G, B, mode = gp
        assert mode == "affine"
        in_dim = wq.shape[-1] * 32 // B
        assert in_dim * B == wq.shape[-1] * 32 and in_dim == sc.shape[-1] * G, (p, wq.shape, sc.shape, G, B)
        assert sc.shape == bi.shape == (*wq.shape[:-1], in_dim // G)
        w = dequant_np(wq, sc, bi, B, G)
        # cross-check with mlx (float32 scales/biases -> float32 output), and with native-dtype scales
        ref = np.array(mx.dequantize(mx.array(wq), mx.array(sc.astype(np.float32)), mx.array(bi.astype(np.float32)),
                                     group_size=G, bits=B, dtype=mx.float32))
        d = float(np.abs(ref - w).max())
        max_np_vs_mx = max(max_np_vs_mx, d)
        assert np.allclose(ref, w, rtol=1e-6, atol=1e-7), (p, d)
        out[p + ".weight"] = w
        qinfo[p] = dict(bits=B, group=G, in_dim=in_dim, override=p in qcfg)
    for k, v in tensors.items():
        base = k.rsplit(".", 1)[0]
        if base in qinfo:
            continue
        assert k.endswith(".weight"), k
        assert info[k][0] != "U32"
        out[k] = v.astype(np.float32)
    # config entries for modules that are not quantized in the file?
    for k, v in qcfg.items():
        if isinstance(v, dict):
            assert k in qinfo, f"config names {k} but the file has no {k}.scales"
    return out, qinfo, info, meta, max_np_vs_mx


def mlx_to_hf(deq, n_experts, quantized_bases):
    """MLX names -> HF checkpoint names. Returns (dict, set of HF names that came from quantized tensors)."""
    hf, from_q = {}, set()
    for k, v in deq.items():
        base = k[: -len(".weight")]
        if ".mlp.switch_mlp." in k:
            pre, rest = k.split(".mlp.switch_mlp.")
            proj = rest.split(".")[0]
            assert v.ndim == 3 and v.shape[0] == n_experts
            names = []
            for e in range(n_experts):
                n = f"{pre}.mlp.experts.{e}.{proj}.weight"
                hf[n] = np.ascontiguousarray(v[e])
                names.append(n)
        else:
            hf[k] = v
            names = [k]
        if base in quantized_bases:
            from_q.update(names)
    return hf, from_q


def load_reference(d):
    return AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()


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


def mlx_forward(dst, ids, f32=True):
    model, _tok = mlx_lm.load(dst)
    if f32:
        model.update(tree_map(lambda v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v,
                              model.parameters()))
    out = model(mx.array([ids]))
    return np.array(out.astype(mx.float32))[0]


# ---------------------------------------------------------------------------
def gen_one(s, out_root, seed, tmp_root):
    d = os.path.join(out_root, s["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    fseed = (zlib.crc32(s["name"].encode()) + 1000003 * seed) & 0x7FFFFFFF
    src = os.path.join(tmp_root, s["name"] + "-hf")
    deqd = os.path.join(tmp_root, s["name"] + "-dequant-hf")
    os.makedirs(deqd)
    cfg = make_source(s, src, fseed)

    # ---- mlx-lm's own converter ----
    kw = dict(hf_path=src, mlx_path=d, quantize=True, q_group_size=s["group"], q_bits=s["bits"])
    if s["recipe"]:
        kw["quant_predicate"] = s["recipe"]
    mlx_convert(**kw)

    with open(os.path.join(d, "config.json")) as f:
        cfg_json = json.load(f)
    deq, qinfo, info, meta, np_vs_mx = dequantize_checkpoint(d, cfg_json, s)
    hf, from_q = mlx_to_hf(deq, s["experts"], set(qinfo))

    # the HF names we produce are exactly the source checkpoint's names, with matching shapes
    from safetensors import safe_open
    with safe_open(os.path.join(src, "model.safetensors"), "pt") as f:
        src_t = {k: f.get_tensor(k).float().numpy() for k in f.keys()}
    assert set(hf) == set(src_t), (set(hf) ^ set(src_t))
    qerr = {}
    for k in hf:
        assert hf[k].shape == src_t[k].shape, k
        if k in from_q:
            qerr[k] = float(np.abs(hf[k] - src_t[k]).max() / (np.abs(src_t[k]).max() + 1e-30))
        else:
            # not quantized: bit-identical to the source tensor (after exact upcast)
            assert np.array_equal(hf[k], src_t[k]), k

    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf.items()}, os.path.join(deqd, "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(deqd, "config.json"))
    ref = load_reference(deqd)
    assert ref.config._experts_implementation == "eager" and ref.config._attn_implementation == "eager"
    # every reference parameter equals our dequantized tensor
    params = dict(ref.named_parameters())
    for name, p in params.items():
        if name.endswith("experts.gate_up_proj"):
            pre = name[: -len("gate_up_proj")]
            I = p.shape[1] // 2
            for e in range(p.shape[0]):
                assert np.array_equal(p[e, :I].detach().numpy(), hf[f"{pre}{e}.gate_proj.weight"]), name
                assert np.array_equal(p[e, I:].detach().numpy(), hf[f"{pre}{e}.up_proj.weight"]), name
        elif name.endswith("experts.down_proj"):
            pre = name[: -len("down_proj")]
            for e in range(p.shape[0]):
                assert np.array_equal(p[e].detach().numpy(), hf[f"{pre}{e}.down_proj.weight"]), name
        elif name == "lm_head.weight" and name not in hf:
            assert ref.config.tie_word_embeddings
            assert np.array_equal(p.detach().numpy(), hf["model.embed_tokens.weight"])
        else:
            assert np.array_equal(p.detach().numpy(), hf[name]), name

    sparse_layers = [l for l in range(cfg.num_hidden_layers)
                     if l not in cfg.mlp_only_layers and (l + 1) % cfg.decoder_sparse_step == 0]
    assert sparse_layers
    P, Gn, V, K = s["prompt_len"], s["gen"], s["vocab"], s["topk"]
    g = torch.Generator().manual_seed(fseed)
    for attempt in range(200):
        ids = torch.randint(0, V, (P,), generator=g).tolist()
        ok = True
        with torch.no_grad():
            for _ in range(Gn):
                last = ref(torch.tensor([ids])).logits[0, -1]
                top2 = torch.topk(last, 2).values
                if (top2[0] - top2[1]).item() < MIN_GREEDY_MARGIN:
                    ok = False
                    break
                ids.append(int(torch.argmax(last)))
            if not ok:
                continue
            out = ref(torch.tensor([ids]), output_router_logits=True)
        logits = out.logits[0].float()
        assert logits.shape == (P + Gn, V)
        assert logits[P - 1 : -1].argmax(-1).tolist() == ids[P:]
        rl = out.router_logits
        assert len(rl) == len(sparse_layers)
        min_gap = min((torch.sort(r.float(), dim=-1, descending=True).values[:, K - 1]
                       - torch.sort(r.float(), dim=-1, descending=True).values[:, K]).min().item() for r in rl)
        if min_gap < MIN_ROUTER_GAP:
            continue
        break
    else:
        raise RuntimeError(f"{s['name']}: no prompt with robust greedy/routing margins found")

    srt = torch.sort(logits, dim=-1, descending=True).values
    margins = srt[:, 0] - srt[:, 1]
    logits_np = logits.numpy()
    write_golden(os.path.join(d, "golden.json"), ids, P, logits_np.tolist(), ATOL)

    # ---- mlx-lm's own forward pass ----
    ml32 = mlx_forward(d, ids, f32=True)
    mlx_f32_diff = float(np.abs(ml32 - logits_np).max())
    assert mlx_f32_diff < MLX_CROSS_TOL, mlx_f32_diff
    assert ml32[P - 1 : -1].argmax(-1).tolist() == ids[P:]
    mlnat = mlx_forward(d, ids, f32=False)
    mlx_native_diff = float(np.abs(mlnat - logits_np).max())

    files = sorted(os.listdir(d))
    return dict(
        name=s["name"], dir=d, size=dir_size(d), files=files, prompt_len=P, n_ids=len(ids), attempts=attempt + 1,
        min_greedy_margin=margins[P - 1 : -1].min().item(), median_margin=margins.median().item(),
        min_router_gap=min_gap, logit_absmax=float(np.abs(logits_np).max()), sparse_layers=sparse_layers,
        covers=s["covers"], np_vs_mx=np_vs_mx, mlx_f32_diff=mlx_f32_diff, mlx_native_diff=mlx_native_diff,
        max_rel_qerr=max(qerr.values()), qinfo=qinfo, info=info, meta=meta, cfg_json=cfg_json,
        shape=f"V{s['vocab']} H{s['hidden']} L{s['layers']} q{s['heads']}/kv{s['kv_heads']} hd{s['head_dim']} "
              f"E{s['experts']} k{s['topk']} I{s['moe_inter']} dense_I{s['inter']} {s['dtype']}"
              f"{' tied' if s.get('tie') else ''}",
    )


def describe(r, full=False):
    print(f"\n### {r['name']}\n")
    q = r["cfg_json"]["quantization"]
    print("config.json `quantization` (`quantization_config` is identical), one entry per line:\n```")
    print("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in q.items()) + "\n}")
    print("```")
    moe = r["sparse_layers"][0]

    def keep(k):
        if k.startswith("model.embed_tokens") or k.startswith("lm_head") or k == "model.norm.weight":
            return True
        if full:
            return k.startswith(f"model.layers.{moe}.")
        return k.startswith(f"model.layers.{moe}.mlp.") or k.startswith(f"model.layers.{moe}.self_attn.o_proj")

    print(f"\nmodel.safetensors (metadata {json.dumps(r['meta'])}): layer {moe} (MoE)"
          f"{'' if full else ' mlp + o_proj'}, embedding, lm_head, final norm:\n```")
    for k, (dt, shape, _) in sorted(r["info"].items()):
        if keep(k):
            print(f"{k:50s} {dt:5s} {shape}")
    dense = [l for l in range(len({k.split('.')[2] for k in r['info'] if k.startswith('model.layers.')}))
             if l not in r["sparse_layers"]]
    if dense:
        print(f"-- dense layer {dense[0]} mlp:")
        for k, (dt, shape, _) in sorted(r["info"].items()):
            if k.startswith(f"model.layers.{dense[0]}.mlp."):
                print(f"{k:50s} {dt:5s} {shape}")
    print("```")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output root (default: this folder)")
    ap.add_argument("--shapes-seed", type=int, default=0,
                    help="0 = the committed set; any other value = a new random set of shapes and weights")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    ap.add_argument("--extra", default="",
                    help="comma-separated BITS:GROUP pairs (e.g. 3:32,6:128): instead of the committed set, one "
                         "fixture per pair, named qBITS_gGROUP, on q4_g64's shapes (or random ones with --shapes-seed)")
    ap.add_argument("--recipes", default="",
                    help="comma-separated mlx-lm recipes (mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6): instead of the "
                         "committed set, one fixture per recipe on mixed_3_6's shapes (or random ones with --shapes-seed)")
    ap.add_argument("--describe", action="store_true", help="print quantization sections and tensor listings")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    mx.set_default_device(mx.cpu)
    transformers.logging.set_verbosity_error()
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except Exception:
        pass

    specs = BASE_SPECS
    if args.extra:
        specs = [extra_spec(int(b), int(g)) for b, g in (p.split(":") for p in args.extra.split(","))]
    if args.recipes:
        specs = [recipe_spec(r) for r in args.recipes.split(",")]
    if args.shapes_seed:
        rng = random.Random(args.shapes_seed)
        specs = [randomize(s, rng) for s in specs]
    if args.only:
        want = set(args.only.split(","))
        specs = [s for s in specs if s["name"] in want]
    os.makedirs(args.out, exist_ok=True)

    import importlib.metadata as md
    print(f"mlx {md.version('mlx')}, mlx-lm {md.version('mlx-lm')}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, numpy {np.__version__}, shapes-seed {args.shapes_seed}")
    pack_facts = verify_packing()
    print("packing verified against mx.quantize for bits 2,3,4,5,6,8 (first codes -> first u32 words):")
    for b, f in pack_facts.items():
        print(f"  {b}-bit: codes {f['codes']} -> words {f['words']}; values in [-max,0]: scale {f['scale_neg_range']:g} "
              f"bias {f['bias_neg_range']:g}; values in [0,max]: scale {f['scale_pos_range']:g} bias {f['bias_pos_range']:g}")

    with tempfile.TemporaryDirectory(prefix="mlxfx-") as tmp:
        results = [gen_one(s, args.out, args.shapes_seed, tmp) for s in specs]
    for r in results:
        print(f"\n{r['name']}: {r['size'] / 1024:.1f} KiB ({', '.join(r['files'])}), ids {r['n_ids']} (prompt {r['prompt_len']})")
        print(f"  {r['shape']}; sparse layers {r['sparse_layers']}")
        print(f"  covers: {r['covers']}")
        bits = sorted({(v['bits'], v['group']) for v in r['qinfo'].values()})
        print(f"  (bits, group) present: {bits}; numpy-vs-mx.dequantize max |diff| {r['np_vs_mx']:.3g}; "
              f"max rel. quantization error vs source {r['max_rel_qerr']:.3g}")
        print(f"  min greedy margin {r['min_greedy_margin']:.4f}, median row margin {r['median_margin']:.4f}, "
              f"min router gap {r['min_router_gap']:.4f}, max|logit| {r['logit_absmax']:.2f}, attempts {r['attempts']}")
        print(f"  mlx-lm float32 forward vs golden: max |diff| {r['mlx_f32_diff']:.3g}; "
              f"mlx-lm native-dtype forward vs golden: {r['mlx_native_diff']:.3g}")
    if args.describe:
        for i, r in enumerate(results):
            describe(r, full=(i == 0))
    total = sum(r["size"] for r in results)
    print(f"\ntotal {total / 1024:.1f} KiB in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
