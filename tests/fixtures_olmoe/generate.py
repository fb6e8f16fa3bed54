#!/usr/bin/env python3
"""Generate tiny random OLMoE (model_type olmoe) checkpoints + reference logits (golden.json).

Usage:
    pip install torch transformers safetensors numpy          # transformers >= 5.2 (made with 5.23.0)
    pip install "mlx[cpu]" mlx-lm tokenizers                  # MLX fixture (made with mlx 0.32.4, mlx-lm 0.32.2)
    python3 tests/fixtures_olmoe/generate.py                    # regenerate the committed set here
    python3 tests/fixtures_olmoe/generate.py --out /tmp/fx      # same set, elsewhere (byte-identical)
    python3 tests/fixtures_olmoe/generate.py --out /tmp/fx7 --shapes-seed 7
                                                                # a NEW random set of shapes + weights with the
                                                                # same coverage per fixture name ("not in the repo")
    python3 tests/fixtures_olmoe/generate.py --only olmoe_hf_f32
    python3 tests/fixtures_olmoe/generate.py --describe         # also print tensor listings

Every fixture folder: config.json, model.safetensors and golden.json (no tokenizer; the MLX folder holds what
mlx_lm.convert writes: + model.safetensors.index.json, a tiny tokenizer, a model card README.md):

    {"ids": [...], "prompt_len": P, "atol": 0.002, "logits": [[...], ...]}

ids = a random prompt of P (20..30) tokens + the reference's greedy continuation (6 tokens); logits[i] = float32
logits at position i of ONE forward pass over all ids (use_cache=False).

Reference = the written folder reloaded with AutoModelForCausalLM.from_pretrained(dir, dtype=float32,
attn_implementation="eager", experts_implementation="eager") (bf16 weights upcast exactly). MLX fixture: every
quantized matrix of the mlx_lm.convert output is dequantized (numpy == mx.dequantize, asserted), written as an HF
float32 per-expert folder with the source config, and the golden is transformers on that folder; mlx-lm's own
forward on the MLX folder is compared with it (asserted < 5e-4).

Checks per fixture: the saved tensors equal the reference's parameters (per-expert files <-> transformers' fused
gate_up_proj = cat(gate, up)); full-pass argmax = greedy continuation; every greedy step has a top1-top2 margin
>= 0.05 and every router decision a k-th/(k+1)-th router-logit gap >= 2e-3 (else a new prompt); the decode path
(use_cache prefill of the prompt, then one token at a time) agrees with the one-pass logits within 1e-4;
clip_qkv really clamps q, k and v (share of clamped entries per tensor kind, asserted); the released config
spelling is read to bit-identical logits as the transformers-5 spelling; and check_numpy.py (independent numpy
float64 forward from the raw files) matches golden within atol while each deliberately wrong variant (per-head q/k
norm, renormalised top-k, no clip, ...) moves the logits by far more than atol.
"""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the reference runs on CPU

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
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
MIN_ROUTER_GAP = 2e-3  # k-th vs (k+1)-th raw router logit (top-k of the softmax = top-k of the logits)
ATOL = 2e-3
DECODE_TOL = 1e-4
MLX_CROSS_TOL = 5e-4  # mlx-lm's own forward (f32) vs golden on the MLX folder
CLIP_SHARE = (0.02, 0.6)  # share of q / k / v entries that clip_qkv must clamp (each kind, over all layers)
CLIP_CANDIDATES = (3.0, 2.5, 2.0, 1.75, 1.5, 1.25, 1.0, 0.75)

# Keys of the released allenai/OLMoE-1B-7B-* config.json (as quoted by third-party code; transformers_version,
# whose value was not checked, is left out). Values other than shapes / dtype / token ids follow the releases.
RELEASED_KEYS = ["architectures", "attention_bias", "attention_dropout", "bos_token_id", "clip_qkv", "eos_token_id",
                 "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings",
                 "model_type", "norm_topk_prob", "num_attention_heads", "num_experts", "num_experts_per_tok",
                 "num_hidden_layers", "num_key_value_heads", "output_router_logits", "pad_token_id", "rms_norm_eps",
                 "rope_scaling", "rope_theta", "router_aux_loss_coef", "tie_word_embeddings", "torch_dtype",
                 "use_cache", "vocab_size"]

