#!/usr/bin/env python3
"""Generate tiny random Mixtral (model_type mixtral) checkpoints + reference logits (golden.json).

Usage:
    pip install torch transformers safetensors numpy            # transformers >= 5.0 (made with 5.23.0)
    pip install "mlx[cpu]" mlx-lm tokenizers                    # the MLX fixture (made with mlx 0.32.4, mlx-lm 0.32.2)
    python3 tests/fixtures_mixtral/generate.py                  # regenerate the committed set here
    python3 tests/fixtures_mixtral/generate.py --out /tmp/fm    # same set, elsewhere (byte-identical)
    python3 tests/fixtures_mixtral/generate.py --out /tmp/fm7 --shapes-seed 7
                                                                # a NEW random set of shapes + weights with the
                                                                # same coverage per fixture name ("not in the repo")
    python3 tests/fixtures_mixtral/generate.py --only mixtral_hf_f32,mixtral_mlx_4bit
    python3 tests/fixtures_mixtral/generate.py --describe       # also print tensor listings
    python3 tests/fixtures_mixtral/generate.py --probes         # also run the loader probes (names transformers
                                                                # accepts, mlx-lm limits); nothing is written

Every fixture folder: config.json, model.safetensors and golden.json (the MLX folder holds what mlx_lm.convert
writes: + model.safetensors.index.json, a tiny tokenizer, a model card README.md):

    {"ids": [...], "prompt_len": P, "atol": 0.002, "logits": [[...], ...]}

ids = a random prompt of P (20..30, longer than any sliding window) tokens + the reference's greedy continuation
(6 tokens); logits[i] = float32 logits at position i of ONE forward pass over all ids (use_cache=False).

Reference = the written folder reloaded with AutoModelForCausalLM.from_pretrained(dir, dtype=float32,
attn_implementation="eager", experts_implementation="eager") on CPU (bf16 weights upcast exactly). For MLX:
transformers on an HF float32 folder of the exactly dequantized MLX weights (released per-expert names).

Checks per fixture: the saved tensor names are exactly the expected layout; every reference parameter equals the
saved tensor (upcast exactly; per-expert w1/w3 concatenated, w2 stacked) and every saved tensor is used; full-pass
argmax = greedy continuation; every greedy step has a top1-top2 margin >= 0.05 and every router decision a
k-th/(k+1)-th router-logit gap >= 2e-3 (else a new prompt); the decode path (use_cache prefill of the prompt, then
one token at a time; sliding-window layers keep window-1 cached keys) agrees with the one-pass logits within 1e-4;
the released config spelling is read to bit-identical logits as the transformers-5 spelling; mlx-lm's own forward
is within 5e-4 of golden; and check_numpy.py (independent numpy float64 forward from the raw files) matches golden
within atol while each deliberately wrong variant moves the logits by far more than atol.
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
MIN_ROUTER_GAP = 2e-3  # k-th vs (k+1)-th raw router logit (same order as the softmax probabilities)
ATOL = 2e-3
DECODE_TOL = 1e-4
MLX_CROSS_TOL = 5e-4  # mlx-lm's own forward (all params cast to f32) vs golden

# The config.json keys of the released mistralai/Mixtral-8x7B-v0.1 file (transformers 4.36.0.dev0), sorted.
RELEASED_KEYS = ["architectures", "attention_dropout", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size",
                 "initializer_range", "intermediate_size", "max_position_embeddings", "model_type",
                 "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
                 "num_local_experts", "output_router_logits", "rms_norm_eps", "rope_theta", "router_aux_loss_coef",
                 "sliding_window", "tie_word_embeddings", "torch_dtype", "transformers_version", "use_cache",
                 "vocab_size"]

# ---------------------------------------------------------------------------------------------------------
# The committed set.
#   layout: hf     - what transformers 5.23 save_pretrained writes = the released layout: per-expert
#                    block_sparse_moe.experts.{e}.w1/w2/w3.weight, router block_sparse_moe.gate.weight
#           fused  - transformers-5 in-memory names (safetensors.save_file(model.state_dict())): mlp.gate.weight,
#                    mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]; accepted by
#                    from_pretrained as is (extra fixture, not written by any released tool)
#           mlx    - mlx_lm.convert(quantize=True) of an 'hf' released-spelling bf16 source
#   spelling: v5       - transformers-5 save_pretrained config (rope_parameters with rope_theta inside, head_dim)
#             released - the Mixtral-8x7B-v0.1 config.json key set (top-level rope_theta, no head_dim,
#                        sliding_window null, torch_dtype, transformers_version 4.36.0.dev0)
# head_dim None = not in config.json (hidden_size // num_attention_heads); the released spelling and mlx-lm
# (which ignores head_dim) need q width == hidden.
# ---------------------------------------------------------------------------------------------------------
BASE_SPECS = [
    dict(
        name="mixtral_hf_f32", layout="hf", dtype="float32", spelling="v5",
        covers="transformers-5 config as save_pretrained writes it (rope_parameters {rope_type default, rope_theta "
               "10000.0}, explicit head_dim, dtype); float32; save_pretrained layout = released per-expert names "
               "block_sparse_moe.experts.{e}.w1/w2/w3.weight + block_sparse_moe.gate.weight; sliding_window 6 "
               "(every layer); 6q/2kv head_dim 16 (q width 96 != hidden 40); top-2 of 6; intermediate 48",
        vocab=232, hidden=40, layers=3, heads=6, kv_heads=2, head_dim=16, experts=6, topk=2, inter=48, window=6,
        rope_theta=10000.0, eps=1e-5, prompt_len=24, gen=6,
    ),
    dict(
        name="mixtral_released_bf16", layout="hf", dtype="bfloat16", spelling="released",
        covers="released Mixtral-8x7B-v0.1 config key set (top-level rope_theta 1000000.0, no head_dim -> "
               "hidden/heads, sliding_window null, torch_dtype bfloat16, router_aux_loss_coef 0.02, "
               "transformers_version 4.36.0.dev0); bfloat16 everywhere incl. norms; released per-expert layout "
               "(= save_pretrained); 6q/2kv head_dim 8 (q width = hidden 48); top-2 of 8; intermediate 64",
        vocab=256, hidden=48, layers=3, heads=6, kv_heads=2, head_dim=None, experts=8, topk=2, inter=64,
        window=None, rope_theta=1000000.0, eps=1e-5, prompt_len=26, gen=6,
    ),
    dict(
        name="mixtral_mlx_4bit", layout="mlx", dtype="bfloat16", spelling="released",
        q=dict(q_bits=4, q_group_size=32),
        covers="mlx_lm.convert(quantize=True, q_bits=4, q_group_size=32) of a released-layout bf16 source (released "
               "key set, integer rope_theta 10000 as in Mixtral-8x22B's config): block_sparse_moe.switch_mlp."
               "{gate,up,down}_proj [E,out,in/8] U32 + BF16 scales/biases, router block_sparse_moe.gate ALSO 4-bit "
               "g32 (no per-path entries), embeddings / q,k,v,o / lm_head 4-bit, norms BF16; 4q/2kv head_dim 16 "
               "(q width = hidden 64: mlx-lm ignores head_dim); top-2 of 6; intermediate 128",
        vocab=240, hidden=64, layers=3, heads=4, kv_heads=2, head_dim=None, experts=6, topk=2, inter=128,
        window=None, rope_theta=10000, eps=1e-5, prompt_len=25, gen=6,
    ),
    dict(
        name="mixtral_fused_f32", layout="fused", dtype="float32", spelling="v5",
        covers="EXTRA: transformers-5 in-memory names written with safetensors.save_file(model.state_dict()) "
               "(mlp.gate.weight, mlp.experts.gate_up_proj [E,2I,H] gate rows first, mlp.experts.down_proj [E,H,I], "
               "no .weight on experts), which from_pretrained accepts as is; transformers-5 config, rope_theta "
               "500000.0, rms_norm_eps 1e-6; 4q/1kv head_dim 12 (q width 48 != hidden 32); top-3 of 5; "
               "intermediate 40; no window",
        vocab=200, hidden=32, layers=2, heads=4, kv_heads=1, head_dim=12, experts=5, topk=3, inter=40,
        window=None, rope_theta=500000.0, eps=1e-6, prompt_len=22, gen=6,
    ),
]


def head_dim_of(s):
    return s["head_dim"] or s["hidden"] // s["heads"]


def n_bytes(s):
    """Bytes of weights + golden.json (to keep randomized fixtures at ~800 KB or less)."""
    H, V, I, E, L = s["hidden"], s["vocab"], s["inter"], s["experts"], s["layers"]
    qd, kd = s["heads"] * head_dim_of(s), s["kv_heads"] * head_dim_of(s)
    per_layer_mat = 2 * H * qd + 2 * H * kd + E * 3 * H * I + E * H
    n_mat = L * per_layer_mat + 2 * V * H
    n_vec = (2 * L + 1) * H
    if s["layout"] == "mlx":
        b = n_mat * (s["q"]["q_bits"] / 8 + 4 / s["q"]["q_group_size"]) + 2 * n_vec + 12000  # + tokenizer, index
    else:
        b = (n_mat + n_vec) * (4 if s["dtype"] == "float32" else 2)
    return b + (s["prompt_len"] + s["gen"]) * V * 11


def randomize(spec, rng):
    for _ in range(2000):
        s = randomize_once(spec, rng)
        if n_bytes(s) <= 800_000:
            return s
    raise RuntimeError("no small enough random shapes")


def randomize_once(spec, rng):
    s = copy.deepcopy(spec)
    name = s["name"]
    s["vocab"] = rng.randrange(200, 261)
    s["experts"] = rng.randrange(4, 9)
    s["layers"] = rng.choice([2, 3])
    s["prompt_len"] = rng.randrange(20, 31)
    s["eps"] = rng.choice([1e-5, 1e-6])
    if name == "mixtral_fused_f32":
        s["experts"] = rng.randrange(4, 7)
        s["topk"] = 3
    if s["spelling"] == "v5":  # explicit head_dim, q width != hidden
        s["hidden"] = rng.choice([32, 40, 48])
        while True:
            s["kv_heads"] = rng.choice([1, 2])
            s["heads"] = s["kv_heads"] * rng.choice([2, 3, 4])
            s["head_dim"] = rng.choice([8, 12, 16])
            if s["heads"] * s["head_dim"] != s["hidden"]:
                break
        s["inter"] = rng.choice([x for x in range(24, 72, 8) if x != s["hidden"]])
        s["rope_theta"] = rng.choice([10000.0, 100000.0, 500000.0])
        if name == "mixtral_hf_f32":
            s["window"] = rng.randrange(3, 8)
    else:  # released spelling: no head_dim key, q width == hidden, GQA
        if s["layout"] == "mlx":
            s["hidden"] = 64
            s["inter"] = rng.choice([128, 192])
            s["rope_theta"] = rng.choice([10000, 1000000])
            s["q"] = dict(q_bits=4, q_group_size=32)
        else:
            s["hidden"] = rng.choice([48, 64])
            s["inter"] = rng.choice([x for x in range(32, 104, 16) if x != s["hidden"]])
            s["rope_theta"] = 1000000.0
        s["heads"] = rng.choice([h for h in (4, 6, 8) if s["hidden"] % h == 0 and s["hidden"] // h in (8, 16)])
        s["kv_heads"] = rng.choice([k for k in (1, 2) if s["heads"] % k == 0 and k < s["heads"]])
        s["head_dim"] = None
    s["covers"] = f"[randomized shapes, shapes-seed] {name}: " + spec["covers"].split(";")[0]
    return s


# ---------------------------------------------------------------------------------------------------------
# HF model construction
# ---------------------------------------------------------------------------------------------------------
def v5_kwargs(s):
    return dict(
        vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
        num_local_experts=s["experts"], num_experts_per_tok=s["topk"], intermediate_size=s["inter"],
        sliding_window=s["window"], rms_norm_eps=s["eps"],
        rope_parameters={"rope_type": "default", "rope_theta": float(s["rope_theta"])},
        tie_word_embeddings=False,
    )


def build_model(s, fseed):
    torch.manual_seed(fseed)
    cfg = AutoConfig.for_model("mixtral", **v5_kwargs(s))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", experts_implementation="eager")
    model = model.float().eval()
    # Large-ish random values so that the router renormalization, the gate/up roles, the window, RoPE and the
    # norm weights all change the logits (asserted by check_numpy.py's wrong variants).
    g = torch.Generator().manual_seed(fseed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif n.endswith("mlp.gate.weight"):  # router: spread so that top-k is robust and renorm matters
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "experts" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in n:
                p.copy_(1.0 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.25 * torch.randn(p.shape, generator=g))
    rot = model.model.rotary_emb
    d = head_dim_of(s)
    want = 1.0 / (float(s["rope_theta"]) ** (np.arange(0, d, 2, dtype=np.float64) / d))
    assert rot.inv_freq.numel() == d // 2 and np.abs(rot.inv_freq.double().numpy() - want).max() < 1e-6
    assert rot.attention_scaling == 1.0
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
    """config.json in the released mistralai/Mixtral-8x7B-v0.1 spelling (its key set; values other than the
    shapes, rope_theta and eps copied from the released file)."""
    c = json.loads(model.config.to_json_string())
    rp = c.pop("rope_parameters")
    assert rp == {"rope_type": "default", "rope_theta": float(s["rope_theta"])}, rp
    assert c["head_dim"] is None and c["sliding_window"] is None
    c["rope_theta"] = s["rope_theta"]  # int or float, as given in the spec
    c["torch_dtype"] = "bfloat16"
    c["transformers_version"] = "4.36.0.dev0"
    c["max_position_embeddings"] = 32768
    c["router_aux_loss_coef"] = 0.02
    c["bos_token_id"], c["eos_token_id"] = 1, 2
    c["architectures"] = ["MixtralForCausalLM"]
    out = {k: c[k] for k in RELEASED_KEYS}
    return out


def expected_names(s):
    """The tensor names of each layout (built independently of what transformers writes)."""
    L, E = s["layers"], s["experts"]
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for l in range(L):
        p = f"model.layers.{l}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {p + f"self_attn.{m}_proj.weight" for m in "qkvo"}
        if s["layout"] == "fused":
            names |= {p + "mlp.gate.weight", p + "mlp.experts.gate_up_proj", p + "mlp.experts.down_proj"}
        else:
            names.add(p + "block_sparse_moe.gate.weight")
            names |= {p + f"block_sparse_moe.experts.{e}.w{i}.weight" for e in range(E) for i in (1, 2, 3)}
    return names


def write_folder(s, model, d, spelling=None):
    """hf: save_pretrained of a float32 / bfloat16 copy + the config spelling of the fixture; fused: the in-memory
    state dict as is + the transformers-5 config."""
    spelling = spelling or s["spelling"]
    if s["layout"] == "fused":
        st_save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(d, "model.safetensors"))
        c = json.loads(model.config.to_json_string())
        c.update(architectures=["MixtralForCausalLM"], dtype="float32")  # as save_pretrained would add them
        write_json(os.path.join(d, "config.json"), c)
    else:
        m = copy.deepcopy(model).to(getattr(torch, s["dtype"]))  # (.to() would also round the inv_freq buffer)
        m.save_pretrained(d)
        del m
        gc = os.path.join(d, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
        if spelling == "released":
            write_json(os.path.join(d, "config.json"), released_config(model, s))
        else:
            with open(os.path.join(d, "config.json")) as f:
                write_json(os.path.join(d, "config.json"), json.load(f))


# ---------------------------------------------------------------------------------------------------------
# Reading back / reference
# ---------------------------------------------------------------------------------------------------------
def load_reference(d, **kw):
    return AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager", **kw)


def read_saved(d):
    out = {}
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def saved_value(n, saved, E):
    """Value of in-memory parameter n (MixtralForCausalLM naming) from saved tensors in either layout; returns
    (tensor, keys used)."""
    if n in saved:
        return saved[n], {n}
    alt = n.replace(".mlp.", ".block_sparse_moe.")
    if alt in saved:
        return saved[alt], {alt}
    if n.endswith("mlp.experts.gate_up_proj"):
        b = alt[: -len("gate_up_proj")]
        keys = [f"{b}{e}.w{i}.weight" for e in range(E) for i in (1, 3)]
        return torch.stack([torch.cat([saved[f"{b}{e}.w1.weight"], saved[f"{b}{e}.w3.weight"]], 0)
                            for e in range(E)]), set(keys)
    if n.endswith("mlp.experts.down_proj"):
        b = alt[: -len("down_proj")]
        keys = [f"{b}{e}.w2.weight" for e in range(E)]
        return torch.stack([saved[k] for k in keys]), set(keys)
    raise KeyError(n)


def check_saved_equals(ref, saved, E, src=None):
    """Every reference parameter equals the saved tensor (upcast exactly); every saved tensor is used; optionally
    the in-memory source model rounded to the saved dtype equals the file."""
    used = set()
    srcp = dict(src.named_parameters()) if src is not None else None
    for n, p in ref.named_parameters():
        v, keys = saved_value(n, saved, E)
        used |= keys
        assert v.shape == p.shape and torch.equal(v.float(), p.detach()), n
        if srcp is not None:
            assert torch.equal(v, srcp[n].detach().to(v.dtype)), n
    assert used == set(saved), set(saved) ^ used


def find_prompt(ref, s, fseed):
    P, G, V, K = s["prompt_len"], s["gen"], s["vocab"], s["topk"]
    if s["window"]:
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
        assert len(rl) == s["layers"] and rl[0].shape == (P + G, s["experts"]), (len(rl), rl[0].shape)
        srt = [torch.sort(r.float(), dim=-1, descending=True).values for r in rl]
        min_gap = min((x[:, K - 1] - x[:, K]).min().item() for x in srt)
        if min_gap < MIN_ROUTER_GAP:
            continue
        # renormalization matters: the chosen experts' softmax mass (over all E) per token
        mass = [torch.softmax(r.float(), -1).topk(K, -1).values.sum(-1) for r in rl]
        mass = torch.cat(mass)
        return ids, logits, min_gap, attempt + 1, (mass.min().item(), mass.max().item())
    raise RuntimeError(f"{s['name']}: no prompt with robust greedy/routing margins found")


def decode_check(ref, ids, P, logits, s):
    """use_cache prefill of the prompt, then one token at a time; sliding-window layers keep window-1 keys."""
    with torch.no_grad():
        out = ref(torch.tensor([ids[:P]]), use_cache=True)
        pkv = out.past_key_values
        kinds = [type(layer).__name__ for layer in pkv.layers]
        want = "DynamicSlidingWindowLayer" if s["window"] else "DynamicLayer"
        assert kinds == [want] * s["layers"], kinds
        rows = [out.logits[0]]
        for t in range(P, len(ids)):
            o = ref(torch.tensor([[ids[t]]]), past_key_values=pkv, use_cache=True)
            pkv = o.past_key_values
            rows.append(o.logits[0])
        lens = [layer.keys.shape[-2] for layer in pkv.layers]
        assert lens == [s["window"] - 1 if s["window"] else len(ids)] * s["layers"], lens
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


def md_version(pkg):
    import importlib.metadata as md
    try:
        return md.version(pkg)
    except Exception:
        return "-"


def load_check_numpy():
    spec = importlib.util.spec_from_file_location("check_numpy_mixtral", os.path.join(HERE, "check_numpy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def impl_diffs(ref, ids, logits):
    """Informational: transformers' default implementations (sdpa attention, grouped_mm experts) vs eager."""
    out = {}
    for attn, exp in (("sdpa", "eager"), ("eager", "grouped_mm")):
        m = AutoModelForCausalLM.from_config(ref.config, attn_implementation=attn,
                                             experts_implementation=exp).float().eval()
        m.load_state_dict(ref.state_dict())
        with torch.no_grad():
            out[f"{attn}/{exp}"] = (m(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()
    fresh = AutoConfig.for_model("mixtral", **{k: v for k, v in ref.config.to_dict().items()
                                              if k in ("vocab_size", "hidden_size", "num_hidden_layers")})
    dflt = AutoModelForCausalLM.from_config(fresh)  # nothing requested: transformers' own choice on this machine
    out["defaults"] = f"{dflt.config._attn_implementation}/{dflt.config._experts_implementation}"
    return out


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


def gen_mlx(s, model, d, tmp):
    """Writes a released-layout bf16 source, runs mlx_lm.convert into d, checks what it wrote, dequantizes every
    quantized matrix exactly and writes an HF float32 folder of those weights (released per-expert names, the
    source config). Returns (that folder, the source folder, info)."""
    import mlx.core as mx
    mx.set_default_device(mx.cpu)
    L, E = s["layers"], s["experts"]
    info = {}
    src = os.path.join(tmp, s["name"] + "-src")
    os.makedirs(src)
    write_folder(dict(s, layout="hf"), model, src, spelling="released")
    save_tokenizer(src, s["vocab"])
    src_cfg = json.load(open(os.path.join(src, "config.json")))
    src_t, src_info, _ = read_st_np(os.path.join(src, "model.safetensors"))
    if os.path.isdir(d):
        shutil.rmtree(d)
    log = mlx_convert_quiet(hf_path=src, mlx_path=d, quantize=True, **s["q"])
    info["bpw"] = next((ln.split("with ")[1].rstrip(".") for ln in log.splitlines() if "bits per weight" in ln), "?")

    # ---- config.json as written: the source's keys unchanged + quantization (= quantization_config)
    cfg = json.load(open(os.path.join(d, "config.json")))
    q = cfg["quantization"]
    assert cfg["quantization_config"] == q
    assert q == {"group_size": s["q"]["q_group_size"], "bits": s["q"]["q_bits"], "mode": "affine"}, q  # no per-path
    assert {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")} == src_cfg, \
        "convert changed other config keys"
    info["quantization"] = q

    # ---- tensors: every matrix quantized (incl. the router), experts stacked under switch_mlp
    t, tinfo, meta = read_st_np(os.path.join(d, "model.safetensors"))
    assert meta == {"format": "mlx"}, meta
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    assert set(idx["weight_map"]) == set(t) and set(idx["weight_map"].values()) == {"model.safetensors"}
    mods = sorted(k[: -len(".scales")] for k in t if k.endswith(".scales"))
    lin = ["model.embed_tokens", "lm_head"] + [f"model.layers.{l}.{m}" for l in range(L) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "block_sparse_moe.gate",
        "block_sparse_moe.switch_mlp.gate_proj", "block_sparse_moe.switch_mlp.up_proj",
        "block_sparse_moe.switch_mlp.down_proj")]
    assert mods == sorted(lin), set(mods) ^ set(lin)
    G, B = q["group_size"], q["bits"]
    deq, np_vs_mx = {}, 0.0
    for p in mods:
        wq, sc, bi = t[p + ".weight"], t[p + ".scales"], t[p + ".biases"]
        assert tinfo[p + ".weight"][0] == "U32" and tinfo[p + ".scales"][0] == tinfo[p + ".biases"][0] == "BF16"
        assert wq.shape[-1] * 32 // B == sc.shape[-1] * G and wq.shape[:-1] == sc.shape[:-1], (p, wq.shape, sc.shape)
        ref = np.array(mx.dequantize(mx.array(wq), mx.array(sc), mx.array(bi), group_size=G, bits=B,
                                     mode="affine", dtype=mx.float32))
        f32 = np.float32
        w = np.repeat(sc.astype(f32), G, -1) * unpack_bits(wq, B).astype(f32) + np.repeat(bi.astype(f32), G, -1)
        dd = float(np.abs(ref - w).max())
        np_vs_mx = max(np_vs_mx, dd)
        assert dd == 0.0, (p, dd)
        deq[p + ".weight"] = w
    qkeys = {p + x for p in mods for x in (".weight", ".scales", ".biases")}
    for k, v in t.items():
        if k not in qkeys:  # the norms: unchanged BF16
            assert "norm" in k and src_info[k] == tinfo[k] == ("BF16", [s["hidden"]]) and np.array_equal(src_t[k], v), k
            deq[k] = v.astype(np.float32)
    info["np_vs_mx"] = np_vs_mx
    info["n_unquantized"] = len(set(t) - qkeys)

    # ---- back to the HF released per-expert names (switch_mlp gate = w1, up = w3, down = w2), float32
    hf = {}
    for k, v in deq.items():
        if ".switch_mlp." in k:
            pre, rest = k.split(".switch_mlp.")
            wn = {"gate_proj.weight": "w1", "up_proj.weight": "w3", "down_proj.weight": "w2"}[rest]
            assert v.shape[0] == E
            for e in range(E):
                hf[f"{pre}.experts.{e}.{wn}.weight"] = np.ascontiguousarray(v[e])
        else:
            hf[k] = v
    assert set(hf) == set(src_t), set(hf) ^ set(src_t)
    err = {}
    for k, v in hf.items():
        if "norm" in k:
            continue
        kind = "experts" if ".experts." in k else ("router" if k.endswith("block_sparse_moe.gate.weight") else "other")
        rel = float(np.abs(v - src_t[k]).max() / np.abs(src_t[k]).max())
        err[kind] = max(err.get(kind, 0.0), rel)
    info["quant_rel_err"] = err
    deqd = os.path.join(tmp, s["name"] + "-dequant-hf")
    os.makedirs(deqd)
    st_save({k: torch.from_numpy(v) for k, v in hf.items()}, os.path.join(deqd, "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(deqd, "config.json"))
    return deqd, src, info


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


# ---------------------------------------------------------------------------------------------------------
def gen_one(s, out_root, seed, tmp, cn):
    d = os.path.join(out_root, s["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    fseed = (zlib.crc32(s["name"].encode()) + 1000003 * seed) & 0x7FFFFFFF
    model = build_model(s, fseed)
    extra = {}
    if s["layout"] == "mlx":
        refdir, srcdir, extra = gen_mlx(s, model, d, tmp)
        assert set(read_saved(srcdir)) == expected_names(dict(s, layout="hf"))
    else:
        write_folder(s, model, d)
        refdir = d
        assert set(st_listing(d)) == expected_names(s), set(st_listing(d)) ^ expected_names(s)
    saved = read_saved(refdir)
    ref = load_reference(refdir).eval()
    assert type(ref).__name__ == "MixtralForCausalLM"
    assert ref.config._attn_implementation == "eager" and ref.config._experts_implementation == "eager"
    c = ref.config
    assert c.num_experts_per_tok == s["topk"] and c.num_local_experts == s["experts"]
    assert c.sliding_window == s["window"] and c.num_key_value_heads == s["kv_heads"]
    assert c.head_dim == s["head_dim"] and ref.model.layers[0].self_attn.head_dim == head_dim_of(s)
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": s["rope_theta"]}, c.rope_parameters
    assert torch.equal(ref.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    if s["layout"] == "mlx":
        check_saved_equals(ref, saved, s["experts"])
    else:
        check_saved_equals(ref, saved, s["experts"], src=model)
    lst = st_listing(d)
    extra["dtypes"] = sorted({dt for dt, _ in lst.values()})

    ids, logits, min_gap, attempts, mass = find_prompt(ref, s, fseed)
    P = s["prompt_len"]
    dec_diff = decode_check(ref, ids, P, logits, s)

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
        ref2 = load_reference(alt).eval()
        with torch.no_grad():
            l3 = ref2(torch.tensor([ids]), use_cache=False).logits[0]
        assert torch.equal(l3, logits), (l3 - logits).abs().max()
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
        srcm = load_reference(srcdir).eval()
        with torch.no_grad():
            extra["quant_shift"] = (srcm(torch.tensor([ids]), use_cache=False).logits[0] - logits).abs().max().item()

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
        attempts=attempts, min_greedy_margin=margins[P - 1: -1].min().item(), min_router_gap=min_gap, mass=mass,
        logit_absmax=logits.abs().max().item(), decode_diff=dec_diff, covers=s["covers"], extra=extra,
        layers=s["layers"],
        shape=f"V{s['vocab']} H{s['hidden']} L{s['layers']} attn {s['heads']}q/{s['kv_heads']}kv "
              f"hd{head_dim_of(s)}{'' if s['head_dim'] else ' (derived)'} window {s['window']} E{s['experts']} "
              f"k{s['topk']} I{s['inter']} theta {s['rope_theta']} eps {s['eps']} {s['layout']} {s['dtype']}",
        listing=lst,
    )


# ---------------------------------------------------------------------------------------------------------
# Probes (--probes): what transformers' loader accepts, what mlx-lm cannot do. Nothing is written to --out.
# ---------------------------------------------------------------------------------------------------------
def probes(tmp):
    s = dict(BASE_SPECS[0], name="probe", layers=2, experts=4, vocab=64)
    model = build_model(s, 1234)
    ids = torch.arange(3, 3 + 20) % s["vocab"]
    with torch.no_grad():
        base = model(ids[None], use_cache=False).logits[0]
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    I = s["inter"]

    def per_expert(prefix):
        out = {}
        for k, v in sd.items():
            if k.endswith("mlp.experts.gate_up_proj"):
                b = k[: -len("gate_up_proj")].replace(".mlp.", prefix)
                for e in range(v.shape[0]):
                    out[f"{b}{e}.w1.weight"], out[f"{b}{e}.w3.weight"] = v[e, :I].clone(), v[e, I:].clone()
            elif k.endswith("mlp.experts.down_proj"):
                b = k[: -len("down_proj")].replace(".mlp.", prefix)
                for e in range(v.shape[0]):
                    out[f"{b}{e}.w2.weight"] = v[e].clone()
            else:
                out[k.replace(".mlp.", prefix)] = v
        return out

    variants = {
        "released: block_sparse_moe.experts.{e}.w1/w2/w3.weight + block_sparse_moe.gate.weight": per_expert(".block_sparse_moe."),
        "in-memory: mlp.experts.gate_up_proj / down_proj + mlp.gate.weight": sd,
        "mixed: block_sparse_moe.experts.gate_up_proj / down_proj + block_sparse_moe.gate.weight":
            {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in sd.items()},
        "mixed: mlp.experts.{e}.w1/w2/w3.weight + mlp.gate.weight": per_expert(".mlp."),
        "qwen2_moe names: mlp.experts.{e}.gate_proj/up_proj/down_proj.weight":
            {k.replace(".w1.", ".gate_proj.").replace(".w3.", ".up_proj.").replace(".w2.", ".down_proj."): v
             for k, v in per_expert(".mlp.").items()},
    }
    print("\nprobe: names transformers.from_pretrained accepts for MixtralForCausalLM (logits vs the source model):")
    for i, (what, t) in enumerate(variants.items()):
        dd = os.path.join(tmp, f"probe{i}")
        os.makedirs(dd)
        write_json(os.path.join(dd, "config.json"), json.loads(model.config.to_json_string()))
        st_save(t, os.path.join(dd, "model.safetensors"))
        try:
            m, li = load_reference(dd, output_loading_info=True)
            m.eval()
            with torch.no_grad():
                diff = (m(ids[None], use_cache=False).logits[0] - base).abs().max().item()
            miss = li.get("missing_keys") or []
            unexp = li.get("unexpected_keys") or []
            print(f"  {what}: max |diff| {diff:.3g}; missing {len(miss)}, unexpected {len(unexp)}"
                  f"{' e.g. ' + sorted(miss)[0] if miss else ''}")
        except Exception as ex:
            print(f"  {what}: {type(ex).__name__}: {str(ex).splitlines()[0][:120]}")
    # config defaults when keys are missing
    dd = os.path.join(tmp, "probe_cfg")
    os.makedirs(dd)
    write_json(os.path.join(dd, "config.json"), {"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4})
    c = AutoConfig.from_pretrained(dd)
    print(f"\nprobe: minimal config {{hidden 64, heads 4}} -> num_key_value_heads {c.num_key_value_heads}, head_dim "
          f"{c.head_dim}, num_local_experts {c.num_local_experts}, num_experts_per_tok {c.num_experts_per_tok}, "
          f"rope_parameters {c.rope_parameters}, sliding_window {c.sliding_window}, rms_norm_eps {c.rms_norm_eps}, "
          f"tie_word_embeddings {c.tie_word_embeddings}, max_position_embeddings {c.max_position_embeddings}")
    write_json(os.path.join(dd, "config.json"), {"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4,
                                                 "num_key_value_heads": None})
    try:
        print(f"  with num_key_value_heads null -> {AutoConfig.from_pretrained(dd).num_key_value_heads}")
    except Exception as ex:
        print(f"  with num_key_value_heads null -> {type(ex).__name__}: {' '.join(str(ex).split())[:140]}")
    # mlx-lm
    try:
        from mlx_lm.models.mixtral import ModelArgs
    except Exception as ex:  # pragma: no cover
        print(f"probe: mlx-lm not available ({type(ex).__name__})")
        return
    v5 = json.loads(model.config.to_json_string())
    a = ModelArgs.from_dict(v5)
    print(f"\nprobe: mlx-lm ModelArgs.from_dict(transformers-5 config with rope_parameters.rope_theta "
          f"{v5['rope_parameters']['rope_theta']}, head_dim {v5['head_dim']}, sliding_window {v5['sliding_window']}) "
          f"-> rope_theta {a.rope_theta} (its default), fields head_dim/sliding_window present: "
          f"{hasattr(a, 'head_dim')}/{hasattr(a, 'sliding_window')}")
    src = os.path.join(tmp, "probe_mlx_src")
    os.makedirs(src)
    write_folder(dict(s, layout="hf", dtype="bfloat16"), model, src, spelling="v5")
    save_tokenizer(src, s["vocab"])
    try:
        mlx_convert_quiet(hf_path=src, mlx_path=os.path.join(tmp, "probe_mlx"), quantize=True, q_group_size=32,
                          q_bits=4)
        print("probe: mlx_lm.convert with q width != hidden: worked")
    except Exception as ex:
        print(f"probe: mlx_lm.convert with q width {s['heads'] * s['head_dim']} != hidden {s['hidden']}: "
              f"{type(ex).__name__}: {str(ex).splitlines()[0][:160]}")


# ---------------------------------------------------------------------------------------------------------
def describe(r):
    print(f"\n#### {r['name']}\n```")
    for k in sorted(r["listing"]):
        if ".layers." in k and not k.startswith("model.layers.0."):
            continue
        parts = k.split(".")
        if "experts" in parts and parts[parts.index("experts") + 1].isdigit() and parts[parts.index("experts") + 1] != "0":
            continue
        dt, sh = r["listing"][k]
        print(f"{k:60s} {dt:5s} {sh}")
    if any(".experts.1." in k for k in r["listing"]):
        print("(+ experts 1..E-1 likewise)")
    if r["layers"] > 1:
        print(f"(+ layers 1..{r['layers'] - 1} likewise)")
    print("```")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output root (default: this folder)")
    ap.add_argument("--shapes-seed", type=int, default=0,
                    help="0 = the committed set; any other value = a new random set of shapes and weights")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    ap.add_argument("--describe", action="store_true", help="print tensor listings")
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
          f"{md_version('mlx-lm')}, tokenizers {md_version('tokenizers')}, shapes-seed {args.shapes_seed}")
    with tempfile.TemporaryDirectory(prefix="mixtralfx-") as tmp:
        results = [gen_one(s, args.out, args.shapes_seed, tmp, cn) for s in specs]
        if args.probes:
            probes(tmp)
    for r in results:
        ex = r["extra"]
        print(f"\n{r['name']}: {r['size'] / 1024:.1f} KiB ({', '.join(r['files'])}), ids {r['n_ids']} "
              f"(prompt {r['prompt_len']})")
        print(f"  {r['shape']}")
        print(f"  covers: {r['covers']}")
        print(f"  saved dtypes: {ex['dtypes']}")
        if "quantization" in ex:
            print(f"  mlx_lm.convert ({ex['bpw']}): quantization {json.dumps(ex['quantization'])} (= "
                  f"quantization_config); {ex['n_unquantized']} unquantized tensors (norms); mx.dequantize == numpy "
                  f"decode (max |diff| {ex['np_vs_mx']}); max relative quantization error: " +
                  ", ".join(f"{k} {v:.3g}" for k, v in ex["quant_rel_err"].items()))
            print(f"  (info) unquantized bf16 source (transformers) vs golden: max |diff| {ex['quant_shift']:.3g}")
            print(f"  mlx-lm forward (f32) vs golden: max |diff| {ex['mlx_vs_golden']:.3g} "
                  f"(greedy {'same' if ex['mlx_greedy_same'] else 'DIFFERS'})")
        if "released_vs_v5" in ex:
            print("  released spelling vs transformers-5 spelling of the same weights: bit-identical logits")
        if r["extra"]["source_diff"] and "quantization" not in ex:
            print(f"  (info) bf16 rounding of the source weights moves the logits by {ex['source_diff']:.3g}")
        print(f"  min greedy margin {r['min_greedy_margin']:.4f}, min router gap {r['min_router_gap']:.4f}, "
              f"chosen experts' softmax mass {r['mass'][0]:.3f}..{r['mass'][1]:.3f}, max|logit| "
              f"{r['logit_absmax']:.2f}, prompt attempts {r['attempts']}")
        print(f"  decode (prefill + one token at a time) vs one pass: max |diff| {r['decode_diff']:.3g}")
        print(f"  (info) defaults {ex['impl']['defaults']}; vs eager/eager: " +
              ", ".join(f"{k} {v:.3g}" for k, v in ex["impl"].items() if k != "defaults"))
        npres = ex["numpy"]
        print(f"  check_numpy (f64) vs golden: max |diff| {npres['max_diff']:.3g}; f32 noise floor "
              f"{npres['f32_floor']:.3g}")
        print("  wrong variants (max |diff| vs golden): " +
              ", ".join(f"{k} {v:.3g}" for k, v in npres["variants"].items()))
        print("  equivalent: " + ", ".join(f"{k} {v:.2g}" for k, v in npres["equivalent"].items()))
    if args.describe:
        for r in results:
            describe(r)
    total = sum(r["size"] for r in results)
    print(f"\ntotal {total / 1024:.1f} KiB in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
