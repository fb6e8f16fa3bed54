#!/usr/bin/env python3
"""Independent, numpy-only forward pass of Mixtral (model_type mixtral), read straight from the fixture files and
compared with every golden.json. It is an executable spec of docs/families/mixtral.md (no torch / transformers /
mlx import):

  * config.json: transformers-5 spelling (`rope_parameters` {rope_type default, rope_theta}) or the released
    spelling (top-level `rope_theta`, integer or float; `rope_scaling` null or absent); `head_dim` absent or null
    -> hidden_size // num_attention_heads; `num_key_value_heads` absent -> 8 (the MixtralConfig field default,
    NOT num_attention_heads), null -> num_attention_heads; `num_local_experts` (alias `num_experts`);
    `num_experts_per_tok` (default 2); `sliding_window` null / absent = full causal attention, an integer = every
    layer sees keys j with i-W < j <= i; `rms_norm_eps` (1e-5); `tie_word_embeddings` (false).
  * tensors (safetensors, F32 / BF16 / F16 / U32): the released per-expert layout
    `model.layers.L.block_sparse_moe.experts.E.w1.weight` [I, H] (gate), `w3.weight` [I, H] (up), `w2.weight`
    [H, I] (down), router `block_sparse_moe.gate.weight` [E, H] (what transformers 5.23 save_pretrained writes);
    the in-memory transformers-5 layout `model.layers.L.mlp.experts.gate_up_proj` [E, 2I, H] (rows 0..I-1 = gate =
    w1, rows I..2I-1 = up = w3; no `.weight`), `mlp.experts.down_proj` [E, H, I], router `mlp.gate.weight`; any mix
    of the `block_sparse_moe.` / `mlp.` prefixes (transformers renames `.block_sparse_moe.` -> `.mlp.` first);
    MLX (mlx-lm `convert`) folders `block_sparse_moe.switch_mlp.{gate,up,down}_proj.{weight,scales,biases}`
    [E, out, in*bits/32] U32 with config.json `quantization` {group_size, bits, mode, "<module path>": {...}}
    (a per-path entry overrides the top level; an entry without `mode` is affine): w = scales * q + biases per
    group of `group_size` inputs, q = `bits`-bit fields of the little-endian U32 words, lowest bits first,
    dequantized in float32 like the golden.
  * math: x = embed[ids]; per layer x += Attn(RMSNorm(x)), x += MoE(RMSNorm(x)); logits = RMSNorm(x) @ lm_head.T.
    RMSNorm y = x / sqrt(mean(x^2) + eps) * w (plain weight); q/k/v/o without bias, no q/k norm; RoPE default
    (inv_freq = theta^(-2i/d), half-split pairs (i, i + d/2), cos/sin unscaled) on q and k; GQA query head h ->
    kv head h // (nH/nKV); scores * d^-0.5, causal (+ window) mask, softmax; router logits = x @ Wg.T (no bias),
    p = softmax over ALL experts, top-k of p, weights = top-k p / their sum; expert e: down(silu(w1 x) * (w3 x));
    y = sum_k weight_k * expert_k(x).

    python3 tests/fixtures_mixtral/check_numpy.py [--no-variants] [DIR ...]   # default: every fixture here

Besides golden, each folder is checked against deliberately wrong variants of the forward (no renormalization,
weights paired with the wrong expert, k +- 1, gate/up swapped or interleaved, transposed down_proj, interleaved
RoPE, wrong rope_theta, GQA by modulo, 1 + w norms, window +- 1, ...): each must move the logits by > FEATURE_MIN
(asserted for the features each fixture is meant to exercise), so a loader that gets one of them wrong cannot pass
atol. EQUIVALENT variants (mlx-lm's / Mistral's "top-k of the raw logits, softmax over the k") must stay within
1e-9 of the exact forward. Also printed: the f32 noise floor (the same forward in float32 vs float64).
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

FEATURE_MIN = 0.05  # 25 x atol
ASSERTED = ["no_renorm", "weights_by_expert_index", "k_plus_1", "k_minus_1", "swap_gate_up",
            "interleaved_gate_up", "transposed_down", "interleaved_rope", "rope_theta_wrong", "gqa_modulo",
            "norm_1_plus_w", "window_plus_1", "window_minus_1", "no_window"]
EQUIVALENT = ["topk_logits_then_softmax"]  # must equal the exact forward (mlx-lm / mistral-inference formulation)


# ------------------------------------------------------------------------------------------------ files
def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out, dtypes = {}, {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        raw = data[a:b]
        dt = info["dtype"]
        if dt == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "U32":
            arr = np.frombuffer(raw, dtype="<u4")
        else:
            raise ValueError(dt)
        out[name] = arr.reshape(info["shape"]).copy()
        dtypes[name] = dt
    return out, dtypes


def load(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    w, dts = {}, {}
    for fn in files:
        t, dt = read_safetensors(os.path.join(d, fn))
        w.update(t)
        dts.update(dt)
    return json.load(open(os.path.join(d, "config.json"))), w, dts


def unpack_bits(wq, bits):
    """U32 words [..., n] -> [..., n * 32 / bits] unsigned fields, lowest bits of the little-endian word first."""
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")
    b = bitstream.reshape(*bitstream.shape[:-1], bitstream.shape[-1] // bits, bits).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1)


def mlx_dequantize(cfg, w):
    """MLX folders: every quantized `<path>.weight` (+ `.scales`, `.biases`) -> float32 `<path>.weight`."""
    q = cfg.get("quantization")
    if not q:
        return w, {}
    out, modes = dict(w), {}
    for p in sorted(k[: -len(".scales")] for k in w if k.endswith(".scales")):
        par = q[p] if isinstance(q.get(p), dict) else q
        G, B, mode = par["group_size"], par["bits"], par.get("mode", "affine")
        if mode != "affine":
            raise ValueError(f"{p}: quantization mode {mode} (only affine is expected for mixtral)")
        wq, sc, bi = out.pop(p + ".weight"), out.pop(p + ".scales"), out.pop(p + ".biases")
        assert wq.dtype == np.uint32 and wq.shape[:-1] == sc.shape[:-1] == bi.shape[:-1], (p, wq.shape, sc.shape)
        assert wq.shape[-1] * 32 // B == sc.shape[-1] * G, (p, wq.shape, sc.shape, B, G)
        f32 = np.float32
        out[p + ".weight"] = (np.repeat(sc.astype(f32), G, axis=-1) * unpack_bits(wq, B).astype(f32)
                              + np.repeat(bi.astype(f32), G, axis=-1))
        modes[p] = (mode, B, G)
    return out, modes


def parse_config(cfg):
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", 8)  # MixtralConfig field default 8 (None -> num_attention_heads)
    if nkv is None:
        nkv = nh
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype != "default":
        raise ValueError(f"rope type {rtype} not covered by this spec")
    theta = rp.get("rope_theta", cfg.get("rope_theta", 1000000.0))
    return dict(
        H=H, V=cfg["vocab_size"], L=cfg["num_hidden_layers"], nh=nh, nkv=nkv,
        d=cfg.get("head_dim") or H // nh,
        E=cfg.get("num_local_experts", cfg.get("num_experts", 8)),
        K=cfg.get("num_experts_per_tok", 2),
        W=cfg.get("sliding_window"),
        eps=cfg.get("rms_norm_eps", 1e-5),
        theta=float(theta),
        tie=cfg.get("tie_word_embeddings", False),
    )


def canonical(cfg, w, c):
    """-> dict: embed, lm_head, norm, and per layer l: 'l.<name>' with experts as W1 (gate) [E, I, H], W3 (up)
    [E, I, H], W2 (down) [E, H, I] (out x in, like nn.Linear)."""
    w, _ = mlx_dequantize(cfg, w)
    w = {k.replace(".block_sparse_moe.", ".mlp."): v for k, v in w.items()}  # transformers' first renaming
    p = {"embed": w["model.embed_tokens.weight"], "norm": w["model.norm.weight"]}
    p["lm_head"] = w["model.embed_tokens.weight"] if c["tie"] else w["lm_head.weight"]
    E = c["E"]
    for l in range(c["L"]):
        pre = f"model.layers.{l}."
        for short, name in [("ln1", "input_layernorm.weight"), ("ln2", "post_attention_layernorm.weight"),
                            ("q_w", "self_attn.q_proj.weight"), ("k_w", "self_attn.k_proj.weight"),
                            ("v_w", "self_attn.v_proj.weight"), ("o_w", "self_attn.o_proj.weight"),
                            ("router", "mlp.gate.weight")]:
            p[f"{l}.{short}"] = w[pre + name]
        e = pre + "mlp."
        if e + "experts.0.w1.weight" in w:  # released / save_pretrained: per expert, w1 gate, w3 up, w2 down
            p[f"{l}.W1"] = np.stack([w[f"{e}experts.{x}.w1.weight"] for x in range(E)])
            p[f"{l}.W3"] = np.stack([w[f"{e}experts.{x}.w3.weight"] for x in range(E)])
            p[f"{l}.W2"] = np.stack([w[f"{e}experts.{x}.w2.weight"] for x in range(E)])
            assert e + f"experts.{E}.w1.weight" not in w, "more experts in the file than num_local_experts"
        elif e + "experts.gate_up_proj" in w:  # transformers-5 in-memory: [E, 2I, H], gate rows first
            gu = w[e + "experts.gate_up_proj"]
            I = gu.shape[1] // 2
            p[f"{l}.W1"], p[f"{l}.W3"] = gu[:, :I], gu[:, I:]
            p[f"{l}.W2"] = w[e + "experts.down_proj"]
        elif e + "switch_mlp.gate_proj.weight" in w:  # MLX: stacked [E, out, in]
            p[f"{l}.W1"] = w[e + "switch_mlp.gate_proj.weight"]
            p[f"{l}.W3"] = w[e + "switch_mlp.up_proj.weight"]
            p[f"{l}.W2"] = w[e + "switch_mlp.down_proj.weight"]
        else:
            raise KeyError(f"layer {l}: no expert tensors found")
        E_, I, H = p[f"{l}.W1"].shape
        assert (E_, H) == (E, c["H"]) and p[f"{l}.W3"].shape == (E, I, H) and p[f"{l}.W2"].shape == (E, H, I)
        assert p[f"{l}.q_w"].shape == (c["nh"] * c["d"], H) and p[f"{l}.k_w"].shape == (c["nkv"] * c["d"], H)
        assert p[f"{l}.o_w"].shape == (H, c["nh"] * c["d"]) and p[f"{l}.router"].shape == (E, H)
    return p


# ------------------------------------------------------------------------------------------------ math
def rope_tables(c, T, variant, dt):
    d, theta = c["d"], c["theta"]
    if variant == "rope_theta_wrong":  # a loader that ignores the configured theta (mlx-lm / TF default 1e6)
        theta = 1e6 if theta != 1e6 else 1e4
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, d/2]
    return np.cos(ang).astype(dt), np.sin(ang).astype(dt)


def apply_rope(x, cos, sin, variant):  # x [T, n, d]
    c, s = cos[:, None, :], sin[:, None, :]
    if variant == "interleaved_rope":  # pairs (2i, 2i+1): the Mistral-native layout, wrong for HF weights
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
        return out
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def rmsnorm(x, w, eps, variant):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * ((1.0 + w) if variant == "norm_1_plus_w" else w)


def silu(x):
    return x / (1.0 + np.exp(-x))


def attention(x, p, l, c, cos, sin, variant, dt):
    T, nh, nkv, d = x.shape[0], c["nh"], c["nkv"], c["d"]
    q = (x @ p[f"{l}.q_w"].T).reshape(T, nh, d)
    k = (x @ p[f"{l}.k_w"].T).reshape(T, nkv, d)
    v = (x @ p[f"{l}.v_w"].T).reshape(T, nkv, d)
    q, k = apply_rope(q, cos, sin, variant), apply_rope(k, cos, sin, variant)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = j <= i
    if c["W"] is not None and variant != "no_window":
        W = c["W"] + {"window_plus_1": 1, "window_minus_1": -1}.get(variant, 0)
        allowed &= j > i - W  # exactly W keys including the query itself
    out = np.zeros((T, nh, d), dtype=dt)
    rep = nh // nkv
    for h in range(nh):
        kv = h % nkv if variant == "gqa_modulo" else h // rep
        s = (q[:, h] @ k[:, kv].T) * dt(d ** -0.5)
        s = np.where(allowed, s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (e / e.sum(-1, keepdims=True)) @ v[:, kv]
    return out.reshape(T, nh * d) @ p[f"{l}.o_w"].T


def route(lg, K, variant):
    """router logits [T, E] -> (expert ids [T, k], weights [T, k])."""
    k = K + {"k_plus_1": 1, "k_minus_1": -1}.get(variant, 0)
    if variant == "topk_logits_then_softmax":  # mlx-lm / mistral-inference: same experts, same weights
        top = np.argsort(-lg, axis=-1, kind="stable")[:, :k]
        tv = np.take_along_axis(lg, top, -1)
        wt = np.exp(tv - tv.max(-1, keepdims=True))
        return top, wt / wt.sum(-1, keepdims=True)
    pr = np.exp(lg - lg.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)  # softmax over ALL experts
    top = np.argsort(-pr, axis=-1, kind="stable")[:, :k]  # descending
    wt = np.take_along_axis(pr, top, -1)
    if variant != "no_renorm":
        wt = wt / wt.sum(-1, keepdims=True)  # renormalize over the k chosen
    if variant == "weights_by_expert_index":  # experts reordered (ascending id) but the weights left in rank order
        top = np.sort(top, axis=-1)
    return top, wt


def moe(x, p, l, c, variant, dt):
    top, wt = route(x @ p[f"{l}.router"].T, c["K"], variant)
    W1, W3, W2 = p[f"{l}.W1"], p[f"{l}.W3"], p[f"{l}.W2"]
    I = W1.shape[1]
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for jj in range(top.shape[1]):
            e = top[t, jj]
            if variant == "interleaved_gate_up":  # fused [2I, H] read as gate = even rows, up = odd (gpt-oss style)
                gu = np.concatenate([W1[e], W3[e]], 0)
                g, u = gu[0::2] @ x[t], gu[1::2] @ x[t]
            else:
                g, u = W1[e] @ x[t], W3[e] @ x[t]
            if variant == "swap_gate_up":  # w1 and w3 exchanged
                g, u = u, g
            hh = silu(g) * u
            if variant == "transposed_down":  # [H, I] bytes read as [I, H]
                o = W2[e].reshape(-1).reshape(I, -1).T @ hh
            else:
                o = W2[e] @ hh
            y[t] += wt[t, jj] * o
    return y


def forward(c, p, ids, variant="exact", dt=np.float64):
    T = len(ids)
    cos, sin = rope_tables(c, T, variant, dt)
    x = p["embed"][ids]
    for l in range(c["L"]):
        x = x + attention(rmsnorm(x, p[f"{l}.ln1"], c["eps"], variant), p, l, c, cos, sin, variant, dt)
        x = x + moe(rmsnorm(x, p[f"{l}.ln2"], c["eps"], variant), p, l, c, variant, dt)
    return rmsnorm(x, p["norm"], c["eps"], variant) @ p["lm_head"].T


def applicable(v, c, T):
    if v in ("window_plus_1", "window_minus_1", "no_window"):
        return c["W"] is not None and c["W"] < T
    if v == "gqa_modulo":  # h % nKV == h // rep only for nKV in (1, nH)
        return c["nkv"] not in (1, c["nh"])
    if v == "k_minus_1":
        return c["K"] > 1
    if v == "k_plus_1":
        return c["K"] < c["E"]
    return True


def check_dir(d, variants=True, assert_features=True):
    cfg, w, dts = load(d)
    c = parse_config(cfg)
    p = canonical(cfg, w, c)
    g = json.load(open(os.path.join(d, "golden.json")))
    ids, P = np.array(g["ids"]), g["prompt_len"]
    ref = np.array(g["logits"], dtype=np.float64)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    out = forward(c, p64, ids)
    err = float(np.abs(out - ref).max())
    greedy_ok = list(out[P - 1: -1].argmax(-1)) == list(ids[P:])
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    o32 = forward(c, p32, ids, dt=np.float32)
    res = dict(name=os.path.basename(os.path.normpath(d)), rows=ref.shape[0], prompt_len=P, max_diff=err,
               greedy_ok=greedy_ok, f32_floor=float(np.abs(o32 - out).max()),
               ok=err <= g.get("atol", 2e-3) and greedy_ok and ref.shape == (len(ids), c["V"]), variants={},
               equivalent={}, dtypes=sorted(set(dts.values())))
    if variants:
        for v in ASSERTED:
            if applicable(v, c, len(ids)):
                res["variants"][v] = float(np.abs(forward(c, p64, ids, variant=v) - ref).max())
        for v in EQUIVALENT:
            res["equivalent"][v] = float(np.abs(forward(c, p64, ids, variant=v) - out).max())
        if assert_features:
            weak = {v: x for v, x in res["variants"].items() if not x > FEATURE_MIN}
            res["weak"] = weak
            not_eq = {v: x for v, x in res["equivalent"].items() if not x < 1e-9}
            res["not_equivalent"] = not_eq
            res["ok"] = res["ok"] and not weak and not not_eq
    return res


def main():
    args = sys.argv[1:]
    variants = "--no-variants" not in args
    args = [a for a in args if a != "--no-variants"]
    dirs = args or sorted(
        os.path.join(HERE, d) for d in os.listdir(HERE) if os.path.exists(os.path.join(HERE, d, "golden.json")))
    bad = 0
    for d in dirs:
        r = check_dir(d, variants=variants)
        bad += not r["ok"]
        print(f"{'OK ' if r['ok'] else 'BAD'} {r['name']}: rows {r['rows']} (prompt {r['prompt_len']}) "
              f"max|diff| {r['max_diff']:.2e} greedy {'ok' if r['greedy_ok'] else 'MISMATCH'}, "
              f"f32 noise floor (numpy f32 vs f64) {r['f32_floor']:.2e}, dtypes {r['dtypes']}")
        if r["variants"]:
            print("    wrong variants, max|diff| vs golden (each must be > %g): " % FEATURE_MIN +
                  ", ".join(f"{k} {v:.3g}" for k, v in r["variants"].items()))
            print("    equivalent formulations, max|diff| vs exact (each must be < 1e-9): " +
                  ", ".join(f"{k} {v:.2g}" for k, v in r["equivalent"].items()))
        if r.get("weak"):
            print(f"    TOO WEAK (feature not exercised): {r['weak']}")
        if r.get("not_equivalent"):
            print(f"    NOT EQUIVALENT: {r['not_equivalent']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
