#!/usr/bin/env python3
"""Independent, numpy-only forward pass of DeepSeek-V3 (model_type deepseek_v3; Kimi-K2's kimi_k2 and Moonlight read
the same way), read straight from the fixture files and compared with every golden.json. It is an executable spec of
docs/families/deepseek_v3.md (no torch / transformers / mlx import):

  * config.json: transformers-5 spelling (`rope_parameters` with `rope_theta` inside) or the released spelling
    (`rope_scaling` with `type` or `rope_type` + top-level `rope_theta`, or no `rope_scaling` at all); `q_lora_rank`
    null -> one `q_proj`; `n_group` / `topk_group` (null -> 1); `rope_interleave` (default true); `num_hidden_layers`
    (tensors of layers >= it are the MTP module: checked to be exactly that, then skipped); `first_k_dense_replace`.
  * tensors: F32 / BF16; FP8 `F8_E4M3` `.weight` + F32 `.weight_scale_inv` [ceil(out/128), ceil(in/128)] (released
    DeepSeek-V3: w = e4m3(q) * scale_inv[i // 128, j // 128], float32 product; partial last blocks); MLX affine
    folders (`.weight` U32 + `.scales` / `.biases` BF16, modules without `.scales` are plain), `mlp.switch_mlp.*`
    stacked experts and `self_attn.embed_q` [nh, r, dn] / `self_attn.unembed_out` [nh, dv, r] instead of `kv_b_proj`.
  * math (transformers 5.23 `modeling_deepseek_v3.py`): RMSNorm (x * rsqrt(mean x^2 + eps)) * w, with eps 1e-6 fixed
    for q_a_layernorm / kv_a_layernorm (rms_norm_eps for the others); multi-head latent attention:
        c_q  = RMSNorm(x W_qa^T) ; q = c_q W_qb^T          (or q = x W_q^T)         q[h] = [q_nope (dn) | q_pe (dr)]
        kv_a = x W_kva^T = [c_kv_raw (r) | k_pe_raw (dr)] ; c_kv = RMSNorm(c_kv_raw)
        W_kvb rows per head h: [W_UK[h] (dn rows) ; W_UV[h] (dv rows)]  ->  k_nope[h] = W_UK[h] c_kv, v[h] = W_UV[h] c_kv
        RoPE on q_pe[h] and on the ONE shared k_pe (interleaved pairs (2i, 2i+1) when rope_interleave, else (i, i+dr/2))
        s[h,t,u] = scale * (q_nope[h,t] . k_nope[h,u] + q_pe[h,t] . k_pe[u]),   scale = (dn+dr)^-0.5 * m^2 (YaRN with
        mscale_all_dim: m = 0.1 mscale_all_dim ln(factor) + 1), causal softmax, o = concat_h(p v[h]) W_o^T;
    YaRN (truncate defaults to TRUE when the key is missing; cos/sin times attention_factor = mscale ratio);
    router: sigmoid(x W_g^T) (float32 in transformers), + e_score_correction_bias for the CHOICE only, groups of
    E/n_group scored by the sum of their top-2 biased scores, topk_group groups kept, top-k of the kept biased scores,
    weights = the UNBIASED sigmoid scores of the chosen experts / (their sum + 1e-20) if norm_topk_prob, times
    routed_scaling_factor; experts SwiGLU silu(gate) * up -> down; + shared experts (width n_shared * moe_inter),
    unweighted; the first `first_k_dense_replace` layers use a dense SwiGLU MLP (intermediate_size).

    python3 tests/fixtures_deepseek_v3/check_numpy.py [--no-variants] [DIR ...]   # default: every fixture here

Besides golden, each folder is checked against deliberately wrong variants of the forward (no correction bias in the
choice, no group limit, no routed scaling, non-interleaved RoPE, no mscale, ...): each must move the logits by more
than FEATURE_MIN (asserted where the fixture has the feature). It also runs the weight-absorbed latent-cache decode
(`forward_latent`: one token at a time, caching only c_kv and the rotated k_pe, with q absorbed through W_UK and the
output through W_UV) and asserts it equals the naive forward (float64) and golden.
"""

import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

