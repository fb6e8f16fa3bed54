#!/usr/bin/env python3
"""Independent, numpy-only forward pass of GLM-4.5 / GLM-4.6 MoE (model_type glm4_moe), read straight from the
fixture files and compared with every golden.json. It is an executable spec of docs/families/glm4_moe.md (no torch /
transformers import):

  * config.json: transformers-5 spelling (`rope_parameters` {rope_type default, rope_theta, partial_rotary_factor})
    or the released spelling (top-level `rope_theta`, `partial_rotary_factor`, `rope_scaling: null`); a value inside
    `rope_parameters` wins over the top-level key; `partial_rotary_factor` missing everywhere = 0.5 (transformers'
    Glm4MoeConfig.__post_init__), `rope_theta` missing = 10000. `head_dim` (absent = hidden / heads),
    `num_key_value_heads` (absent = 8, the Glm4MoeConfig default, NOT heads), `n_routed_experts` (alias
    `num_local_experts`), `num_experts_per_tok`, `n_group` (1), `topk_group` (1), `norm_topk_prob` (true),
    `routed_scaling_factor` (1.0), `n_shared_experts` (1), `moe_intermediate_size`, `intermediate_size`,
    `first_k_dense_replace` (1), `use_qk_norm` (false), `attention_bias` (false), `tie_word_embeddings` (false),
    `rms_norm_eps` (1e-5). `num_nextn_predict_layers` is only a count of extra MTP layers stored after the last
    decoder layer: their tensors `model.layers.{n >= num_hidden_layers}.*` are skipped.
  * tensors: layers < first_k_dense_replace hold a dense SwiGLU `mlp.{gate,up,down}_proj.weight` ([I, H], [I, H],
    [H, I] with I = intermediate_size); the others a router `mlp.gate.weight` [E, H] + `mlp.gate.e_score_correction_bias`
    [E] (F32 in the releases), routed experts in one of three layouts: HF per-expert
    `mlp.experts.{e}.{gate,up,down}_proj.weight` ([Im, H], [Im, H], [H, Im], Im = moe_intermediate_size; what the
    releases and transformers 5.23 save_pretrained hold), MLX `mlp.switch_mlp.{gate,up,down}_proj` [E, out, in]
    stacks, or transformers' in-memory fused `mlp.experts.gate_up_proj` [E, 2Im, H] (gate rows first) +
    `mlp.experts.down_proj` [E, H, Im] (accepted, no fixture uses it); and one shared expert
    `mlp.shared_experts.{gate,up,down}_proj.weight` of width Im * n_shared_experts. Attention: q/k/v with biases when
    attention_bias (o_proj never has one), `q_norm` / `k_norm` [head_dim] when use_qk_norm. F32 / BF16 / F16 / U32.
  * MLX (mlx-lm `convert`) folders: config.json `quantization` {group_size, bits, mode, "<module path>": {...}} (a
    per-path entry overrides the top level; an entry without `mode` is affine); every quantized module has
    `<path>.weight` U32 + `<path>.scales` + `<path>.biases`: w = scales * q + biases per group of `group_size`
    inputs, q = the `bits`-bit fields of the little-endian U32 words, lowest bits first; dequantized in float32 like
    the golden. The router (`mlp.gate.weight`) and `e_score_correction_bias` are never quantized by mlx-lm.
  * math: x = embed[ids]; per layer x += o(attn(RMSNorm(x; ln1))), x += ffn(RMSNorm(x; ln2)); logits =
    RMSNorm(x; norm) @ lm_head.T. RMSNorm plain weight (no 1 + w). Attention: q = x Wq^T + bq, k, v likewise, split
    into heads of head_dim d; with use_qk_norm an RMSNorm PER HEAD over d (weight [d]) on q and k; RoPE on the
    first r = int(d * partial_rotary_factor) dims of each head only, half-split pairs (i, i + r/2) within those r
    dims, inv_freq = theta^(-2i/r) (i < r/2), the last d - r dims untouched; GQA head h -> kv head h // (nh/nkv);
    scores * d^-0.5, causal, softmax; o = out Wo^T (no bias). Dense FFN: down(silu(gate x) * up x). MoE FFN:
    s = sigmoid(x Wr^T) (float32) over ALL experts; c = s + e_score_correction_bias (for SELECTION only);
    with n_group groups of E/n_group consecutive experts, group score = sum of the 2 largest c in the group, the
    topk_group best groups are kept, every expert of the other groups is excluded (-inf); top-k of c among the kept;
    weights = the UNBIASED s of the chosen experts, divided by (their sum + 1e-20) if norm_topk_prob, times
    routed_scaling_factor; y = sum_k w_k down_e(silu(gate_e x) * up_e x) + shared(x) (shared expert always on, no
    gate, not scaled).

    python3 tests/fixtures_glm4_moe/check_numpy.py [--no-variants] [DIR ...]   # default: every fixture here

Besides golden, each folder is checked against deliberately wrong variants of the forward (no correction bias in the
selection, bias also in the weights, no group limit, full-head RoPE, interleaved RoPE, no shared expert, ...): each
must move the logits by > FEATURE_MIN where it applies (asserted), so a loader that gets one of them wrong cannot
pass atol. Also printed: the f32 noise floor (the same forward in float32 vs float64), router statistics (how often
the correction bias / the group limit change the chosen experts) and informational variants (mlx-lm's group
masking with 0.0 instead of -inf).
"""