# ---------------------------------------------------------------------------------------------------------
# The committed set.
#   layout: hf   - what transformers 5.23 save_pretrained writes = the released layout: per-expert
#                  mlp.experts.{e}.{gate,up,down}_proj.weight (nn.Linear [out, in]), router mlp.gate.weight
#           mlx  - mlx_lm.convert(quantize=True, q_bits=4, q_group_size=32) of a released-layout bf16 source
#   spelling: v5       - transformers-5 save_pretrained config (rope_parameters {rope_type default, rope_theta},
#                        dtype)
#             released - the released config.json spelling (top-level rope_theta, rope_scaling null, torch_dtype)
# transformers' OLMoE needs heads * head_dim == hidden (q_norm is RMSNorm(hidden_size), k_norm
# RMSNorm(hidden / heads * kv_heads)); a config with another head_dim fails in the forward (checked, see README),
# so the q width always equals hidden here.
# ---------------------------------------------------------------------------------------------------------
BASE_SPECS = [
    dict(
        name="olmoe_hf_f32", layout="hf", dtype="float32", spelling="v5", clip=True,
        covers="transformers-5 config as save_pretrained writes it (rope_parameters {rope_type default, "
               "rope_theta}, dtype float32); clip_qkv set (clamps q, k after their norms and v); norm_topk_prob false; "
               "per-expert experts; GQA 6q/2kv head_dim 8 (hidden 48); top-2 of 6; intermediate 40",
        vocab=232, hidden=48, layers=3, heads=6, kv_heads=2, experts=6, topk=2, inter=40,
        rope_theta=50000.0, eps=1e-5, prompt_len=24, gen=6,
    ),
    dict(
        name="olmoe_released_bf16", layout="hf", dtype="bfloat16", spelling="released", clip=False,
        covers="released config spelling (top-level rope_theta, rope_scaling null, clip_qkv null, "
               "norm_topk_prob false, torch_dtype bfloat16, no dtype / rope_parameters); bfloat16 everywhere incl. "
               "norms; per-expert experts; MHA 5q/5kv head_dim 8 (hidden 40, as released: kv heads = heads); top-3 "
               "of 8; intermediate 24",
        vocab=256, hidden=40, layers=3, heads=5, kv_heads=5, experts=8, topk=3, inter=24,
        rope_theta=20000.0, eps=1e-5, prompt_len=26, gen=6,
    ),
    dict(
        name="olmoe_mlx_4bit", layout="mlx", dtype="bfloat16", spelling="released", clip=False,
        q=dict(q_bits=4, q_group_size=32),
        covers="mlx_lm.convert(quantize=True, q_bits=4, q_group_size=32) of a released-layout bf16 source: every "
               "Linear / Embedding incl. the router mlp.gate and lm_head 4-bit affine g32 (U32 + BF16 scales / "
               "biases; no per-path entries), experts stacked as mlp.switch_mlp.{gate,up,down}_proj [E,out,..], "
               "norms BF16 (plain weight, no +1 shift); released config spelling; GQA 4q/2kv "
               "head_dim 16 (hidden 64); top-3 of 6; intermediate 128",
        vocab=240, hidden=64, layers=3, heads=4, kv_heads=2, experts=6, topk=3, inter=128,
        rope_theta=10000.0, eps=1e-5, prompt_len=25, gen=6,
    ),
]


