#!/usr/bin/env python3
"""Independent, numpy-only forward pass of OLMoE (model_type olmoe), read straight from the fixture files and
compared with every golden.json. It is an executable spec of docs/families/olmoe.md (no torch / transformers
import):

  * config.json: transformers-5 spelling (`rope_parameters` {rope_type default, rope_theta}) or the released
    spelling (top-level `rope_theta`, `rope_scaling: null`); `num_experts` (alias `num_local_experts`),
    `num_experts_per_tok`, `norm_topk_prob` (default false), `clip_qkv` (null = off), `num_key_value_heads`
    (default = heads), `head_dim` (absent in OLMoE configs: hidden / heads), `tie_word_embeddings` (default false,
    as in transformers; mlx-lm's default is true), `attention_bias` (default false).
  * tensors: HF per-expert layout `mlp.experts.{e}.{gate,up,down}_proj.weight` ([I, H], [I, H], [H, I]; what the
    released checkpoints and transformers 5.23 save_pretrained hold), the in-memory fused layout
    `mlp.experts.gate_up_proj` [E, 2I, H] (rows: gate 0..I-1, then up I..2I-1) + `mlp.experts.down_proj` [E, H, I]
    (accepted, no fixture uses it), or MLX `mlp.switch_mlp.{gate,up,down}_proj` [E, out, in] stacks. Router
    `mlp.gate.weight` [E, H] (no bias). F32 / BF16 / F16 / U32.
  * MLX (mlx-lm `convert`) folders: config.json `quantization` {group_size, bits, mode, "<module path>": {...}}
    (a per-path entry overrides the top level; an entry without `mode` is affine); every quantized module has
    `<path>.weight` U32 + `<path>.scales` + `<path>.biases`: w = scales * q + biases per group of `group_size`
    inputs, q = the `bits`-bit fields of the little-endian U32 words, lowest bits first; dequantized in float32
    like the golden.
  * math: x = embed[ids]; per layer x += o(attn(RMSNorm(x; ln1))), x += moe(RMSNorm(x; ln2)); logits =
    RMSNorm(x; norm) @ lm_head.T. RMSNorm plain weight (no 1 + w). Attention: q = q_norm(x Wq^T), k =
    k_norm(x Wk^T) with the RMS taken over the WHOLE projection width (nh*d for q, nkv*d for k, before the split
    into heads), v = x Wv^T; then, if clip_qkv: q, k, v clamped to [-clip, clip] (after the norms); split into
    heads; RoPE half-split pairs (i, i + d/2), inv_freq = theta^(-2i/d); GQA head h -> kv head h // (nh/nkv);
    scores * d^-0.5, causal, softmax. MoE: p = softmax(x Wg^T) over ALL experts, top-k of p, weights = those p
    (renormalised to sum 1 only if norm_topk_prob), y = sum_k w_k down_e(silu(gate_e x) * up_e x).

    python3 tests/fixtures_olmoe/check_numpy.py [--no-variants] [DIR ...]   # default: every fixture here

Besides golden, each folder is checked against deliberately wrong variants of the forward (per-head q/k norm,
renormalised top-k, no clip_qkv, ...): each must move the logits by > FEATURE_MIN where it applies (asserted),
so a loader that gets one of them wrong cannot pass atol. Also printed: the f32 noise floor (the same forward in
float32 vs float64).
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

FEATURE_MIN = 0.05  # 25 x atol
# variant -> when it applies (c = parsed config)
VARIANTS = {
    "per_head_qk_norm": lambda c: True,       # RMS over each head's d values (Qwen3 / OLMo-2-per-head style)
    "no_qk_norm": lambda c: True,
    "qk_norm_1_plus_w": lambda c: True,       # only the q/k norms as (1 + w)
    "norm_1_plus_w": lambda c: True,          # every RMSNorm as (1 + w) (Gemma / Qwen3-Next style)
    "no_clip": lambda c: c["clip"] is not None,
    "no_clip_q": lambda c: c["clip"] is not None,           # clamp k and v only
    "no_clip_k": lambda c: c["clip"] is not None,           # clamp q and v only
    "no_clip_v": lambda c: c["clip"] is not None,           # clamp q and k only
    "clip_before_qk_norm": lambda c: c["clip"] is not None,  # clamp the raw projections, then norm
    "clip_after_rope": lambda c: c["clip"] is not None,      # clamp q and k after RoPE
    "flip_norm_topk_prob": lambda c: True,    # renormalise when the config says not to (or the reverse)
    "swap_gate_up": lambda c: True,           # silu(up) * gate
    "interleaved_rope": lambda c: True,       # pairs (2i, 2i+1) instead of (i, i + d/2)
    "gqa_modulo": lambda c: 1 < c["nkv"] < c["nh"],        # kv head h % nkv instead of h // (nh/nkv)
    "rope_theta_10000": lambda c: c["theta"] != 10000.0,  # a loader that misses the config's rope_theta
    "tied_lm_head": lambda c: not c["tie"],   # mlx-lm's default when tie_word_embeddings is absent
}


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
            raise ValueError(f"{p}: quantization mode {mode}")
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
    if cfg.get("rope_scaling") is not None:
        raise ValueError(f"rope_scaling {cfg['rope_scaling']} (OLMoE releases have null)")
    rp = cfg.get("rope_parameters") or {}
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype != "default":
        raise ValueError(f"rope_type {rtype}")
    c = dict(
        H=H, V=cfg["vocab_size"], L=cfg["num_hidden_layers"], nh=nh,
        nkv=cfg.get("num_key_value_heads") or nh,
        d=cfg.get("head_dim") or H // nh,
        E=cfg.get("num_experts", cfg.get("num_local_experts")),
        K=cfg["num_experts_per_tok"],
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        clip=cfg.get("clip_qkv"),
        eps=cfg.get("rms_norm_eps", 1e-5),
        theta=float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        tie=bool(cfg.get("tie_word_embeddings", False)),
        act=cfg.get("hidden_act", "silu"),
    )
    assert c["act"] == "silu", c["act"]
    return c


def canonical(cfg, w, c):
    """-> dict: embed, lm_head, norm and per layer 'l.<name>'; experts as Wg, Wu [E, I, H], Wd [E, H, I]."""
    w, _ = mlx_dequantize(cfg, w)
    p = {"embed": w["model.embed_tokens.weight"], "norm": w["model.norm.weight"]}
    p["lm_head"] = p["embed"] if c["tie"] else w["lm_head.weight"]
    for l in range(c["L"]):
        pre = f"model.layers.{l}."
        for short, name in [("ln1", "input_layernorm.weight"), ("ln2", "post_attention_layernorm.weight"),
                            ("q_w", "self_attn.q_proj.weight"), ("k_w", "self_attn.k_proj.weight"),
                            ("v_w", "self_attn.v_proj.weight"), ("o_w", "self_attn.o_proj.weight"),
                            ("q_norm", "self_attn.q_norm.weight"), ("k_norm", "self_attn.k_norm.weight"),
                            ("router", "mlp.gate.weight")]:
            p[f"{l}.{short}"] = w[pre + name]
        for short, name, n in [("q_b", "q_proj.bias", c["nh"] * c["d"]), ("k_b", "k_proj.bias", c["nkv"] * c["d"]),
                               ("v_b", "v_proj.bias", c["nkv"] * c["d"]), ("o_b", "o_proj.bias", c["H"])]:
            p[f"{l}.{short}"] = w.get(pre + "self_attn." + name, np.zeros(n, dtype=np.float32))
        e = pre + "mlp."
        if e + "experts.0.gate_proj.weight" in w:  # HF per-expert (released, save_pretrained)
            for short, n in (("Wg", "gate_proj"), ("Wu", "up_proj"), ("Wd", "down_proj")):
                p[f"{l}.{short}"] = np.stack([w[f"{e}experts.{j}.{n}.weight"] for j in range(c["E"])])
        elif e + "switch_mlp.gate_proj.weight" in w:  # MLX stacks [E, out, in]
            for short, n in (("Wg", "gate_proj"), ("Wu", "up_proj"), ("Wd", "down_proj")):
                p[f"{l}.{short}"] = w[f"{e}switch_mlp.{n}.weight"]
        else:  # transformers' in-memory fused layout: gate = rows [0, I), up = rows [I, 2I)
            gu = w[e + "experts.gate_up_proj"]
            I = gu.shape[1] // 2
            p[f"{l}.Wg"], p[f"{l}.Wu"], p[f"{l}.Wd"] = gu[:, :I], gu[:, I:], w[e + "experts.down_proj"]
        E, I, H = p[f"{l}.Wg"].shape
        assert (E, H) == (c["E"], c["H"]) and p[f"{l}.Wd"].shape == (E, H, I), (p[f"{l}.Wg"].shape, p[f"{l}.Wd"].shape)
        assert p[f"{l}.q_norm"].shape == (c["nh"] * c["d"],) and p[f"{l}.k_norm"].shape == (c["nkv"] * c["d"],)
        assert p[f"{l}.router"].shape == (c["E"], c["H"])
    return p


# ------------------------------------------------------------------------------------------------ math
def rmsnorm(x, w, eps, one_plus=False):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * ((1.0 + w) if one_plus else w)


def qk_norm(x, w, n, c, variant):
    """x [T, n*d]: the OLMoE q/k norm is one RMSNorm over the whole width (all heads together)."""
    if variant == "no_qk_norm":
        return x
    one_plus = variant in ("qk_norm_1_plus_w", "norm_1_plus_w")
    if variant == "per_head_qk_norm":
        T = x.shape[0]
        xh = x.reshape(T, n, c["d"])
        y = xh / np.sqrt(np.mean(xh * xh, axis=-1, keepdims=True) + c["eps"])
        return y.reshape(T, -1) * ((1.0 + w) if one_plus else w)
    return rmsnorm(x, w, c["eps"], one_plus)


def rope_tables(c, T, variant, dt):
    d = c["d"]
    theta = 10000.0 if variant == "rope_theta_10000" else c["theta"]
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, d/2]
    return np.cos(ang).astype(dt), np.sin(ang).astype(dt)


def apply_rope(x, cos, sin, variant):  # x [T, n, d]
    cc, s = cos[:, None, :], sin[:, None, :]
    if variant == "interleaved_rope":
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cc - b * s, b * cc + a * s
        return out
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * cc - x2 * s, x2 * cc + x1 * s], axis=-1)


def attention(x, p, l, c, cos, sin, variant, dt):
    T, nh, nkv, d, clip = x.shape[0], c["nh"], c["nkv"], c["d"], c["clip"]
    q = x @ p[f"{l}.q_w"].T + p[f"{l}.q_b"]
    k = x @ p[f"{l}.k_w"].T + p[f"{l}.k_b"]
    v = x @ p[f"{l}.v_w"].T + p[f"{l}.v_b"]
    if clip is not None and variant == "clip_before_qk_norm":
        q, k = np.clip(q, -clip, clip), np.clip(k, -clip, clip)
    q = qk_norm(q, p[f"{l}.q_norm"], nh, c, variant)
    k = qk_norm(k, p[f"{l}.k_norm"], nkv, c, variant)
    if clip is not None and variant != "no_clip":  # after the norms, before RoPE
        if variant not in ("no_clip_q", "clip_before_qk_norm", "clip_after_rope"):
            q = np.clip(q, -clip, clip)
        if variant not in ("no_clip_k", "clip_before_qk_norm", "clip_after_rope"):
            k = np.clip(k, -clip, clip)
        if variant != "no_clip_v":
            v = np.clip(v, -clip, clip)
    q, k, v = q.reshape(T, nh, d), k.reshape(T, nkv, d), v.reshape(T, nkv, d)
    q, k = apply_rope(q, cos, sin, variant), apply_rope(k, cos, sin, variant)
    if clip is not None and variant == "clip_after_rope":
        q, k = np.clip(q, -clip, clip), np.clip(k, -clip, clip)
    allowed = np.arange(T)[None, :] <= np.arange(T)[:, None]
    out = np.zeros((T, nh, d), dtype=dt)
    rep = nh // nkv
    for h in range(nh):
        kv = h % nkv if variant == "gqa_modulo" else h // rep
        s = (q[:, h] @ k[:, kv].T) * dt(d ** -0.5)
        s = np.where(allowed, s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (e / e.sum(-1, keepdims=True)) @ v[:, kv]
    return out.reshape(T, nh * d) @ p[f"{l}.o_w"].T + p[f"{l}.o_b"]


def silu(x):
    return x / (1.0 + np.exp(-x))


def moe(x, p, l, c, variant):
    K = c["K"]
    lg = x @ p[f"{l}.router"].T  # [T, E], no bias
    pr = np.exp(lg - lg.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)  # softmax over ALL experts
    top = np.argsort(-pr, axis=-1, kind="stable")[:, :K]
    wt = np.take_along_axis(pr, top, -1)
    # (renormalising the k probabilities = a softmax over the k selected logits, Mixtral style)
    if c["norm_topk_prob"] != (variant == "flip_norm_topk_prob"):
        wt = wt / wt.sum(-1, keepdims=True)
    Wg, Wu, Wd = p[f"{l}.Wg"], p[f"{l}.Wu"], p[f"{l}.Wd"]
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(K):
            e = top[t, j]
            g, u = Wg[e] @ x[t], Wu[e] @ x[t]
            if variant == "swap_gate_up":
                g, u = u, g
            y[t] += wt[t, j] * (Wd[e] @ (silu(g) * u))
    return y


def forward(c, p, ids, variant="exact", dt=np.float64):
    T = len(ids)
    cos, sin = rope_tables(c, T, variant, dt)
    one_plus = variant == "norm_1_plus_w"
    x = p["embed"][ids]
    for l in range(c["L"]):
        x = x + attention(rmsnorm(x, p[f"{l}.ln1"], c["eps"], one_plus), p, l, c, cos, sin, variant, dt)
        x = x + moe(rmsnorm(x, p[f"{l}.ln2"], c["eps"], one_plus), p, l, c, variant)
    lm = p["embed"] if variant == "tied_lm_head" else p["lm_head"]
    return rmsnorm(x, p["norm"], c["eps"], one_plus) @ lm.T


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
               dtypes=sorted(set(dts.values())))
    if variants:
        for v, applies in VARIANTS.items():
            if applies(c):
                res["variants"][v] = float(np.abs(forward(c, p64, ids, variant=v) - ref).max())
        if assert_features:
            weak = {v: x for v, x in res["variants"].items() if not x > FEATURE_MIN}
            res["weak"] = weak
            res["ok"] = res["ok"] and not weak
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
        if r.get("weak"):
            print(f"    TOO WEAK (feature not exercised): {r['weak']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