import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

FEATURE_MIN = 0.05  # 25 x atol
# variant -> when it applies (c = parsed config)
VARIANTS = {
    "no_bias_in_selection": lambda c: True,        # plain sigmoid top-k (groups scored on s too)
    "bias_in_weights": lambda c: True,             # weights from s + bias instead of s
    "no_group_limit": lambda c: c["n_group"] > 1 and c["topk_group"] < c["n_group"],
    "group_score_max": lambda c: c["n_group"] > 1 and c["topk_group"] < c["n_group"],  # DeepSeek-V2 style max
    "softmax_scores": lambda c: True,              # softmax over the router logits instead of sigmoid
    "no_routed_scaling": lambda c: c["rsf"] != 1.0,
    "flip_norm_topk_prob": lambda c: True,         # renormalise when the config says not to, or the reverse
    "full_rotary": lambda c: c["rot"] != c["d"],   # rotate the whole head (partial_rotary_factor ignored)
    "interleaved_rope": lambda c: True,            # pairs (2i, 2i+1) in the rotary dims (GLM-4 dense style)
    "rope_freq_over_head_dim": lambda c: c["rot"] != c["d"],  # inv_freq = theta^(-2i/d) instead of /r
    "rope_theta_10000": lambda c: c["theta"] != 10000.0,
    "no_shared_expert": lambda c: c["n_shared"] > 0,
    "dense_mlp_skipped": lambda c: c["first_dense"] > 0,     # layer 0 treated as an MoE layer with no experts
    "dense_mlp_scaled": lambda c: c["first_dense"] > 0 and c["rsf"] != 1.0,  # MoE post-scaling on the dense FFN
    "qk_norm_whole_width": lambda c: c["qk_norm"],  # one RMS over all heads (OLMoE style) instead of per head
    "no_qk_norm": lambda c: c["qk_norm"],
    "no_attention_bias": lambda c: c["attn_bias"],
    "swap_gate_up": lambda c: True,
    "gqa_modulo": lambda c: 1 < c["nkv"] < c["nh"],
    "norm_1_plus_w": lambda c: True,
    "tied_lm_head": lambda c: not c["tie"],
}
# informational, not asserted either way
INFO_VARIANTS = {
    "mlx_group_mask_zero": lambda c: c["n_group"] > 1 and c["topk_group"] < c["n_group"],  # mlx-lm masks with 0.0
}
# must be (numerically) the same as the exact forward
EQUIVALENT = {
    "no_renorm_epsilon": lambda c: c["norm_topk_prob"],  # drop the + 1e-20
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
        raise ValueError(f"rope_scaling {cfg['rope_scaling']} (GLM-4.5 releases have null)")
    rp = cfg.get("rope_parameters") or {}
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype != "default":
        raise ValueError(f"rope_type {rtype}")
    d = cfg.get("head_dim") or H // nh
    prf = float(rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.5)))
    c = dict(
        H=H, V=cfg["vocab_size"], L=cfg["num_hidden_layers"], nh=nh,
        nkv=cfg.get("num_key_value_heads") or 8,
        d=d, prf=prf, rot=int(d * prf),
        theta=float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        E=cfg.get("n_routed_experts", cfg.get("num_local_experts")),
        K=cfg["num_experts_per_tok"],
        n_group=int(cfg.get("n_group", 1) or 1),
        topk_group=int(cfg.get("topk_group", 1) or 1),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
        rsf=float(cfg.get("routed_scaling_factor", 1.0)),
        n_shared=int(cfg.get("n_shared_experts", 1) or 0),
        first_dense=int(cfg.get("first_k_dense_replace", 1)),
        qk_norm=bool(cfg.get("use_qk_norm", False)),
        attn_bias=bool(cfg.get("attention_bias", False)),
        eps=cfg.get("rms_norm_eps", 1e-5),
        tie=bool(cfg.get("tie_word_embeddings", False)),
        act=cfg.get("hidden_act", "silu"),
        mtp=int(cfg.get("num_nextn_predict_layers", cfg.get("num_mtp_layers", 1)) or 0),
    )
    assert c["act"] == "silu", c["act"]
    assert c["rot"] % 2 == 0 and 0 < c["rot"] <= d, (d, prf)
    assert c["E"] % c["n_group"] == 0 and c["E"] // c["n_group"] >= 2 and c["topk_group"] <= c["n_group"], c
    return c


