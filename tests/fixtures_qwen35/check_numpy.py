#!/usr/bin/env python3
"""Independent, numpy-only forward pass of Qwen3.5-MoE / Qwen3-Next (Gated DeltaNet hybrids), read straight from
the fixture files, compared with every golden.json. It is an executable spec of the math and of the checkpoint
layouts (no torch / transformers / mlx import):

  * config.json: flat (qwen3_5_moe_text, qwen3_next) or composite (qwen3_5_moe: text_config); layer_types or
    full_attention_interval (default 4); rope_parameters{rope_theta, partial_rotary_factor} or top-level
    rope_theta / partial_rotary_factor (default 0.25); MLX "quantization".
  * tensor names: model.layers.* | model.language_model.* | language_model.model.* (MLX); lm_head.weight |
    language_model.lm_head.*; model.visual.* / mtp.* skipped.
  * experts: fused experts.gate_up_proj [E,2I,H] (rows [0,I) gate, [I,2I) up) + experts.down_proj [E,H,I] |
    per-expert experts.{e}.{gate,up,down}_proj.weight | MLX switch_mlp.{gate,up,down}_proj (stacked).
  * linear attention: in_proj_qkv/z/b/a (Qwen3.5) | in_proj_qkvz/in_proj_ba grouped per key head (Qwen3-Next).
  * conv1d [C,1,K] (HF) | [C,K,1] (MLX). Norm weights: HF stores w (use 1+w), MLX stores 1+w (use as is);
    linear_attn.norm.weight is a plain weight everywhere.
  * MLX affine quantization: U32 words, LSB-first bit stream, w = scale*q + bias per group; per-module
    (bits, group) from config.json "quantization".

    python3 tests/fixtures_qwen35/check_numpy.py [--f32] [DIR ...]   # default: every fixture here
                                                       # --f32: also run the forward in float32 and print how far
                                                       # f32 rounding alone moves the logits (the noise floor)
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------------------------------ files
def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None) or {}
    out = {}
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
    return out, meta


def load(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    w, metas = {}, []
    for fn in files:
        t, m = read_safetensors(os.path.join(d, fn))
        w.update(t)
        metas.append(m)
    return json.load(open(os.path.join(d, "config.json"))), w, metas


def unpack_bits(wq, bits):
    """u32 [..., W] -> codes [..., W*32/bits]: each row is a little-endian bit stream, LSB first."""
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bs = np.unpackbits(by, axis=-1, bitorder="little")
    n = bs.shape[-1] // bits
    b = bs.reshape(*bs.shape[:-1], n, bits).astype(np.uint64)
    return (b << np.arange(bits, dtype=np.uint64)).sum(-1)


def dequantize(w, qcfg):
    out = {}
    bases = {k[: -len(".scales")] for k in w if k.endswith(".scales")}
    for k, v in w.items():
        base = k.rsplit(".", 1)[0]
        if base in bases:
            if not k.endswith(".weight"):
                continue
            ov = qcfg.get(base)
            G, B = (ov["group_size"], ov["bits"]) if isinstance(ov, dict) else (qcfg["group_size"], qcfg["bits"])
            q = unpack_bits(v, B).astype(np.float64)
            s = np.repeat(w[base + ".scales"].astype(np.float64), G, axis=-1)
            b = np.repeat(w[base + ".biases"].astype(np.float64), G, axis=-1)
            assert s.shape == q.shape, (k, s.shape, q.shape)
            # f32 scale * code + f32 bias, rounded to f32 (what an f32 dequantizer computes)
            out[k] = (s * q).astype(np.float32).astype(np.float64) + b
            out[k] = out[k].astype(np.float32)
        else:
            out[k] = v
    return out


def canonical(cfg, w, metas):
    """-> (text config, dict of canonical names 'embed', 'lm_head', 'norm', 'L.<layer>.<rest>', is_mlx)."""
    is_mlx = any(m.get("format") == "mlx" for m in metas)
    if "quantization" in cfg:
        w = dequantize(w, cfg["quantization"])
    tc = dict(cfg.get("text_config") or cfg)
    tc.setdefault("model_type", cfg["model_type"])
    c = {}
    for k, v in w.items():
        if k.startswith(("model.visual.", "mtp.", "vision_tower", "model.mtp.", "language_model.mtp.")):
            continue
        for pre in ("model.language_model.", "language_model.model.", "model."):
            if k.startswith(pre):
                r = k[len(pre):]
                break
        else:
            r = k[len("language_model."):] if k.startswith("language_model.") else k
            assert r == "lm_head.weight", k
            c["lm_head"] = v
            continue
        if r == "embed_tokens.weight":
            c["embed"] = v
        elif r == "norm.weight":
            c["norm"] = v
        else:
            assert r.startswith("layers."), k
            c["L." + r[len("layers."):]] = v
    return tc, c, is_mlx


# ------------------------------------------------------------------------------------------------ math
def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):  # torch: threshold 20
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def rms(x, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def forward(tc, w, ids, is_mlx, dt=np.float64):
    mt = tc["model_type"]
    is_next = mt == "qwen3_next"
    H = tc["hidden_size"]
    nL = tc["num_hidden_layers"]
    eps = tc.get("rms_norm_eps", 1e-6)
    Hq, Hkv = tc["num_attention_heads"], tc["num_key_value_heads"]
    D = tc.get("head_dim") or H // Hq
    Hk, Hv = tc["linear_num_key_heads"], tc["linear_num_value_heads"]
    Dk, Dv = tc["linear_key_head_dim"], tc["linear_value_head_dim"]
    r = Hv // Hk
    E, K = tc["num_experts"], tc["num_experts_per_tok"]
    rp = tc.get("rope_parameters") or {}
    theta = rp.get("rope_theta", tc.get("rope_theta"))
    prf = rp.get("partial_rotary_factor", tc.get("partial_rotary_factor", 0.25))
    lt = tc.get("layer_types") or [
        "linear_attention" if (i + 1) % tc.get("full_attention_interval", 4) else "full_attention" for i in range(nL)]
    if is_next:
        mlp_only = tc.get("mlp_only_layers") or []
        step = tc.get("decoder_sparse_step", 1)
        sparse = [l not in mlp_only and E > 0 and (l + 1) % step == 0 for l in range(nL)]
        renorm = tc.get("norm_topk_prob", True)
    else:
        sparse = [True] * nL
        renorm = True  # Qwen3.5: the router always renormalises the top-k probabilities
    T = len(ids)

    def nw(v):  # zero-centred RMSNorm weights: HF stores w (apply 1+w); MLX stores 1+w already
        return v if is_mlx else 1.0 + v

    # partial RoPE (NeoX rotate_half on the first rd dims; interleaved MRoPE == 1-D RoPE for text)
    rd = int(D * prf)
    inv = 1.0 / (theta ** (np.arange(0, rd, 2, dtype=np.float32) / np.float32(rd)))  # f32 like HF
    ang = (np.arange(T, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :].astype(dt)
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :].astype(dt)

    def rope(x):  # x [T, heads, D]
        xr, xp = x[..., :rd], x[..., rd:]
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
        return np.concatenate([xr * cos + np.concatenate([-x2, x1], -1) * sin, xp], -1)

    mask = np.triu(np.full((T, T), -np.inf, dtype=dt), 1)
    x = w["embed"][ids]
    for l in range(nL):
        p = f"L.{l}."
        h = rms(x, eps) * nw(w[p + "input_layernorm.weight"])
        if lt[l] == "linear_attention":
            a_ = p + "linear_attn."
            if a_ + "in_proj_qkvz.weight" in w:  # Qwen3-Next: grouped per key head -> de-group
                W = w[a_ + "in_proj_qkvz.weight"].reshape(Hk, 2 * Dk + 2 * r * Dv, H)
                Wq, Wk = W[:, :Dk], W[:, Dk: 2 * Dk]
                Wv, Wz = W[:, 2 * Dk: 2 * Dk + r * Dv], W[:, 2 * Dk + r * Dv:]
                Wqkv = np.concatenate([Wq.reshape(-1, H), Wk.reshape(-1, H), Wv.reshape(-1, H)], 0)
                Wz = Wz.reshape(-1, H)
                BA = w[a_ + "in_proj_ba.weight"].reshape(Hk, 2 * r, H)
                Wb, Wa = BA[:, :r].reshape(Hv, H), BA[:, r:].reshape(Hv, H)
            else:
                Wqkv, Wz = w[a_ + "in_proj_qkv.weight"], w[a_ + "in_proj_z.weight"]
                Wb, Wa = w[a_ + "in_proj_b.weight"], w[a_ + "in_proj_a.weight"]
            u = h @ Wqkv.T  # [T, C], C = 2*Hk*Dk + Hv*Dv, order q | k | v
            z = (h @ Wz.T).reshape(T, Hv, Dv)
            b = h @ Wb.T
            a = h @ Wa.T
            cw = w[a_ + "conv1d.weight"]
            cw = cw[:, 0, :] if cw.shape[1] == 1 else cw[:, :, 0]  # [C, Kc] (HF [C,1,K], MLX [C,K,1])
            Kc = cw.shape[1]
            up = np.concatenate([np.zeros((Kc - 1, u.shape[1]), dtype=dt), u], 0)
            y = silu(sum(cw[:, j][None, :] * up[j: j + T] for j in range(Kc)))  # causal depthwise conv + SiLU
            q = y[:, : Hk * Dk].reshape(T, Hk, Dk)
            k = y[:, Hk * Dk: 2 * Hk * Dk].reshape(T, Hk, Dk)
            v = y[:, 2 * Hk * Dk:].reshape(T, Hv, Dv)
            beta = sigmoid(b)
            g = -np.exp(w[a_ + "A_log"]) * softplus(a + w[a_ + "dt_bias"])  # log-decay <= 0
            q = q / np.sqrt((q * q).sum(-1, keepdims=True) + dt(1e-6)) * dt(Dk ** -0.5)
            k = k / np.sqrt((k * k).sum(-1, keepdims=True) + dt(1e-6))
            S = np.zeros((Hv, Dk, Dv), dtype=dt)
            o = np.zeros((T, Hv, Dv), dtype=dt)
            kh_of = np.arange(Hv) // r  # value head h uses key head h // r
            for t in range(T):
                kt, qt = k[t, kh_of], q[t, kh_of]  # [Hv, Dk]
                S *= np.exp(g[t])[:, None, None]
                kv = np.einsum("hkv,hk->hv", S, kt)
                delta = beta[t][:, None] * (v[t] - kv)
                S += kt[:, :, None] * delta[:, None, :]
                o[t] = np.einsum("hkv,hk->hv", S, qt)
            o = rms(o, eps) * w[a_ + "norm.weight"] * silu(z)  # gated RMSNorm, plain weight
            x = x + o.reshape(T, Hv * Dv) @ w[a_ + "out_proj.weight"].T
        else:
            a_ = p + "self_attn."
            qg = (h @ w[a_ + "q_proj.weight"].T).reshape(T, Hq, 2 * D)
            q, gate = qg[..., :D], qg[..., D:].reshape(T, Hq * D)
            k = (h @ w[a_ + "k_proj.weight"].T).reshape(T, Hkv, D)
            vv = (h @ w[a_ + "v_proj.weight"].T).reshape(T, Hkv, D)
            q = rope(rms(q, eps) * nw(w[a_ + "q_norm.weight"]))
            k = rope(rms(k, eps) * nw(w[a_ + "k_norm.weight"]))
            rep = Hq // Hkv
            k, vv = np.repeat(k, rep, 1), np.repeat(vv, rep, 1)
            s = np.einsum("thd,shd->hts", q, k) * D ** -0.5 + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att = np.einsum("hts,shd->thd", s, vv).reshape(T, Hq * D)
            x = x + (att * sigmoid(gate)) @ w[a_ + "o_proj.weight"].T

        h = rms(x, eps) * nw(w[p + "post_attention_layernorm.weight"])
        m = p + "mlp."
        if not sparse[l]:
            y = (silu(h @ w[m + "gate_proj.weight"].T) * (h @ w[m + "up_proj.weight"].T)) @ w[m + "down_proj.weight"].T
        else:
            if m + "experts.gate_up_proj" in w:
                gu = w[m + "experts.gate_up_proj"]
                I = gu.shape[1] // 2
                Wg, Wu, Wd = gu[:, :I], gu[:, I:], w[m + "experts.down_proj"]
            elif m + "switch_mlp.gate_proj.weight" in w:
                Wg, Wu, Wd = (w[m + f"switch_mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
            else:
                Wg, Wu, Wd = (np.stack([w[m + f"experts.{e}.{n}_proj.weight"] for e in range(E)])
                              for n in ("gate", "up", "down"))
            lg = h @ w[m + "gate.weight"].T
            pr = np.exp(lg - lg.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)  # softmax over all experts, then top-k
            top = np.argsort(-pr, axis=-1, kind="stable")[:, :K]
            wt = np.take_along_axis(pr, top, -1)
            if renorm:
                wt = wt / wt.sum(-1, keepdims=True)
            y = np.zeros_like(h)
            for t in range(T):
                for j in range(K):
                    e = top[t, j]
                    y[t] += wt[t, j] * ((silu(Wg[e] @ h[t]) * (Wu[e] @ h[t])) @ Wd[e].T)
            sh = (silu(h @ w[m + "shared_expert.gate_proj.weight"].T) * (h @ w[m + "shared_expert.up_proj.weight"].T)) \
                @ w[m + "shared_expert.down_proj.weight"].T
            y = y + sigmoid(h @ w[m + "shared_expert_gate.weight"].T) * sh
        x = x + y
    x = rms(x, eps) * nw(w["norm"])
    return x @ w["lm_head"].T


def main():
    args = sys.argv[1:]
    f32_floor = "--f32" in args
    args = [a for a in args if a != "--f32"]
    dirs = args or sorted(
        os.path.join(HERE, d) for d in os.listdir(HERE) if os.path.exists(os.path.join(HERE, d, "golden.json")))
    bad = 0
    for d in dirs:
        cfg, w, metas = load(d)
        tc, c, is_mlx = canonical(cfg, w, metas)
        g = json.load(open(os.path.join(d, "golden.json")))
        ids, P = g["ids"], g["prompt_len"]
        ref = np.array(g["logits"], dtype=np.float32)
        out = forward(tc, {k: v.astype(np.float64) for k, v in c.items()}, np.array(ids), is_mlx)
        err = float(np.abs(out - ref).max())
        greedy_ok = list(out[P - 1: -1].argmax(-1)) == ids[P:]
        ok = err <= g.get("atol", 1e-3) and greedy_ok and ref.shape == (len(ids), tc["vocab_size"])
        bad += not ok
        floor = ""
        if f32_floor:  # the same forward in float32: how far plain f32 rounding moves these logits
            o32 = forward(tc, {k: v.astype(np.float32) for k, v in c.items()}, np.array(ids), is_mlx, dt=np.float32)
            floor = f", f32 noise floor (numpy f32 vs f64) {float(np.abs(o32 - out).max()):.2e}"
        print(f"{'OK ' if ok else 'BAD'} {os.path.basename(d)}: rows {ref.shape[0]} (prompt {P}) "
              f"max|diff| {err:.2e} greedy {'ok' if greedy_ok else 'MISMATCH'}{floor}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