FEATURE_MIN = 0.05  # 25 x atol
LATENT_TOL_F64 = 1e-9  # absorbed latent-cache decode vs naive one-pass forward, both float64
LATENT_NORM_EPS = 1e-6  # DeepseekV3RMSNorm(q_lora_rank) / (kv_lora_rank): default eps, not rms_norm_eps

# variant -> (a wrong reading of the checkpoint / config); asserted > FEATURE_MIN where the fixture has the feature
ASSERTED = ["no_bias_choice", "bias_in_weights", "no_group_limit", "group_score_max", "group_score_sum_all",
            "no_routed_scaling", "no_norm_topk", "softmax_scores", "no_shared_experts", "swap_gate_up",
            "non_interleaved_rope", "plain_rope", "yarn_no_truncate", "no_mscale", "no_attention_factor",
            "rope_first_split", "kv_a_rope_first", "kv_b_v_first", "kv_b_blocked", "scale_latent_dim",
            "norm_1_plus_w", "no_kv_a_norm"]
# reported only (too small to assert, or a quirk of another implementation); dequant_to_bf16 (FP8 folders): every
# dequantized weight rounded to bf16, as mlx-lm's sanitize and DeepSeek's fp8_cast_bf16.py do
REPORTED = ["latent_norm_eps_config", "mlx_group_mask_zero", "dequant_to_bf16"]


# ------------------------------------------------------------------------------------------------ files
def e4m3_table():
    """float8_e4m3fn code -> value (bias 7, no infinities, 0x7F / 0xFF NaN, subnormals m/8 * 2^-6)."""
    v = np.zeros(256, dtype=np.float64)
    for b in range(256):
        s = -1.0 if b & 0x80 else 1.0
        e, m = (b >> 3) & 0xF, b & 7
        if e == 15 and m == 7:
            v[b] = np.nan
        elif e == 0:
            v[b] = s * m / 8.0 * 2.0 ** -6
        else:
            v[b] = s * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return v


E4M3 = e4m3_table()


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
        elif dt == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt in ("F8_E4M3", "U8"):
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