def canonical(cfg, w, c):
    """-> (params, unused tensor names). params: embed, lm_head, norm and per layer 'l.<name>'; routed experts as
    Wg, Wu [E, Im, H], Wd [E, H, Im]; shared expert Sg, Su [Is, H], Sd [H, Is]; dense layers Dg, Du, Dd."""
    w, _ = mlx_dequantize(cfg, w)
    used = set()

    def get(name, default=None):
        if name in w:
            used.add(name)
            return w[name]
        if default is not None:
            return default
        raise KeyError(name)

    p = {"embed": get("model.embed_tokens.weight"), "norm": get("model.norm.weight")}
    p["lm_head"] = p["embed"] if c["tie"] else get("lm_head.weight")
    H, d, nh, nkv, E = c["H"], c["d"], c["nh"], c["nkv"], c["E"]
    for l in range(c["L"]):
        pre = f"model.layers.{l}."
        for short, name in [("ln1", "input_layernorm.weight"), ("ln2", "post_attention_layernorm.weight"),
                            ("q_w", "self_attn.q_proj.weight"), ("k_w", "self_attn.k_proj.weight"),
                            ("v_w", "self_attn.v_proj.weight"), ("o_w", "self_attn.o_proj.weight")]:
            p[f"{l}.{short}"] = get(pre + name)
        for short, name, n in [("q_b", "q_proj.bias", nh * d), ("k_b", "k_proj.bias", nkv * d),
                               ("v_b", "v_proj.bias", nkv * d)]:
            if c["attn_bias"]:
                p[f"{l}.{short}"] = get(pre + "self_attn." + name)
            else:
                p[f"{l}.{short}"] = np.zeros(n, dtype=np.float32)
        assert pre + "self_attn.o_proj.bias" not in w, "o_proj has no bias in glm4_moe"
        if c["qk_norm"]:
            p[f"{l}.q_norm"], p[f"{l}.k_norm"] = get(pre + "self_attn.q_norm.weight"), get(pre + "self_attn.k_norm.weight")
            assert p[f"{l}.q_norm"].shape == (d,) and p[f"{l}.k_norm"].shape == (d,), "q/k norms are per head"
        assert p[f"{l}.q_w"].shape == (nh * d, H) and p[f"{l}.k_w"].shape == (nkv * d, H)
        assert p[f"{l}.o_w"].shape == (H, nh * d)
        m = pre + "mlp."
        if l < c["first_dense"]:
            p[f"{l}.Dg"], p[f"{l}.Du"], p[f"{l}.Dd"] = (get(m + "gate_proj.weight"), get(m + "up_proj.weight"),
                                                        get(m + "down_proj.weight"))
            assert p[f"{l}.Dg"].shape[1] == H and p[f"{l}.Dd"].shape == (H, p[f"{l}.Dg"].shape[0])
            continue
        p[f"{l}.router"] = get(m + "gate.weight")
        p[f"{l}.ebias"] = get(m + "gate.e_score_correction_bias", np.zeros(E, dtype=np.float32))
        assert p[f"{l}.router"].shape == (E, H) and p[f"{l}.ebias"].shape == (E,)
        if m + "experts.0.gate_proj.weight" in w:  # HF per-expert (released, save_pretrained)
            for short, n in (("Wg", "gate_proj"), ("Wu", "up_proj"), ("Wd", "down_proj")):
                p[f"{l}.{short}"] = np.stack([get(f"{m}experts.{j}.{n}.weight") for j in range(E)])
        elif m + "switch_mlp.gate_proj.weight" in w:  # MLX stacks [E, out, in]
            for short, n in (("Wg", "gate_proj"), ("Wu", "up_proj"), ("Wd", "down_proj")):
                p[f"{l}.{short}"] = get(f"{m}switch_mlp.{n}.weight")
        else:  # transformers' in-memory fused layout: gate = rows [0, Im), up = rows [Im, 2Im)
            gu = get(m + "experts.gate_up_proj")
            Im = gu.shape[1] // 2
            p[f"{l}.Wg"], p[f"{l}.Wu"], p[f"{l}.Wd"] = gu[:, :Im], gu[:, Im:], get(m + "experts.down_proj")
        Ee, Im, Hh = p[f"{l}.Wg"].shape
        assert (Ee, Hh) == (E, H) and p[f"{l}.Wd"].shape == (E, H, Im), (p[f"{l}.Wg"].shape, p[f"{l}.Wd"].shape)
        if c["n_shared"] > 0:
            s = m + "shared_experts."
            p[f"{l}.Sg"], p[f"{l}.Su"], p[f"{l}.Sd"] = (get(s + "gate_proj.weight"), get(s + "up_proj.weight"),
                                                        get(s + "down_proj.weight"))
            assert p[f"{l}.Sg"].shape == (Im * c["n_shared"], H), "shared width = moe_intermediate * n_shared"
    unused = sorted(set(w) - used)
    for k in unused:  # only the MTP layers (index >= num_hidden_layers) may be left over
        mm = re.match(r"model\.layers\.(\d+)\.", k)
        assert mm and int(mm.group(1)) >= c["L"], f"unused tensor {k}"
    return p, unused


