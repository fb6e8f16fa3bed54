#!/usr/bin/env python3
"""Independent, numpy-only forward pass of gpt-oss (model_type gpt_oss), read straight from the fixture files and
compared with every golden.json. It is an executable spec of docs/families/gpt_oss.md (no torch / transformers
import):

  * config.json: transformers-5 spelling (`rope_parameters` with `rope_theta` inside) or the released spelling
    (`rope_scaling` + top-level `rope_theta`; `type` or `rope_type`; missing `truncate` means True);
    `num_local_experts` (alias `num_experts`); `num_experts_per_tok` (fallback: legacy `experts_per_token`);
    `layer_types` (default: even layers sliding, odd layers full); `swiglu_limit` (7.0), `swiglu_alpha` (1.702).
  * tensors: HF unquantized layout `mlp.experts.gate_up_proj` [E, H, 2I] (in x out, columns interleave gate/up) and
    `down_proj` [E, I, H], or the MXFP4 layout `*_blocks` [E, out, in/32, 16] U8 + `*_scales` [E, out, in/32] U8
    (e2m1 codes, element 2j in the low nibble of byte j, 2j+1 in the high nibble; scale 2^(s-127)); F32/BF16/U8/U32.
  * MLX (mlx-lm `convert`) folders: config.json `quantization` {group_size, bits, mode, "<module path>": {...}} (a
    per-path entry overrides the top level; an entry without `mode` is affine); every quantized module has
    `<path>.weight` U32 + `<path>.scales` (+ `<path>.biases` for affine; NOT the Linear's own `<path>.bias`):
    affine w = scales * q + biases per group of `group_size` inputs (q = `bits`-bit fields of the little-endian U32
    words, lowest bits first), dequantized in float32 like the golden; mxfp4: the U32 words' little-endian bytes are
    exactly the `*_blocks` layout above, scales U8 e8m0. Experts `mlp.experts.{gate,up,down}_proj.{weight,bias}`
    [E, out, in] (separate gate and up, not interleaved).
  * math: RMSNorm (plain weight); q/k/v/o with biases; YaRN RoPE (half-split pairs (i, i+d/2), inv_freq blend with
    the linear ramp, cos/sin scaled by 0.1 ln(factor) + 1); GQA head h -> kv head h // (nH/nKV); scores * d^-0.5,
    causal mask, sliding layers see keys j with i-W < j <= i; one sink logit per head appended to the softmax
    denominator (no value, not scaled); router = linear with bias, top-k on raw logits, softmax over the k;
    experts: gate = min(g, 7), up = clip(u, -7, 7), (up + 1) * gate * sigmoid(1.702 gate), down + bias, weighted.

    python3 tests/fixtures_gpt_oss/check_numpy.py [--no-variants] [DIR ...]   # default: every fixture here

Besides golden, each folder is checked against deliberately wrong variants of the forward (no sinks, window +-1,
no clamps, no +1, no router bias, plain RoPE, ...): each must move the logits by > FEATURE_MIN (asserted for the
features the fixtures are meant to exercise), so a loader that gets one of them wrong cannot pass atol.
Also printed: the f32 noise floor (the same forward in float32 vs float64).
"""

import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])

# variant -> must differ from golden by more than FEATURE_MIN (the features the fixtures are built to exercise)
FEATURE_MIN = 0.05  # 25 x atol
ASSERTED = ["no_sinks", "window_plus_1", "window_minus_1", "all_full_attention", "default_layer_types",
            "no_gate_clamp", "no_up_clamp", "no_plus_one", "alpha_1", "no_router_bias", "softmax_then_topk",
            "down_bias_unweighted", "concat_gate_up", "transposed_experts", "plain_rope", "yarn_truncate",
            "no_attention_factor", "interleaved_rope", "gqa_modulo", "norm_1_plus_w"]
REPORTED = []  # (none at present: every variant is asserted)


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
        elif dt == "U8":
            arr = np.frombuffer(raw, dtype=np.uint8)
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


def mxfp4_decode(blocks, scales):
    """blocks [..., R, G, 16] u8, scales [..., R, G] u8 -> [..., R, G*32] (rows = output features)."""
    assert blocks.shape[:-1] == scales.shape and blocks.shape[-1] == 16, (blocks.shape, scales.shape)
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    vals = FP4_VALUES[codes] * np.exp2(scales.astype(np.int64) - 127)[..., None]
    return vals.reshape(*blocks.shape[:-2], -1)