# ---------------------------------------------------------------------------------------------------------
# --shapes-seed: new random shapes with the same coverage per fixture name
# ---------------------------------------------------------------------------------------------------------
def n_bytes(s):
    """Rough size of weights + golden.json (to keep randomized fixtures under ~800 KB)."""
    H, V, E, I, L = s["hidden"], s["vocab"], s["experts"], s["inter"], s["layers"]
    kv = s["kv_heads"] * H // s["heads"]
    per = 2 * H * H + 2 * H * kv + E * H + 3 * E * H * I
    norms = 3 * H + kv
    golden = (s["prompt_len"] + s["gen"]) * V * 11.5
    if s["layout"] == "mlx":
        return L * (per * (0.5 + 4 / 32) + 2 * norms) + 2 * V * H * (0.5 + 4 / 32) + golden + 15_000
    b = 4 if s["dtype"] == "float32" else 2
    return b * (L * (per + norms) + 2 * V * H + H) + golden


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
    s["experts"] = rng.randrange(4, 9)
    s["topk"] = rng.randrange(2, 4)
    s["layers"] = rng.randrange(2, 4)
    s["prompt_len"] = rng.randrange(20, 31)
    s["gen"] = 6
    s["eps"] = rng.choice([1e-5, 1e-6])
    if s["layout"] == "mlx":  # every quantized matrix needs in-features divisible by the group (32); brief: x64
        s["hidden"] = 64
        s["inter"] = rng.choice([128, 192])
        s["heads"] = rng.choice([2, 4, 8])
        s["rope_theta"] = rng.choice([10000.0, 20000.0])
    else:
        s["hidden"] = rng.choice([32, 40, 48])
        s["inter"] = rng.choice([i for i in (16, 24, 32, 40) if i != s["hidden"] and 2 * i != s["hidden"]])
        s["heads"] = rng.choice([h for h in (2, 4, 5, 6, 8) if s["hidden"] % h == 0 and (s["hidden"] // h) % 2 == 0
                                 and s["hidden"] // h >= 8])
        s["rope_theta"] = rng.choice([20000.0, 50000.0, 500000.0])
    d = s["hidden"] // s["heads"]
    if name == "olmoe_released_bf16":
        s["kv_heads"] = s["heads"]  # MHA as released
    else:
        kvs = [k for k in (1, 2, 4) if s["heads"] % k == 0 and 1 < s["heads"] // k and k > 1]
        if not kvs or d % 2:
            return None
        s["kv_heads"] = rng.choice(kvs)
    if s["inter"] == s["hidden"]:
        return None
    s["covers"] = f"[randomized shapes, shapes-seed] {name}: " + spec["covers"].split(";")[0]
    return s


# ---------------------------------------------------------------------------------------------------------
# HF model construction
# ---------------------------------------------------------------------------------------------------------
def v5_kwargs(s):
    return dict(
        vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], intermediate_size=s["inter"],
        num_experts=s["experts"], num_experts_per_tok=s["topk"], norm_topk_prob=False, clip_qkv=None,
        rms_norm_eps=s["eps"], rope_parameters={"rope_type": "default", "rope_theta": s["rope_theta"]},
        max_position_embeddings=4096, attention_bias=False, tie_word_embeddings=False, hidden_act="silu",
        bos_token_id=None, eos_token_id=s["vocab"] - 1, pad_token_id=1, initializer_range=0.02,
    )


class QKVRecorder:
    """Forward hooks on q_norm / k_norm / v_proj: the tensors clip_qkv clamps (cloned: the clamp is in place)."""

    def __init__(self, model):
        self.store = {"q": [], "k": [], "v": []}
        self.handles = []
        for layer in model.model.layers:
            a = layer.self_attn
            for kind, mod in (("q", a.q_norm), ("k", a.k_norm), ("v", a.v_proj)):
                self.handles.append(mod.register_forward_hook(
                    lambda m, i, o, _k=kind: self.store[_k].append(o.detach().clone().float())))

    def shares(self, clip):
        return {k: float(torch.cat([t.reshape(-1) for t in v]).abs().gt(clip).float().mean()) for k, v in self.store.items()}

    def close(self):
        for h in self.handles:
            h.remove()


def build_model(s, fseed):
    torch.manual_seed(fseed)
    cfg = AutoConfig.for_model("olmoe", **v5_kwargs(s))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", experts_implementation="eager")
    model = model.float().eval()
    H, I = s["hidden"], s["inter"]
    # Large-ish random values so that the whole-width q/k norms, the routing weights (no renormalisation), clip_qkv,
    # GQA and RoPE all change the logits (asserted by check_numpy.py's variants).
    g = torch.Generator().manual_seed(fseed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in n:  # input / post_attention / final norm, q_norm, k_norm
                p.copy_(1.0 + 0.3 * r)
            elif n.endswith("embed_tokens.weight"):
                p.copy_(r)
            elif n.endswith("mlp.gate.weight"):  # router: logits ~ N(0, 2^2): decisive, unequal probabilities
                p.copy_(2.0 * r / H ** 0.5)
            elif n.endswith("experts.gate_up_proj"):
                p.copy_(1.5 * r / H ** 0.5)
            elif n.endswith("experts.down_proj"):
                p.copy_(1.5 * r / I ** 0.5)
            elif n.endswith("lm_head.weight"):
                p.copy_(2.0 * r / H ** 0.5)
            else:  # q/k/v/o
                p.copy_(r / p.shape[1] ** 0.5)
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (s["hidden"],)
    assert model.model.layers[0].self_attn.k_norm.weight.shape == (s["kv_heads"] * H // s["heads"],)
    if s["clip"]:
        # the largest "round" clip_qkv that clamps a fair share of every kind (q, k, v) on a random probe prompt
        probe = torch.randint(0, s["vocab"], (1, 24), generator=torch.Generator().manual_seed(fseed + 3))
        rec = QKVRecorder(model)
        with torch.no_grad():
            model(probe, use_cache=False)
        rec.close()
        for clip in CLIP_CANDIDATES:
            sh = rec.shares(clip)
            if min(sh.values()) >= 0.04 and max(sh.values()) <= 0.45:
                break
        else:
            raise RuntimeError(f"no clip_qkv value fits: {rec.shares(1.5)}")
        model.config.clip_qkv = clip  # OlmoeAttention reads config.clip_qkv at run time
        s["clip_qkv"] = clip
    return model


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
    """config.json in the released allenai/OLMoE-1B-7B-* spelling (top-level rope_theta, rope_scaling null,
    torch_dtype; no dtype / rope_parameters)."""
    c = json.loads(model.config.to_json_string())
    rp = c.pop("rope_parameters")
    assert rp == {"rope_type": "default", "rope_theta": s["rope_theta"]}, rp
    c["rope_theta"] = rp["rope_theta"]
    c["rope_scaling"] = None
    c.pop("dtype", None)
    c["torch_dtype"] = "bfloat16"
    c["architectures"] = ["OlmoeForCausalLM"]
    out = {k: c[k] for k in RELEASED_KEYS}
    assert out["clip_qkv"] is None and out["norm_topk_prob"] is False and out["tie_word_embeddings"] is False
    return out


def write_hf(s, model, d):
    """save_pretrained (float32 or bfloat16 model) + the config spelling of the fixture."""
    m = copy.deepcopy(model).to(getattr(torch, s["dtype"]))
    m.save_pretrained(d)
    del m
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    if s["spelling"] == "released":
        write_json(os.path.join(d, "config.json"), released_config(model, s))
    else:
        with open(os.path.join(d, "config.json")) as f:
            write_json(os.path.join(d, "config.json"), json.load(f))


# ---------------------------------------------------------------------------------------------------------
# Reading back / reference
# ---------------------------------------------------------------------------------------------------------
def load_reference(d, **extra):
    kw = dict(dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    kw.update(extra)
    return AutoModelForCausalLM.from_pretrained(d, **kw).eval()


def read_saved(d):
    out = {}
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def saved_view(n, saved, E):
    """The saved tensor(s) behind the in-memory parameter n: per-expert files -> fused gate_up_proj [E, 2I, H] =
    cat(gate [I, H], up [I, H]) per expert, down_proj [E, H, I]. Returns (tensor, set of saved names)."""
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


def check_saved_equals(ref, saved, E):
    """Every reference parameter equals the saved tensor(s) (upcast exactly); every saved tensor is used."""
    used = set()
    for n, p in ref.named_parameters():
        v, names = saved_view(n, saved, E)
        used |= names
        assert v.shape == p.shape and torch.equal(v.float(), p.detach()), n
    assert used == set(saved), set(saved) - used


def find_prompt(ref, s, fseed):
    P, G, V, K = s["prompt_len"], s["gen"], s["vocab"], s["topk"]
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
        assert len(rl) == s["layers"] and rl[0].shape == (P + G, s["experts"]), (len(rl), rl[0].shape)
        srt = [torch.sort(r.float(), dim=-1, descending=True).values for r in rl]
        min_gap = min((x[:, K - 1] - x[:, K]).min().item() for x in srt)
        if min_gap < MIN_ROUTER_GAP:
            continue
        return ids, logits, min_gap, attempt + 1
    raise RuntimeError(f"{s['name']}: no prompt with robust greedy/routing margins found")


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


def clip_shares(ref, ids, clip):
    rec = QKVRecorder(ref)
    with torch.no_grad():
        ref(torch.tensor([ids]), use_cache=False)
    rec.close()
    return rec.shares(clip)


def impl_diffs(ref, ids, logits):
    """Informational: transformers' default attention / experts implementations vs the eager golden."""
    out = {}
    fresh = type(ref.config).from_dict(ref.config.to_dict())  # no implementation chosen yet
    m = AutoModelForCausalLM.from_config(fresh).float().eval()
    out["defaults"] = f"{m.config._attn_implementation}/{m.config._experts_implementation}"
    m.load_state_dict(ref.state_dict())
    with torch.no_grad():
        out["default implementations"] = (m(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
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


def st_listing(d):
    """name -> (dtype, shape) from the raw safetensors header."""
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in h.items()}


def st_metadata(d):
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__")


def md_version(pkg):
    import importlib.metadata as md
    try:
        return md.version(pkg)
    except Exception:
        return "-"


def load_check_numpy():
    spec = importlib.util.spec_from_file_location("check_numpy_olmoe", os.path.join(HERE, "check_numpy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------------------
# mlx-lm
# ---------------------------------------------------------------------------------------------------------
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


def mlx_info(d, cn):
    """Informational (nothing asserted): mlx-lm 0.32.2 on an HF folder vs golden and vs the numpy forward with what
    mlx-lm's olmoe.ModelArgs reads (top-level rope_theta, default 10000; no clip_qkv)."""
    try:
        import mlx_lm  # noqa: F401
    except Exception as ex:  # pragma: no cover
        return f"mlx-lm not available ({type(ex).__name__})"
    g = json.load(open(os.path.join(d, "golden.json")))
    out = mlx_forward(d, g["ids"])
    cfg, w, _ = cn.load(d)
    c = cn.parse_config(cfg)
    p = {k: v.astype(np.float64) for k, v in cn.canonical(cfg, w, c).items()}
    c_mlx = dict(c, clip=None, theta=float(cfg.get("rope_theta", 10000.0)))
    like = cn.forward(c_mlx, p, np.array(g["ids"]))
    return (f"mlx-lm {md_version('mlx-lm')} load_model + forward: vs golden max |diff| "
            f"{np.abs(out - np.array(g['logits'])).max():.3g}, vs numpy with mlx-lm's reading (rope_theta "
            f"{c_mlx['theta']}, no clip_qkv) {np.abs(out - like).max():.3g}")


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
    import contextlib
    import io
    from mlx_lm import convert as mlx_convert
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mlx_convert(**kw)
    return buf.getvalue()


def gen_mlx(s, model, d, tmp):
    """Writes the released-layout bf16 source, runs mlx_lm.convert into d, checks what it wrote, dequantizes every
    quantized matrix exactly and writes an HF float32 per-expert folder of those weights (source config).
    Returns (that folder, the source folder, info)."""
    import mlx.core as mx
    mx.set_default_device(mx.cpu)
    L, E = s["layers"], s["experts"]
    info = {}
    src = os.path.join(tmp, s["name"] + "-src")
    os.makedirs(src)
    write_hf(s, model, src)
    save_tokenizer(src, s["vocab"])
    src_cfg = json.load(open(os.path.join(src, "config.json")))
    src_t, src_info, _ = read_st_np(os.path.join(src, "model.safetensors"))
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
    assert q == {"group_size": G, "bits": B, "mode": "affine"}, q  # no per-path entries: the router is 4-bit too
    info["quantization"] = q

    # ---- tensors: every Linear / Embedding quantized (incl. router and lm_head), experts stacked as switch_mlp
    t, tinfo, meta = read_st_np(os.path.join(d, "model.safetensors"))
    assert meta == {"format": "mlx"}, meta
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    assert set(idx["weight_map"]) == set(t) and set(idx["weight_map"].values()) == {"model.safetensors"}
    mods = sorted(k[: -len(".scales")] for k in t if k.endswith(".scales"))
    lin = ["model.embed_tokens", "lm_head"] + [f"model.layers.{l}.{m}" for l in range(L) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate",
        "mlp.switch_mlp.gate_proj", "mlp.switch_mlp.up_proj", "mlp.switch_mlp.down_proj")]
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
    for k in unq:  # norms (incl. q_norm / k_norm): unchanged dtype and value, no +1 shift
        assert "norm" in k and src_info[k] == tinfo[k] and np.array_equal(src_t[k], t[k]), k
        deq[k] = t[k].astype(np.float32)
    info["np_vs_mx"] = np_vs_mx
    info["unquantized"] = sorted({tinfo[k][0] for k in unq})

    # ---- MLX names -> HF per-expert names (exact re-arrangement)
    hf = {}
    for k, v in deq.items():
        if ".mlp.switch_mlp." in k:
            pre, rest = k.split(".mlp.switch_mlp.")
            assert v.shape[0] == E, (k, v.shape)
            for e in range(E):
                hf[f"{pre}.mlp.experts.{e}.{rest}"] = np.ascontiguousarray(v[e])
        else:
            hf[k] = np.ascontiguousarray(v)
    assert set(hf) == set(src_t), set(hf) ^ set(src_t)
    err = {}
    for k, v in hf.items():
        assert v.shape == src_t[k].shape, k
        if "norm" not in k:
            kind = "router" if k.endswith("mlp.gate.weight") else "experts" if ".experts." in k else \
                "embed/lm_head" if "embed" in k or "lm_head" in k else "attention"
            err[kind] = max(err.get(kind, 0.0), float(np.abs(v - src_t[k]).max() / np.abs(src_t[k]).max()))
    info["quant_rel_err"] = err
    deqd = os.path.join(tmp, s["name"] + "-dequant-hf")
    os.makedirs(deqd)
    st_save({k: torch.from_numpy(v) for k, v in hf.items()}, os.path.join(deqd, "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(deqd, "config.json"))
    return deqd, src, info


# ---------------------------------------------------------------------------------------------------------
def gen_one(s, out_root, seed, tmp, cn):
    d = os.path.join(out_root, s["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    fseed = (zlib.crc32(s["name"].encode()) + 1000003 * seed) & 0x7FFFFFFF
    model = build_model(s, fseed)
    extra = {}
    if s["layout"] == "mlx":
        refdir, srcdir, extra = gen_mlx(s, model, d, tmp)
    else:
        os.makedirs(d)
        write_hf(s, model, d)
        refdir = srcdir = d
    saved = read_saved(refdir)
    ref = load_reference(refdir)
    assert type(ref).__name__ == "OlmoeForCausalLM"
    assert ref.config._attn_implementation == "eager" and ref.config._experts_implementation == "eager"
    c = ref.config
    assert c.num_experts == s["experts"] and c.num_experts_per_tok == s["topk"] and c.norm_topk_prob is False
    assert c.clip_qkv == s.get("clip_qkv") and c.num_key_value_heads == s["kv_heads"]
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": s["rope_theta"]}, c.rope_parameters
    assert not c.tie_word_embeddings
    check_saved_equals(ref, saved, s["experts"])
    listing = st_listing(d)
    if s["layout"] == "hf":
        assert st_metadata(d) == {"format": "pt"}
        assert any(".mlp.experts.0.gate_proj.weight" in k for k in listing)
        assert not any(k.endswith(("gate_up_proj", "experts.down_proj")) for k in listing)
        # the in-memory source model, rounded to the storage dtype, equals the file
        for n, p in model.named_parameters():
            v, _ = saved_view(n, saved, s["experts"])
            assert torch.equal(v, p.detach().to(v.dtype)), n
    extra["dtypes"] = sorted({dt for dt, _ in listing.values()})
    extra["norm_dtypes"] = sorted({dt for k, (dt, _) in listing.items() if "norm" in k})

    ids, logits, min_gap, attempts = find_prompt(ref, s, fseed)
    P = s["prompt_len"]
    dec_diff = decode_check(ref, ids, P, logits, s)
    if s["clip"]:
        extra["clip_shares"] = clip_shares(ref, ids, s["clip_qkv"])
        assert all(CLIP_SHARE[0] <= v <= CLIP_SHARE[1] for v in extra["clip_shares"].values()), extra["clip_shares"]
        # transformers itself: the same weights without clip_qkv give other logits
        noclip = copy.deepcopy(ref)
        noclip.config.clip_qkv = None
        with torch.no_grad():
            extra["hf_no_clip_diff"] = (noclip(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
        assert extra["hf_no_clip_diff"] > 0.05
    if s["layout"] == "hf":
        with torch.no_grad():
            l2 = model(torch.tensor([ids]), use_cache=False).logits[0]
        if s["dtype"] == "float32":
            assert torch.equal(l2, logits), (l2 - logits).abs().max()
        else:
            extra["bf16_rounding_shift"] = (l2 - logits).abs().max().item()
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
    extra["impl"] = impl_diffs(ref, ids, logits)

    write_golden(os.path.join(d, "golden.json"), ids, P, logits.numpy().tolist(), ATOL)

    if s["layout"] == "mlx":
        ml = mlx_forward(d, ids)
        gold = logits.double().numpy()
        extra["mlx"] = dict(vs_golden=float(np.abs(ml - gold).max()),
                            greedy_same=ml[P - 1: -1].argmax(-1).tolist() == ids[P:])
        assert extra["mlx"]["vs_golden"] < MLX_CROSS_TOL, extra["mlx"]
        with torch.no_grad():  # informational: the unquantized bf16 source vs the quantized golden
            src_ref = load_reference(srcdir)
            extra["quant_shift"] = (src_ref(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    else:
        extra["mlx_info"] = mlx_info(d, cn)

    res = cn.check_dir(d, variants=True, assert_features=True)
    assert res["ok"], res
    extra["numpy"] = res
    for fn in os.listdir(d):  # safetensors creates its file 0600
        os.chmod(os.path.join(d, fn), 0o644)
    srt = torch.sort(logits, dim=-1, descending=True).values
    margins = srt[:, 0] - srt[:, 1]
    hd = s["hidden"] // s["heads"]
    return dict(
        name=s["name"], dir=d, size=dir_size(d), files=sorted(os.listdir(d)), prompt_len=P, n_ids=len(ids),
        attempts=attempts, min_greedy_margin=margins[P - 1: -1].min().item(), min_router_gap=min_gap,
        logit_absmax=logits.abs().max().item(), decode_diff=dec_diff, covers=s["covers"], extra=extra,
        shape=f"V{s['vocab']} H{s['hidden']} L{s['layers']} attn {s['heads']}q/{s['kv_heads']}kv hd{hd} "
              f"E{s['experts']} k{s['topk']} I{s['inter']} theta {s['rope_theta']} eps {s['eps']} "
              f"clip_qkv {s.get('clip_qkv')} {s['layout']} {s['dtype']}",
        listing=listing, layers=s["layers"], config=json.load(open(os.path.join(d, "config.json"))),
    )


def describe(r):
    print(f"\n#### {r['name']}\n```")
    for k in sorted(r["listing"]):
        if ".layers." in k and not k.startswith("model.layers.0."):
            continue
        if ".experts." in k and ".experts.0." not in k:
            continue
        dt, sh = r["listing"][k]
        print(f"{k:52s} {dt:5s} {sh}")
    print(f"(+ experts 1..E-1 and layers 1..{r['layers'] - 1} likewise)")
    print("```")
    print("config.json:\n```json\n" + json.dumps(r["config"], indent=2, sort_keys=True) + "\n```")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output root (default: this folder)")
    ap.add_argument("--shapes-seed", type=int, default=0,
                    help="0 = the committed set; any other value = a new random set of shapes and weights")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    ap.add_argument("--describe", action="store_true", help="print tensor listings and configs")
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

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors "
          f"{md_version('safetensors')}, numpy {np.__version__}, mlx {md_version('mlx')}, mlx-lm "
          f"{md_version('mlx-lm')}, tokenizers {md_version('tokenizers')}, accelerate {md_version('accelerate')}, "
          f"kernels {md_version('kernels')}, shapes-seed {args.shapes_seed}")
    with tempfile.TemporaryDirectory(prefix="olmoefx-") as tmp:
        results = [gen_one(s, args.out, args.shapes_seed, tmp, cn) for s in specs]
    for r in results:
        ex = r["extra"]
        print(f"\n{r['name']}: {r['size'] / 1024:.1f} KiB ({', '.join(r['files'])}), ids {r['n_ids']} "
              f"(prompt {r['prompt_len']})")
        print(f"  {r['shape']}")
        print(f"  covers: {r['covers']}")
        print(f"  saved dtypes {ex['dtypes']} (norms {ex['norm_dtypes']})")
        if "clip_shares" in ex:
            print(f"  clip_qkv clamps q {ex['clip_shares']['q']:.3f}, k {ex['clip_shares']['k']:.3f}, "
                  f"v {ex['clip_shares']['v']:.3f} of the entries (golden ids, all layers); transformers without "
                  f"clip_qkv: max |diff| {ex['hf_no_clip_diff']:.3g}")
        if "bf16_rounding_shift" in ex:
            print(f"  (info) bf16 rounding of the source weights moves the logits by {ex['bf16_rounding_shift']:.3g}")
        if "quantization" in ex:
            print(f"  mlx_lm.convert ({ex['bpw']}): quantization {json.dumps(ex['quantization'])} (no per-path "
                  f"entries); files {ex['files']}; unquantized tensors (norms) {ex['unquantized']}")
            print(f"  mx.dequantize == numpy decode (max |diff| {ex['np_vs_mx']}); max relative quantization error: "
                  + ", ".join(f"{k} {v:.3g}" for k, v in ex["quant_rel_err"].items()))
            print(f"  (info) unquantized bf16 source (transformers) vs golden: max |diff| {ex['quant_shift']:.3g}")
            print(f"  mlx-lm forward (f32) vs golden: max |diff| {ex['mlx']['vs_golden']:.3g} "
                  f"(greedy {'same' if ex['mlx']['greedy_same'] else 'DIFFERS'})")
        if "mlx_info" in ex:
            print(f"  (info) {ex['mlx_info']}")
        print(f"  min greedy margin {r['min_greedy_margin']:.4f}, min router gap {r['min_router_gap']:.4f}, "
              f"max|logit| {r['logit_absmax']:.2f}, prompt attempts {r['attempts']}")
        print(f"  decode (prefill + one token at a time) vs one pass: max |diff| {r['decode_diff']:.3g}")
        print(f"  (info) transformers' default implementations ({ex['impl']['defaults']}) vs eager golden: max |diff| "
              f"{ex['impl']['default implementations']:.3g}")
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