# ------------------------------------------------------------------------------------------------ math
def rmsnorm(x, w, eps, one_plus=False):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * ((1.0 + w) if one_plus else w)


def rope_tables(c, T, variant, dt):
    d = c["d"]
    rot = d if variant == "full_rotary" else c["rot"]
    theta = 10000.0 if variant == "rope_theta_10000" else c["theta"]
    denom = d if variant == "rope_freq_over_head_dim" else rot
    inv = 1.0 / (theta ** (np.arange(0, rot, 2, dtype=np.float64) / denom))
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, rot/2]
    return np.cos(ang).astype(dt), np.sin(ang).astype(dt), rot


def apply_rope(x, cos, sin, rot, variant):  # x [T, n, d]: rotate the first `rot` dims of each head
    cc, s = cos[:, None, :], sin[:, None, :]
    xr, xp = x[..., :rot], x[..., rot:]
    if variant == "interleaved_rope":
        a, b = xr[..., 0::2], xr[..., 1::2]
        out = np.empty_like(xr)
        out[..., 0::2], out[..., 1::2] = a * cc - b * s, b * cc + a * s
    else:
        h = rot // 2
        x1, x2 = xr[..., :h], xr[..., h:]
        out = np.concatenate([x1 * cc - x2 * s, x2 * cc + x1 * s], axis=-1)
    return np.concatenate([out, xp], axis=-1)