def unpack_bits(wq, bits):
    """U32 words [..., n] -> [..., n * 32 / bits] unsigned fields, lowest bits of the little-endian word first."""
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")
    b = bitstream.reshape(*bitstream.shape[:-1], bitstream.shape[-1] // bits, bits).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1)


def mlx_dequantize(cfg, w):
    """MLX folders: every quantized `<path>.weight` (+ `.scales`, `.biases`) -> float32 `<path>.weight`. Returns the
    new tensor dict and {path: (mode, bits, group_size)}."""
    q = cfg.get("quantization")
    if not q:
        return w, {}
    out, modes = dict(w), {}
    for p in sorted(k[: -len(".scales")] for k in w if k.endswith(".scales")):
        par = q[p] if isinstance(q.get(p), dict) else q
        G, B, mode = par["group_size"], par["bits"], par.get("mode", "affine")
        wq, sc = out.pop(p + ".weight"), out.pop(p + ".scales")
        assert wq.dtype == np.uint32 and wq.shape[:-1] == sc.shape[:-1], (p, wq.dtype, wq.shape, sc.shape)
        assert wq.shape[-1] * 32 // B == sc.shape[-1] * G, (p, wq.shape, sc.shape, B, G)
        if mode == "mxfp4":
            assert (B, G) == (4, 32) and sc.dtype == np.uint8 and p + ".biases" not in out, p
            blocks = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8).reshape(*sc.shape, 16)
            out[p + ".weight"] = mxfp4_decode(blocks, sc).astype(np.float32)  # exact
        elif mode == "affine":
            bi = out.pop(p + ".biases")
            f32 = np.float32
            out[p + ".weight"] = (np.repeat(sc.astype(f32), G, axis=-1) * unpack_bits(wq, B).astype(f32)
                                  + np.repeat(bi.astype(f32), G, axis=-1))
        else:
            raise ValueError(f"{p}: quantization mode {mode}")
        modes[p] = (mode, B, G)
    return out, modes


def parse_config(cfg):
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    c = dict(
        H=H, V=cfg["vocab_size"], L=cfg["num_hidden_layers"], nh=nh,
        nkv=cfg.get("num_key_value_heads") or nh,
        d=cfg.get("head_dim") or H // nh,
        E=cfg.get("num_local_experts", cfg.get("num_experts")),
        K=cfg.get("num_experts_per_tok", cfg.get("experts_per_token", 4)),
        W=cfg.get("sliding_window"),
        eps=cfg.get("rms_norm_eps", 1e-5),
        limit=cfg.get("swiglu_limit", 7.0),
        alpha=cfg.get("swiglu_alpha", 1.702),
    )
    c["layer_types"] = cfg.get("layer_types") or [
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(c["L"])]
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if rp is None:  # GptOssConfig default
        rp = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
              "original_max_position_embeddings": 4096}
    c["rope"] = dict(
        type=rp.get("rope_type", rp.get("type", "default")),
        theta=float(rp.get("rope_theta", cfg.get("rope_theta", 150000.0))),
        factor=rp.get("factor"), beta_fast=rp.get("beta_fast") or 32.0, beta_slow=rp.get("beta_slow") or 1.0,
        orig=rp.get("original_max_position_embeddings"), truncate=rp.get("truncate", True),
        attention_factor=rp.get("attention_factor"),
    )
    return c