def fp8_dequantize(q, scale_inv, block):
    """q [out, in] e4m3 codes (u8), scale_inv [ceil(out/bo), ceil(in/bi)] f32 -> float32 [out, in]; the last block
    of a dimension may be partial (DeepSeek pads with zeros before computing its scale, then drops the padding)."""
    bo, bi = block
    R, C = q.shape
    assert scale_inv.shape == (-(-R // bo), -(-C // bi)), (q.shape, scale_inv.shape, block)
    s = np.repeat(np.repeat(scale_inv.astype(np.float32), bo, 0), bi, 1)[:R, :C]
    return E4M3[q].astype(np.float32) * s  # float32 product, like the golden


def unpack_bits(wq, bits):
    """U32 words [..., n] -> [..., n * 32 / bits] unsigned fields, lowest bits of the little-endian word first."""
    by = np.ascontiguousarray(wq, dtype="<u4").view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")
    b = bitstream.reshape(*bitstream.shape[:-1], bitstream.shape[-1] // bits, bits).astype(np.uint32)
    return (b << np.arange(bits, dtype=np.uint32)).sum(-1)


def dequantize(cfg, w, dts):
    """FP8 (weight_scale_inv) and MLX affine (scales / biases) -> float32 `.weight`; returns tensors, info."""
    out, info = dict(w), {"fp8": 0, "mlx": 0}
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") == "fp8":
        assert qc.get("fmt", "e4m3") == "e4m3" and qc.get("activation_scheme", "dynamic") == "dynamic", qc
        block = tuple(qc.get("weight_block_size") or (128, 128))
        for k in sorted(k for k in w if k.endswith(".weight_scale_inv")):
            p = k[: -len("_scale_inv")]
            assert dts[p] == "F8_E4M3" and dts[k] == "F32", (p, dts[p], dts[k])
            out[p] = fp8_dequantize(out[p], out.pop(k), block)
            info["fp8"] += 1
        assert not any(dts[k] == "F8_E4M3" for k in out if out[k].dtype == np.uint8), "F8 weight without scales"
    q = cfg.get("quantization")
    if q and "quant_method" not in q:
        for p in sorted(k[: -len(".scales")] for k in w if k.endswith(".scales")):
            par = q[p] if isinstance(q.get(p), dict) else q
            G, B, mode = par["group_size"], par["bits"], par.get("mode", "affine")
            assert mode == "affine", (p, mode)
            wq, sc, bi = out.pop(p + ".weight"), out.pop(p + ".scales"), out.pop(p + ".biases")
            assert wq.dtype == np.uint32 and wq.shape[-1] * 32 // B == sc.shape[-1] * G, (p, wq.shape, sc.shape)
            f32 = np.float32
            out[p + ".weight"] = (np.repeat(sc.astype(f32), G, axis=-1) * unpack_bits(wq, B).astype(f32)
                                  + np.repeat(bi.astype(f32), G, axis=-1))
            info["mlx"] += 1
    return out, info


def _mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def parse_config(cfg):
    nh = cfg["num_attention_heads"]
    c = dict(
        V=cfg["vocab_size"], H=cfg["hidden_size"], L=cfg["num_hidden_layers"], nh=nh,
        q_lora=cfg.get("q_lora_rank"), r=cfg["kv_lora_rank"], dn=cfg["qk_nope_head_dim"], dr=cfg["qk_rope_head_dim"],
        dv=cfg["v_head_dim"], E=cfg.get("n_routed_experts"), K=cfg["num_experts_per_tok"],
        n_group=cfg.get("n_group") or 1, topk_group=cfg.get("topk_group") or 1,
        n_shared=cfg.get("n_shared_experts") or 0, rsf=cfg.get("routed_scaling_factor", 1.0),
        norm_topk=cfg.get("norm_topk_prob", True), first_dense=cfg.get("first_k_dense_replace") or 0,
        eps=cfg.get("rms_norm_eps", 1e-6), interleave=cfg.get("rope_interleave", True),
        mtp=cfg.get("num_nextn_predict_layers", 0),
    )
    assert cfg.get("model_type") in ("deepseek_v3", "kimi_k2"), cfg.get("model_type")
    assert cfg.get("scoring_func", "sigmoid") == "sigmoid" and cfg.get("topk_method", "noaux_tc") == "noaux_tc"
    assert (cfg.get("moe_layer_freq") or 1) == 1, "moe_layer_freq != 1: transformers ignores it, mlx-lm does not"
    assert cfg.get("num_key_value_heads", nh) == nh, "MLA: num_key_value_heads must equal num_attention_heads"
    assert cfg.get("hidden_act", "silu") == "silu" and not cfg.get("attention_bias", False)
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rtype = rp.get("rope_type", rp.get("type", "default"))
    theta = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    r = dict(type=rtype, theta=theta, af=1.0, scale_m2=1.0)
    if rtype == "yarn":
        factor = rp.get("factor") or cfg["max_position_embeddings"] / rp["original_max_position_embeddings"]
        ms, mad = rp.get("mscale"), rp.get("mscale_all_dim")
        af = rp.get("attention_factor")
        if af is None:
            af = _mscale(factor, ms) / _mscale(factor, mad) if (ms and mad) else _mscale(factor)
        r.update(factor=factor, orig=rp["original_max_position_embeddings"], beta_fast=rp.get("beta_fast") or 32,
                 beta_slow=rp.get("beta_slow") or 1, truncate=rp.get("truncate", True), af=af,
                 scale_m2=_mscale(rp["factor"], mad) ** 2 if mad else 1.0)
    elif rtype != "default":
        raise ValueError(f"rope type {rtype}")
    c["rope"] = r
    return c


def canonical(cfg, w, dts, c):
    """-> dict of float32 arrays: embed, lm_head, norm; per layer l: 'l.<name>'. Experts as Wg/Wu [E, I, H], Wd [E, H, I]
    (out x in); kv_b as [nh*(dn+dv), r] (per head: dn k_nope rows, then dv v rows)."""
    w, info = dequantize(cfg, w, dts)
    L = c["L"]
    # the MTP module (layers >= num_hidden_layers): exactly DeepSeek's names, skipped
    extra = sorted({k.split(".")[2] for k in w if k.startswith("model.layers.") and int(k.split(".")[2]) >= L})
    assert len(extra) <= c["mtp"], (extra, c["mtp"])
    for li in extra:
        mtp = {k[len(f"model.layers.{li}."):] for k in w if k.startswith(f"model.layers.{li}.")}
        assert {"embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                "shared_head.head.weight", "input_layernorm.weight", "self_attn.kv_a_proj_with_mqa.weight",
                "mlp.gate.weight"} <= mtp, sorted(mtp)
    info["mtp_layers"] = [int(x) for x in extra]
    p = {"embed": w["model.embed_tokens.weight"], "norm": w["model.norm.weight"],
         "lm_head": w["lm_head.weight"]}
    nh, dn, dv, r = c["nh"], c["dn"], c["dv"], c["r"]
    for l in range(L):
        a = f"model.layers.{l}."
        p[f"{l}.ln1"], p[f"{l}.ln2"] = w[a + "input_layernorm.weight"], w[a + "post_attention_layernorm.weight"]
        sa = a + "self_attn."
        if c["q_lora"] is None:
            p[f"{l}.q"] = w[sa + "q_proj.weight"]
        else:
            p[f"{l}.qa"], p[f"{l}.qa_ln"], p[f"{l}.qb"] = (w[sa + "q_a_proj.weight"], w[sa + "q_a_layernorm.weight"],
                                                           w[sa + "q_b_proj.weight"])
        p[f"{l}.kva"], p[f"{l}.kva_ln"], p[f"{l}.o"] = (w[sa + "kv_a_proj_with_mqa.weight"],
                                                        w[sa + "kv_a_layernorm.weight"], w[sa + "o_proj.weight"])
        if sa + "kv_b_proj.weight" in w:
            p[f"{l}.kvb"] = w[sa + "kv_b_proj.weight"]
        else:  # mlx-lm: embed_q [nh, r, dn] (= W_UK[h]^T), unembed_out [nh, dv, r] (= W_UV[h])
            uk, uv = w[sa + "embed_q.weight"], w[sa + "unembed_out.weight"]
            assert uk.shape == (nh, r, dn) and uv.shape == (nh, dv, r), (uk.shape, uv.shape)
            p[f"{l}.kvb"] = np.concatenate([uk.transpose(0, 2, 1), uv], axis=1).reshape(nh * (dn + dv), r)
        m = a + "mlp."
        if l < c["first_dense"]:
            p[f"{l}.g"], p[f"{l}.u"], p[f"{l}.d"] = (w[m + "gate_proj.weight"], w[m + "up_proj.weight"],
                                                     w[m + "down_proj.weight"])
            continue
        p[f"{l}.router"], p[f"{l}.bias"] = w[m + "gate.weight"], w[m + "gate.e_score_correction_bias"]
        if m + "switch_mlp.gate_proj.weight" in w:
            for s_, n_ in (("Wg", "gate_proj"), ("Wu", "up_proj"), ("Wd", "down_proj")):
                p[f"{l}.{s_}"] = w[m + f"switch_mlp.{n_}.weight"]
        elif m + "experts.gate_up_proj" in w:  # transformers' in-memory fused layout [E, 2I, H] (gate rows first)
            gu = w[m + "experts.gate_up_proj"]
            I = gu.shape[1] // 2
            p[f"{l}.Wg"], p[f"{l}.Wu"], p[f"{l}.Wd"] = gu[:, :I], gu[:, I:], w[m + "experts.down_proj"]
        else:  # per-expert (released DeepSeek-V3, and what transformers 5.23 save_pretrained writes)
            for s_, n_ in (("Wg", "gate_proj"), ("Wu", "up_proj"), ("Wd", "down_proj")):
                p[f"{l}.{s_}"] = np.stack([w[m + f"experts.{e}.{n_}.weight"] for e in range(c["E"])])
        if c["n_shared"]:
            for s_, n_ in (("sg", "gate_proj"), ("su", "up_proj"), ("sd", "down_proj")):
                p[f"{l}.{s_}"] = w[m + f"shared_experts.{n_}.weight"]
    return p, info


# ------------------------------------------------------------------------------------------------ math
def rmsnorm(x, w, eps, variant=""):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * ((1.0 + w) if variant == "norm_1_plus_w" else w)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def rope_tables(c, T, variant, dt, pos0=0):
    """cos, sin [T, dr/2] (times attention_factor) and the softmax scale, transformers' YaRN semantics."""
    r, d = c["rope"], c["dr"]
    base = r["theta"]
    pos_freqs = base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    inv = 1.0 / pos_freqs
    af, m2 = 1.0, 1.0
    if r["type"] == "yarn" and variant != "plain_rope":
        def corr(rot):
            return d * math.log(r["orig"] / (rot * 2 * math.pi)) / (2 * math.log(base))
        lo, hi = corr(r["beta_fast"]), corr(r["beta_slow"])
        if r["truncate"] and variant != "yarn_no_truncate":
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, d - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(d // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
        inv = inv * (1 - ramp) + inv / r["factor"] * ramp
        af = 1.0 if variant == "no_attention_factor" else r["af"]
        m2 = 1.0 if variant == "no_mscale" else r["scale_m2"]
    head = c["r"] + c["dr"] if variant == "scale_latent_dim" else c["dn"] + c["dr"]
    ang = (pos0 + np.arange(T, dtype=np.float64))[:, None] * inv[None, :]
    return (np.cos(ang) * af).astype(dt), (np.sin(ang) * af).astype(dt), dt(head ** -0.5 * m2)


def apply_rope(x, cos, sin, interleave):
    """x [T, n, dr]. Interleaved: pairs (2i, 2i+1) rotated by angle i (DeepSeek's layout; transformers writes the
    result de-interleaved [evens | odds], which leaves every dot product unchanged). Else pairs (i, i + dr/2)."""
    c, s = cos[:, None, :], sin[:, None, :]
    if interleave:
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
        return out
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def mla_project(x, p, l, c, variant, cos, sin):
    """-> q_nope [T, nh, dn], q_pe [T, nh, dr] (rotated), c_kv [T, r], k_pe [T, dr] (rotated)."""
    T, nh, dn, dr, r = x.shape[0], c["nh"], c["dn"], c["dr"], c["r"]
    lat_eps = c["eps"] if variant == "latent_norm_eps_config" else LATENT_NORM_EPS
    if c["q_lora"] is None:
        q = x @ p[f"{l}.q"].T
    else:
        q = rmsnorm(x @ p[f"{l}.qa"].T, p[f"{l}.qa_ln"], lat_eps, variant) @ p[f"{l}.qb"].T
    q = q.reshape(T, nh, dn + dr)
    if variant == "rope_first_split":
        q_pe, q_nope = q[..., :dr], q[..., dr:]
    else:
        q_nope, q_pe = q[..., :dn], q[..., dn:]
    kv = x @ p[f"{l}.kva"].T
    if variant == "kv_a_rope_first":
        k_pe, ckv = kv[:, :dr], kv[:, dr:]
    else:
        ckv, k_pe = kv[:, :r], kv[:, r:]
    if variant != "no_kv_a_norm":
        ckv = rmsnorm(ckv, p[f"{l}.kva_ln"], lat_eps, variant)
    inter = c["interleave"] != (variant == "non_interleaved_rope")
    q_pe = apply_rope(q_pe, cos, sin, inter)
    k_pe = apply_rope(k_pe[:, None, :], cos, sin, inter)[:, 0]
    return q_nope, q_pe, ckv, k_pe


def kvb_split(p, l, c, variant):
    """-> W_UK [nh, dn, r], W_UV [nh, dv, r] from kv_b_proj [nh*(dn+dv), r]."""
    nh, dn, dv, r = c["nh"], c["dn"], c["dv"], c["r"]
    W = p[f"{l}.kvb"]
    if variant == "kv_b_blocked":  # all heads' k_nope rows first, then all heads' v rows (wrong)
        return W[: nh * dn].reshape(nh, dn, r), W[nh * dn:].reshape(nh, dv, r)
    W = W.reshape(nh, dn + dv, r)
    if variant == "kv_b_v_first":
        return W[:, dv:], W[:, :dv]
    return W[:, :dn], W[:, dn:]


def attention_naive(x, p, l, c, variant, cos, sin, scale):
    T, nh = x.shape[0], c["nh"]
    q_nope, q_pe, ckv, k_pe = mla_project(x, p, l, c, variant, cos, sin)
    Wuk, Wuv = kvb_split(p, l, c, variant)
    k_nope = np.einsum("hdr,tr->thd", Wuk, ckv)
    v = np.einsum("hdr,tr->thd", Wuv, ckv)
    s = (np.einsum("thd,uhd->htu", q_nope, k_nope) + np.einsum("thd,ud->htu", q_pe, k_pe)) * scale
    mask = np.tril(np.ones((T, T), dtype=bool))
    s = np.where(mask[None], s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    pr = e / e.sum(-1, keepdims=True)
    o = np.einsum("htu,uhd->thd", pr, v).reshape(T, -1)
    return o @ p[f"{l}.o"].T


def router(x, p, l, c, variant):
    """-> (chosen expert ids [T, K], weights [T, K]) with transformers' DeepseekV3TopkRouter semantics."""
    E, K, ng, tg = c["E"], c["K"], c["n_group"], c["topk_group"]
    logits = x @ p[f"{l}.router"].T
    if variant == "softmax_scores":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        s = e / e.sum(-1, keepdims=True)
    else:
        s = sigmoid(logits)
    choice = s if variant == "no_bias_choice" else s + p[f"{l}.bias"]
    T = x.shape[0]
    if ng > 1 and variant != "no_group_limit":
        g = choice.reshape(T, ng, E // ng)
        if variant == "group_score_max":
            gs = g.max(-1)
        elif variant == "group_score_sum_all":
            gs = g.sum(-1)
        else:
            gs = np.sort(g, axis=-1)[..., -2:].sum(-1)  # sum of each group's top-2 biased scores
        keep = np.argsort(-gs, axis=-1, kind="stable")[:, :tg]
        gmask = np.zeros((T, ng), dtype=bool)
        np.put_along_axis(gmask, keep, True, axis=-1)
        fill = 0.0 if variant == "mlx_group_mask_zero" else -np.inf  # mlx-lm writes 0.0 into dropped groups
        choice = np.where(np.repeat(gmask, E // ng, axis=-1), choice, fill)
    idx = np.argsort(-choice, axis=-1, kind="stable")[:, :K]
    wt = np.take_along_axis(choice if variant == "bias_in_weights" else s, idx, -1)
    if c["norm_topk"] and variant != "no_norm_topk":
        wt = wt / (wt.sum(-1, keepdims=True) + 1e-20)
    if variant != "no_routed_scaling":
        wt = wt * c["rsf"]
    return idx, wt


def glu(x, g, u, d, variant):
    a, b = x @ g.T, x @ u.T
    if variant == "swap_gate_up":
        a, b = b, a
    return (silu(a) * b) @ d.T


def mlp(x, p, l, c, variant):
    if l < c["first_dense"]:
        return glu(x, p[f"{l}.g"], p[f"{l}.u"], p[f"{l}.d"], variant)
    idx, wt = router(x, p, l, c, variant)
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(c["K"]):
            e = idx[t, j]
            y[t] += wt[t, j] * glu(x[t:t + 1], p[f"{l}.Wg"][e], p[f"{l}.Wu"][e], p[f"{l}.Wd"][e], variant)[0]
    if c["n_shared"] and variant != "no_shared_experts":
        y = y + glu(x, p[f"{l}.sg"], p[f"{l}.su"], p[f"{l}.sd"], variant)
    return y


def forward(c, p, ids, variant="exact", dt=np.float64):
    T = len(ids)
    cos, sin, scale = rope_tables(c, T, variant, dt)
    x = p["embed"][ids]
    for l in range(c["L"]):
        x = x + attention_naive(rmsnorm(x, p[f"{l}.ln1"], c["eps"], variant), p, l, c, variant, cos, sin, scale)
        x = x + mlp(rmsnorm(x, p[f"{l}.ln2"], c["eps"], variant), p, l, c, variant)
    return rmsnorm(x, p["norm"], c["eps"], variant) @ p["lm_head"].T


def absorbed_weights(p, l, c):
    """The weight-absorption matrices of layer l:
         A_q[h] = W_UK[h]^T                  [r, dn]   q_lat[h] = A_q[h] q_nope[h]      (score = q_lat . c_kv)
         A_qc[h] = W_UK[h]^T W_qb_nope[h]    [r, q_lora or H]  (q_lat[h] straight from c_q, q_nope never formed)
         A_o[h] = W_o[:, h dv:(h+1) dv] W_UV[h]   [H, r]   out = sum_h A_o[h] ctx_lat[h]"""
    nh, dn, dv, dr = c["nh"], c["dn"], c["dv"], c["dr"]
    Wuk, Wuv = kvb_split(p, l, c, "")
    Wq = p[f"{l}.q"] if c["q_lora"] is None else p[f"{l}.qb"]
    Wq_nope = Wq.reshape(nh, dn + dr, -1)[:, :dn]  # [nh, dn, q_in]
    A_qc = np.einsum("hdr,hdi->hri", Wuk, Wq_nope)  # [nh, r, q_in]
    Wq_pe = Wq.reshape(nh, dn + dr, -1)[:, dn:]  # [nh, dr, q_in]
    A_o = np.einsum("ohv,hvr->hor", p[f"{l}.o"].reshape(c["H"], nh, dv), Wuv)  # [nh, H, r]
    return A_qc, Wq_pe, A_o


def forward_latent(c, p, ids, dt=np.float64):
    """Weight-absorbed MLA over a latent cache, one token at a time (what a decode kernel does): per layer the cache
    holds only c_kv [r] (after kv_a_layernorm) and k_pe [dr] (after RoPE, shared by all heads) per token; per head
    score = scale * (q_lat[h] . c_kv + q_pe[h] . k_pe), ctx_lat[h] = sum_u p c_kv[u], out = sum_h A_o[h] ctx_lat[h]."""
    T, L, nh, r, dr = len(ids), c["L"], c["nh"], c["r"], c["dr"]
    cos, sin, scale = rope_tables(c, T, "exact", dt)
    W = [absorbed_weights(p, l, c) for l in range(L)]
    cache_c = [np.zeros((0, r), dtype=dt) for _ in range(L)]
    cache_k = [np.zeros((0, dr), dtype=dt) for _ in range(L)]
    rows = []
    for t in range(T):
        x = p["embed"][ids[t:t + 1]]
        for l in range(L):
            h_in = rmsnorm(x, p[f"{l}.ln1"], c["eps"])
            qin = h_in if c["q_lora"] is None else rmsnorm(h_in @ p[f"{l}.qa"].T, p[f"{l}.qa_ln"], LATENT_NORM_EPS)
            A_qc, Wq_pe, A_o = W[l]
            q_lat = np.einsum("hri,ti->thr", A_qc, qin)[0]  # [nh, r]
            q_pe = apply_rope(np.einsum("hdi,ti->thd", Wq_pe, qin), cos[t:t + 1], sin[t:t + 1], c["interleave"])[0]
            kv = h_in @ p[f"{l}.kva"].T
            ckv = rmsnorm(kv[:, :r], p[f"{l}.kva_ln"], LATENT_NORM_EPS)
            k_pe = apply_rope(kv[:, None, r:], cos[t:t + 1], sin[t:t + 1], c["interleave"])[:, 0]
            cache_c[l] = np.concatenate([cache_c[l], ckv])
            cache_k[l] = np.concatenate([cache_k[l], k_pe])
            s = (q_lat @ cache_c[l].T + q_pe @ cache_k[l].T) * scale  # [nh, t+1]
            e = np.exp(s - s.max(-1, keepdims=True))
            pr = e / e.sum(-1, keepdims=True)
            ctx = pr @ cache_c[l]  # [nh, r]
            x = x + np.einsum("hor,hr->o", A_o, ctx)[None]
            x = x + mlp(rmsnorm(x, p[f"{l}.ln2"], c["eps"]), p, l, c, "exact")
        rows.append((rmsnorm(x, p["norm"], c["eps"]) @ p["lm_head"].T)[0])
    return np.stack(rows)


def round_bf16(a):
    """float32 -> nearest bfloat16 (ties to even), returned as float32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32)


def variant_applies(v, c):
    moe = c["E"] and c["L"] > c["first_dense"]
    if v in ("no_group_limit", "group_score_max", "group_score_sum_all", "mlx_group_mask_zero"):
        return moe and c["n_group"] > 1 and c["topk_group"] < c["n_group"] and (
            v != "group_score_sum_all" or c["E"] // c["n_group"] > 2)
    if v in ("no_bias_choice", "bias_in_weights", "no_routed_scaling", "no_norm_topk", "softmax_scores",
             "swap_gate_up"):
        return moe
    if v == "no_shared_experts":
        return moe and c["n_shared"] > 0
    if v in ("plain_rope", "yarn_no_truncate", "no_mscale"):
        return c["rope"]["type"] == "yarn" and (v != "no_mscale" or c["rope"]["scale_m2"] != 1.0)
    if v == "no_attention_factor":
        return c["rope"]["type"] == "yarn" and abs(c["rope"]["af"] - 1.0) > 1e-12
    if v == "scale_latent_dim":
        return c["r"] != c["dn"]
    if v == "latent_norm_eps_config":
        return c["eps"] != LATENT_NORM_EPS
    return True


def check_dir(d, variants=True, assert_features=True):
    cfg, w, dts = load(d)
    c = parse_config(cfg)
    p, info = canonical(cfg, w, dts, c)
    g = json.load(open(os.path.join(d, "golden.json")))
    ids, P = np.array(g["ids"]), g["prompt_len"]
    ref = np.array(g["logits"], dtype=np.float64)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    out = forward(c, p64, ids)
    err = float(np.abs(out - ref).max())
    greedy_ok = list(out[P - 1: -1].argmax(-1)) == list(ids[P:])
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    o32 = forward(c, p32, ids, dt=np.float32)
    lat = forward_latent(c, p64, ids)
    lat32 = forward_latent(c, p32, ids, dt=np.float32)
    res = dict(name=os.path.basename(os.path.normpath(d)), rows=ref.shape[0], prompt_len=P, max_diff=err,
               greedy_ok=greedy_ok, f32_floor=float(np.abs(o32 - out).max()),
               latent_vs_naive=float(np.abs(lat - out).max()), latent_vs_golden=float(np.abs(lat - ref).max()),
               latent32_vs_naive=float(np.abs(lat32 - out).max()), dequant=info,
               dtypes=sorted(set(dts.values())), variants={})
    res["ok"] = (err <= g.get("atol", 2e-3) and greedy_ok and ref.shape == (len(ids), c["V"])
                 and res["latent_vs_naive"] <= LATENT_TOL_F64 and res["latent_vs_golden"] <= g.get("atol", 2e-3))
    if variants:
        for v in ASSERTED + REPORTED:
            if v == "dequant_to_bf16":
                if info["fp8"]:  # (the stored BF16 tensors are unchanged by the rounding; the F32 bias is kept)
                    pb = {k: (v_ if k.endswith(".bias") else round_bf16(v_)).astype(np.float64) for k, v_ in p.items()}
                    res["variants"][v] = float(np.abs(forward(c, pb, ids) - ref).max())
            elif variant_applies(v, c):
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
              f"f32 noise floor {r['f32_floor']:.2e}, dtypes {r['dtypes']}, dequantized {r['dequant']}")
        print(f"    latent-cache absorbed decode: vs naive f64 {r['latent_vs_naive']:.2e}, f32 {r['latent32_vs_naive']:.2e}"
              f", vs golden {r['latent_vs_golden']:.2e}")
        if r["variants"]:
            print("    wrong variants, max|diff| vs golden (must be > %g where asserted): " % FEATURE_MIN +
                  ", ".join(f"{k}{'' if k in ASSERTED else '*'} {v:.3g}" for k, v in r["variants"].items()) +
                  ("   (* = reported only)" if any(k not in ASSERTED for k in r["variants"]) else ""))
        if r.get("weak"):
            print(f"    TOO WEAK (feature not exercised): {r['weak']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