def head_norm(x, w, c, variant):
    """x [T, n, d]; glm4_moe's q/k norm is an RMSNorm over each head's d values (weight [d])."""
    one_plus = variant == "norm_1_plus_w"
    if variant == "qk_norm_whole_width":
        T, n, d = x.shape
        return rmsnorm(x.reshape(T, n * d), np.tile(w, n), c["eps"], one_plus).reshape(T, n, d)
    return rmsnorm(x, w, c["eps"], one_plus)


def attention(x, p, l, c, rope, variant, dt):
    cos, sin, rot = rope
    T, nh, nkv, d = x.shape[0], c["nh"], c["nkv"], c["d"]
    nb = variant == "no_attention_bias"
    q = x @ p[f"{l}.q_w"].T + (0 if nb else p[f"{l}.q_b"])
    k = x @ p[f"{l}.k_w"].T + (0 if nb else p[f"{l}.k_b"])
    v = x @ p[f"{l}.v_w"].T + (0 if nb else p[f"{l}.v_b"])
    q, k, v = q.reshape(T, nh, d), k.reshape(T, nkv, d), v.reshape(T, nkv, d)
    if c["qk_norm"] and variant != "no_qk_norm":
        q, k = head_norm(q, p[f"{l}.q_norm"], c, variant), head_norm(k, p[f"{l}.k_norm"], c, variant)
    q, k = apply_rope(q, cos, sin, rot, variant), apply_rope(k, cos, sin, rot, variant)
    allowed = np.arange(T)[None, :] <= np.arange(T)[:, None]
    out = np.zeros((T, nh, d), dtype=dt)
    rep = nh // nkv
    for h in range(nh):
        kv = h % nkv if variant == "gqa_modulo" else h // rep
        s = (q[:, h] @ k[:, kv].T) * dt(d ** -0.5)
        s = np.where(allowed, s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (e / e.sum(-1, keepdims=True)) @ v[:, kv]
    return out.reshape(T, nh * d) @ p[f"{l}.o_w"].T


def silu(x):
    return x / (1.0 + np.exp(-x))


def glu(x, g, u, dn, variant):
    a, b = x @ g.T, x @ u.T
    if variant == "swap_gate_up":
        a, b = b, a
    return (silu(a) * b) @ dn.T


def route(logits, bias, c, variant="exact"):
    """logits [T, E] (float) -> (chosen [T, K], weights [T, K], selection scores after masking [T, E],
    group scores [T, G] or None). The routing of Glm4MoeTopkRouter.forward."""
    T, E, K, G, TG = logits.shape[0], c["E"], c["K"], c["n_group"], c["topk_group"]
    if variant == "softmax_scores":
        ex = np.exp(logits - logits.max(-1, keepdims=True))
        s = ex / ex.sum(-1, keepdims=True)
    else:
        s = 1.0 / (1.0 + np.exp(-logits))
    choice = s if variant == "no_bias_in_selection" else s + bias
    gscore = None
    if G > 1 and variant != "no_group_limit":
        grp = choice.reshape(T, G, E // G)
        if variant == "group_score_max":
            gscore = grp.max(-1)
        else:
            gscore = -np.sort(-grp, axis=-1)[..., :2].sum(-1)  # sum of the 2 best per group
        keep = np.argsort(-gscore, axis=-1, kind="stable")[:, :TG]
        gmask = np.zeros((T, G), dtype=bool)
        np.put_along_axis(gmask, keep, True, axis=-1)
        emask = np.repeat(gmask, E // G, axis=-1)
        fill = 0.0 if variant == "mlx_group_mask_zero" else -np.inf
        choice = np.where(emask, choice, fill)
    top = np.argsort(-choice, axis=-1, kind="stable")[:, :K]
    src = (s + bias) if variant == "bias_in_weights" else s
    wt = np.take_along_axis(src, top, -1)
    if c["norm_topk_prob"] != (variant == "flip_norm_topk_prob"):
        wt = wt / (wt.sum(-1, keepdims=True) + (0.0 if variant == "no_renorm_epsilon" else 1e-20))
    if variant != "no_routed_scaling":
        wt = wt * c["rsf"]
    return top, wt, choice, gscore


def moe(x, p, l, c, variant):
    logits = x @ p[f"{l}.router"].T
    top, wt, _, _ = route(logits, p[f"{l}.ebias"], c, variant)
    Wg, Wu, Wd = p[f"{l}.Wg"], p[f"{l}.Wu"], p[f"{l}.Wd"]
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(c["K"]):
            e = top[t, j]
            y[t] += wt[t, j] * glu(x[t], Wg[e], Wu[e], Wd[e], variant)
    if c["n_shared"] > 0 and variant != "no_shared_expert":
        y = y + glu(x, p[f"{l}.Sg"], p[f"{l}.Su"], p[f"{l}.Sd"], variant)
    return y


def forward(c, p, ids, variant="exact", dt=np.float64, capture=None):
    T = len(ids)
    rope = rope_tables(c, T, variant, dt)
    one_plus = variant == "norm_1_plus_w"
    x = p["embed"][ids]
    for l in range(c["L"]):
        x = x + attention(rmsnorm(x, p[f"{l}.ln1"], c["eps"], one_plus), p, l, c, rope, variant, dt)
        h = rmsnorm(x, p[f"{l}.ln2"], c["eps"], one_plus)
        if l < c["first_dense"]:
            if variant == "dense_mlp_skipped":
                continue
            y = glu(h, p[f"{l}.Dg"], p[f"{l}.Du"], p[f"{l}.Dd"], variant)
            x = x + (y * c["rsf"] if variant == "dense_mlp_scaled" else y)
        else:
            if capture is not None:
                capture[l] = h @ p[f"{l}.router"].T
            x = x + moe(h, p, l, c, variant)
    lm = p["embed"] if variant == "tied_lm_head" else p["lm_head"]
    return rmsnorm(x, p["norm"], c["eps"], one_plus) @ lm.T


def routing_stats(c, p, captured):
    """Over every token of every MoE layer (exact forward's router logits): margins of the decisions and how often
    the correction bias / the group limit change the chosen set."""
    n = bias_changes = group_changes = gmax_changes = 0
    min_expert_gap = min_group_gap = np.inf
    for l, lg in captured.items():
        b = p[f"{l}.ebias"]
        top, _, choice, gs = route(lg, b, c)
        top_nb, _, _, _ = route(lg, b, c, "no_bias_in_selection")
        n += lg.shape[0]
        bias_changes += sum(set(a) != set(bb) for a, bb in zip(top, top_nb))
        if gs is not None:
            top_ng, _, _, _ = route(lg, b, c, "no_group_limit")
            group_changes += sum(set(a) != set(bb) for a, bb in zip(top, top_ng))
            top_gm, _, _, _ = route(lg, b, c, "group_score_max")
            gmax_changes += sum(set(a) != set(bb) for a, bb in zip(top, top_gm))
            sg = -np.sort(-gs, axis=-1)
            min_group_gap = min(min_group_gap, float((sg[:, c["topk_group"] - 1] - sg[:, c["topk_group"]]).min()))
        sc = -np.sort(-choice, axis=-1)
        min_expert_gap = min(min_expert_gap, float((sc[:, c["K"] - 1] - sc[:, c["K"]]).min()))
    return dict(decisions=n, bias_changes=bias_changes, group_changes=group_changes, gmax_changes=gmax_changes,
                min_expert_gap=min_expert_gap, min_group_gap=None if min_group_gap == np.inf else min_group_gap)


def check_dir(d, variants=True, assert_features=True):
    cfg, w, dts = load(d)
    c = parse_config(cfg)
    p, unused = canonical(cfg, w, c)
    g = json.load(open(os.path.join(d, "golden.json")))
    ids, P = np.array(g["ids"]), g["prompt_len"]
    ref = np.array(g["logits"], dtype=np.float64)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    cap = {}
    out = forward(c, p64, ids, capture=cap)
    err = float(np.abs(out - ref).max())
    greedy_ok = list(out[P - 1: -1].argmax(-1)) == list(ids[P:])
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    o32 = forward(c, p32, ids, dt=np.float32)
    mtp_layers = sorted({int(re.match(r"model\.layers\.(\d+)\.", k).group(1)) for k in unused})
    res = dict(name=os.path.basename(os.path.normpath(d)), rows=ref.shape[0], prompt_len=P, max_diff=err,
               greedy_ok=greedy_ok, f32_floor=float(np.abs(o32 - out).max()),
               ok=err <= g.get("atol", 2e-3) and greedy_ok and ref.shape == (len(ids), c["V"]), variants={},
               info={}, equivalent={}, dtypes=sorted(set(dts.values())), skipped_mtp_layers=mtp_layers,
               n_skipped=len(unused), routing=routing_stats(c, p64, cap))
    if variants:
        for v, applies in VARIANTS.items():
            if applies(c):
                res["variants"][v] = float(np.abs(forward(c, p64, ids, variant=v) - ref).max())
        for v, applies in INFO_VARIANTS.items():
            if applies(c):
                res["info"][v] = float(np.abs(forward(c, p64, ids, variant=v) - ref).max())
        for v, applies in EQUIVALENT.items():
            if applies(c):
                res["equivalent"][v] = float(np.abs(forward(c, p64, ids, variant=v) - out).max())
        if assert_features:
            weak = {v: x for v, x in res["variants"].items() if not x > FEATURE_MIN}
            res["weak"] = weak
            res["ok"] = res["ok"] and not weak and all(x < 1e-9 for x in res["equivalent"].values())
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
        rt = r["routing"]
        print(f"{'OK ' if r['ok'] else 'BAD'} {r['name']}: rows {r['rows']} (prompt {r['prompt_len']}) "
              f"max|diff| {r['max_diff']:.2e} greedy {'ok' if r['greedy_ok'] else 'MISMATCH'}, "
              f"f32 noise floor (numpy f32 vs f64) {r['f32_floor']:.2e}, dtypes {r['dtypes']}, skipped MTP layers "
              f"{r['skipped_mtp_layers']} ({r['n_skipped']} tensors)")
        print(f"    routing: {rt['decisions']} decisions; correction bias changes the chosen set in "
              f"{rt['bias_changes']}, the group limit in {rt['group_changes']}, max- instead of top-2-sum group "
              f"scores in {rt['gmax_changes']}; min k-th/(k+1)-th selection gap "
              f"{rt['min_expert_gap']:.4f}, min group gap {rt['min_group_gap']}")
        if r["variants"]:
            print("    wrong variants, max|diff| vs golden (each must be > %g): " % FEATURE_MIN +
                  ", ".join(f"{k} {v:.3g}" for k, v in r["variants"].items()))
        if r["info"]:
            print("    informational: " + ", ".join(f"{k} {v:.3g}" for k, v in r["info"].items()))
        if r["equivalent"]:
            print("    equivalent (vs the exact forward): " + ", ".join(f"{k} {v:.2g}" for k, v in r["equivalent"].items()))
        if r.get("weak"):
            print(f"    TOO WEAK (feature not exercised): {r['weak']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