def canonical(cfg, w, c):
    """-> dict: embed, lm_head, norm, and per layer l: 'l.<name>' with experts as Wgu [E, 2I, H] (rows interleave
    gate/up: row 2k = gate k, row 2k+1 = up k), bgu [E, 2I], Wd [E, H, I], bd [E, H] (out x in, like nn.Linear)."""
    w, _ = mlx_dequantize(cfg, w)
    p = {"embed": w["model.embed_tokens.weight"], "norm": w["model.norm.weight"],
         "lm_head": w.get("lm_head.weight", w["model.embed_tokens.weight"])}
    q = cfg.get("quantization_config") or {}
    for l in range(c["L"]):
        pre = f"model.layers.{l}."
        for short, name in [("ln1", "input_layernorm.weight"), ("ln2", "post_attention_layernorm.weight"),
                            ("q_w", "self_attn.q_proj.weight"), ("k_w", "self_attn.k_proj.weight"),
                            ("v_w", "self_attn.v_proj.weight"), ("o_w", "self_attn.o_proj.weight"),
                            ("sinks", "self_attn.sinks"), ("router_w", "mlp.router.weight"),
                            ("router_b", "mlp.router.bias")]:
            p[f"{l}.{short}"] = w[pre + name]
        for short, name in [("bgu", "mlp.experts.gate_up_proj_bias"), ("bd", "mlp.experts.down_proj_bias")]:
            if pre + name in w:  # (MLX: set below from the separate gate / up / down biases)
                p[f"{l}.{short}"] = w[pre + name]
        for short, name, n in [("q_b", "q_proj.bias", c["nh"] * c["d"]), ("k_b", "k_proj.bias", c["nkv"] * c["d"]),
                               ("v_b", "v_proj.bias", c["nkv"] * c["d"]), ("o_b", "o_proj.bias", c["H"])]:
            p[f"{l}.{short}"] = w.get(pre + "self_attn." + name, np.zeros(n))  # attention_bias false -> absent
        e = pre + "mlp.experts."
        if e + "gate_proj.weight" in w:  # MLX: separate gate / up, [E, out, in]; canonical = rows interleaved
            g_, u_ = w[e + "gate_proj.weight"], w[e + "up_proj.weight"]
            Wgu = np.empty((g_.shape[0], 2 * g_.shape[1], g_.shape[2]), dtype=g_.dtype)
            Wgu[:, 0::2], Wgu[:, 1::2] = g_, u_
            gb, ub = w[e + "gate_proj.bias"], w[e + "up_proj.bias"]
            bgu = np.empty((gb.shape[0], 2 * gb.shape[1]), dtype=gb.dtype)
            bgu[:, 0::2], bgu[:, 1::2] = gb, ub
            p[f"{l}.Wgu"], p[f"{l}.bgu"] = Wgu, bgu
            p[f"{l}.Wd"], p[f"{l}.bd"] = w[e + "down_proj.weight"], w[e + "down_proj.bias"]
        elif e + "gate_up_proj_blocks" in w:
            assert q.get("quant_method") == "mxfp4", q
            p[f"{l}.Wgu"] = mxfp4_decode(w[e + "gate_up_proj_blocks"], w[e + "gate_up_proj_scales"])
            p[f"{l}.Wd"] = mxfp4_decode(w[e + "down_proj_blocks"], w[e + "down_proj_scales"])
        else:  # HF unquantized layout is [E, in, out]
            p[f"{l}.Wgu"] = np.swapaxes(w[e + "gate_up_proj"], 1, 2)
            p[f"{l}.Wd"] = np.swapaxes(w[e + "down_proj"], 1, 2)
        E, I2, H = p[f"{l}.Wgu"].shape
        assert (E, H) == (c["E"], c["H"]) and p[f"{l}.Wd"].shape == (E, H, I2 // 2), (p[f"{l}.Wgu"].shape, p[f"{l}.Wd"].shape)
    return p


# ------------------------------------------------------------------------------------------------ math
def rope_tables(c, T, variant, dt):
    r = c["rope"]
    d, base = c["d"], r["theta"]
    pos_freqs = base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    inv = 1.0 / pos_freqs
    af = 1.0
    if r["type"] == "yarn" and variant != "plain_rope":
        factor = r["factor"]
        if factor is None:
            raise ValueError("yarn without factor")

        def corr(rot):
            return d * math.log(r["orig"] / (rot * 2 * math.pi)) / (2 * math.log(base))
        lo, hi = corr(r["beta_fast"]), corr(r["beta_slow"])
        if r["truncate"] or variant == "yarn_truncate":
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, d - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(d // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
        inv = inv * (1 - ramp) + inv / factor * ramp  # high-frequency dims (ramp 0) unchanged, low ones / factor
        af = r["attention_factor"] or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
        if variant == "no_attention_factor":
            af = 1.0
    elif r["type"] not in ("yarn", "default"):
        raise ValueError(r["type"])
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, d/2]
    return (np.cos(ang) * af).astype(dt), (np.sin(ang) * af).astype(dt)


def apply_rope(x, cos, sin, variant):  # x [T, n, d]
    c, s = cos[:, None, :], sin[:, None, :]
    if variant == "interleaved_rope":
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


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def attention(x, p, l, c, cos, sin, variant, dt):
    T, nh, nkv, d = x.shape[0], c["nh"], c["nkv"], c["d"]
    q = (x @ p[f"{l}.q_w"].T + p[f"{l}.q_b"]).reshape(T, nh, d)
    k = (x @ p[f"{l}.k_w"].T + p[f"{l}.k_b"]).reshape(T, nkv, d)
    v = (x @ p[f"{l}.v_w"].T + p[f"{l}.v_b"]).reshape(T, nkv, d)
    q, k = apply_rope(q, cos, sin, variant), apply_rope(k, cos, sin, variant)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = j <= i
    lt = c["layer_types"]
    if variant == "default_layer_types":  # a loader that ignores explicit layer_types
        lt = ["sliding_attention" if (n + 1) % 2 else "full_attention" for n in range(c["L"])]
    if lt[l] == "sliding_attention" and variant != "all_full_attention":
        W = c["W"] + {"window_plus_1": 1, "window_minus_1": -1}.get(variant, 0)
        allowed &= j > i - W  # exactly W keys including the query itself
    out = np.zeros((T, nh, d), dtype=dt)
    rep = nh // nkv
    for h in range(nh):
        kv = h % nkv if variant == "gqa_modulo" else h // rep
        s = (q[:, h] @ k[:, kv].T) * dt(d ** -0.5)
        s = np.where(allowed, s, -np.inf)
        if variant == "no_sinks":
            comb = s
        else:
            comb = np.concatenate([s, np.full((T, 1), p[f"{l}.sinks"][h], dtype=dt)], axis=-1)
        e = np.exp(comb - comb.max(-1, keepdims=True))
        pr = e / e.sum(-1, keepdims=True)
        out[:, h] = pr[:, :T] @ v[:, kv]  # the sink column (last) is dropped
    return out.reshape(T, nh * d) @ p[f"{l}.o_w"].T + p[f"{l}.o_b"]


def moe(x, p, l, c, variant, dt):
    E, K, lim, alpha = c["E"], c["K"], c["limit"], c["alpha"]
    if variant == "alpha_1":
        alpha = 1.0
    lg = x @ p[f"{l}.router_w"].T + (0 if variant == "no_router_bias" else p[f"{l}.router_b"])  # [T, E]
    top = np.argsort(-lg, axis=-1, kind="stable")[:, :K]
    tv = np.take_along_axis(lg, top, -1)
    if variant == "softmax_then_topk":
        full = np.exp(lg - lg.max(-1, keepdims=True))
        full /= full.sum(-1, keepdims=True)
        wt = np.take_along_axis(full, top, -1)
    else:
        wt = np.exp(tv - tv.max(-1, keepdims=True))
        wt /= wt.sum(-1, keepdims=True)  # softmax over the k selected raw logits
    Wgu, bgu, Wd, bd = p[f"{l}.Wgu"], p[f"{l}.bgu"], p[f"{l}.Wd"], p[f"{l}.bd"]
    I = Wgu.shape[1] // 2
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for jj in range(K):
            e = top[t, jj]
            if variant == "transposed_experts":  # reading the HF [E, in, out] layout as if it were [E, out, in]
                Wg_e = Wgu[e].reshape(-1).reshape(Wgu.shape[2], Wgu.shape[1]).T
                gu = Wg_e @ x[t] + bgu[e]
            else:
                gu = Wgu[e] @ x[t] + bgu[e]
            if variant == "concat_gate_up":
                gate, up = gu[:I], gu[I:]
            else:
                gate, up = gu[0::2], gu[1::2]
            if variant != "no_gate_clamp":
                gate = np.minimum(gate, lim)
            if variant != "no_up_clamp":
                up = np.clip(up, -lim, lim)
            glu = gate * sigmoid(alpha * gate)
            hh = (up if variant == "no_plus_one" else up + 1.0) * glu
            if variant == "transposed_experts":
                o = Wd[e].reshape(-1).reshape(Wd.shape[2], Wd.shape[1]).T @ hh
            else:
                o = Wd[e] @ hh
            if variant == "down_bias_unweighted":
                y[t] += wt[t, jj] * o + bd[e]
            else:
                y[t] += wt[t, jj] * (o + bd[e])
    return y


def forward(c, p, ids, variant="exact", dt=np.float64):
    T = len(ids)
    cos, sin = rope_tables(c, T, variant, dt)
    x = p["embed"][ids]
    for l in range(c["L"]):
        x = x + attention(rmsnorm(x, p[f"{l}.ln1"], c["eps"], variant), p, l, c, cos, sin, variant, dt)
        x = x + moe(rmsnorm(x, p[f"{l}.ln2"], c["eps"], variant), p, l, c, variant, dt)
    return rmsnorm(x, p["norm"], c["eps"], variant) @ p["lm_head"].T


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
        for v in ASSERTED + REPORTED:
            if v in ("window_plus_1", "window_minus_1", "all_full_attention") and "sliding_attention" not in c["layer_types"]:
                continue
            if v == "gqa_modulo" and c["nkv"] in (1, c["nh"]):  # h % nKV == h // rep only then
                continue
            if v == "default_layer_types" and c["layer_types"] == [
                    "sliding_attention" if (n + 1) % 2 else "full_attention" for n in range(c["L"])]:
                continue
            res["variants"][v] = float(np.abs(forward(c, p64, ids, variant=v) - ref).max())
        if assert_features:
            weak = {v: x for v, x in res["variants"].items() if v in ASSERTED and not x > FEATURE_MIN}
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
            print("    wrong variants, max|diff| vs golden (must be > %g where asserted): " % FEATURE_MIN +
                  ", ".join(f"{k}{'' if k in ASSERTED else '*'} {v:.3g}" for k, v in r["variants"].items()) +
                  ("   (* = reported only)" if any(k not in ASSERTED for k in r["variants"]) else ""))
        if r.get("weak"):
            print(f"    TOO WEAK (feature not exercised): {r['weak']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
