#!/usr/bin/env python3
"""Empirical check of the gpt-oss facts written down in gpt_oss.md.

CPU only, a few seconds.  What it does:

  A. Builds a tiny random GptOssForCausalLM (transformers), re-initialises every
     tensor with large-ish random values (so the SwiGLU clamps, the sinks, the
     router bias and the sliding window all matter), and compares its logits
     with an independent float64 numpy forward written from the fact sheet.
     It also runs deliberately *wrong* variants of the numpy forward to show the
     test can tell them apart (window W+1, no sinks, concatenated gate/up, ...).
  B. Encodes the expert weights to MXFP4 in the original OpenAI/HF layout
     (`*_blocks` [E, rows, cols/32, 16] uint8, `*_scales` [E, rows, cols/32] uint8),
     writes a tiny HF-style MXFP4 checkpoint folder, loads it back with
     `GptOssForCausalLM.from_pretrained` (CPU => transformers' Mxfp4Dequantize
     path) and checks the dequantized parameters and the logits.
  C. Loads that same folder with mlx-lm (`mlx_lm.utils.load_model`: sanitize +
     mode="mxfp4" quantization), compares logits with the numpy forward, both
     with HF's YaRN (truncate=False) and with mlx-lm's YaRN (always floor/ceil).
     Also prints the `quantization` config entry mlx-lm builds.

Usage:  python3 gpt_oss_verify.py
"""
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

torch.manual_seed(0)
np.random.seed(0)

from transformers import GptOssConfig, GptOssForCausalLM  # noqa: E402

# ----------------------------------------------------------------------------
# tiny config
# ----------------------------------------------------------------------------
CFG = dict(
    num_hidden_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_local_experts=4,
    num_experts_per_tok=2,
    intermediate_size=32,
    sliding_window=4,
    vocab_size=128,
    rms_norm_eps=1e-5,
    swiglu_limit=7.0,
    max_position_embeddings=131072,
    tie_word_embeddings=False,
    attention_bias=True,
)
# same rope block as the released config.json files (legacy key `rope_scaling`)
ROPE_SCALING = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
ROPE_THETA = 150000.0
T = 10  # tokens
ALPHA = 1.702

FP4_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
)


# ----------------------------------------------------------------------------
# numpy reference forward (float64), written from the fact sheet
# ----------------------------------------------------------------------------
def yarn_inv_freq(d, base, factor, orig, beta_fast, beta_slow, truncate):
    pos_freqs = base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    extrap = 1.0 / pos_freqs
    interp = 1.0 / (factor * pos_freqs)

    def corr_dim(rot):
        return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrap_factor = 1.0 - ramp  # 1 => keep original frequency (high-freq dims)
    inv_freq = interp * (1 - extrap_factor) + extrap * extrap_factor
    attn_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, attn_factor, (low, high)


def rope_half_split(x, pos, inv_freq, attn_factor):
    # x: [T, n, d]; pairs (i, i + d/2) rotate by angle pos * inv_freq[i]
    d = x.shape[-1]
    ang = pos[:, None] * inv_freq[None, :]  # [T, d/2]
    c = (np.cos(ang) * attn_factor)[:, None, :]
    s = (np.sin(ang) * attn_factor)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def rmsnorm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def attention(x, p, li, cfg, rope, variant):
    H, nh, nkv, d = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    Tn = x.shape[0]
    q = (x @ p[f"l{li}.q_w"].T + p[f"l{li}.q_b"]).reshape(Tn, nh, d)
    k = (x @ p[f"l{li}.k_w"].T + p[f"l{li}.k_b"]).reshape(Tn, nkv, d)
    v = (x @ p[f"l{li}.v_w"].T + p[f"l{li}.v_b"]).reshape(Tn, nkv, d)
    pos = np.arange(Tn, dtype=np.float64)
    inv_freq, af = rope
    if variant == "interleaved_rope":
        def rot(t):
            ang = pos[:, None] * inv_freq[None, :]
            c, s = (np.cos(ang) * af)[:, None, :], (np.sin(ang) * af)[:, None, :]
            a, b = t[..., 0::2], t[..., 1::2]
            out = np.empty_like(t)
            out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
            return out
        q, k = rot(q), rot(k)
    else:
        q = rope_half_split(q, pos, inv_freq, af)
        k = rope_half_split(k, pos, inv_freq, af)
    sliding = cfg["layer_types"][li] == "sliding_attention"
    W = cfg["sliding_window"] + (1 if variant == "window_plus_1" else 0)
    i_idx, j_idx = np.arange(Tn)[:, None], np.arange(Tn)[None, :]
    allowed = j_idx <= i_idx
    if sliding:
        allowed &= j_idx > i_idx - W  # W keys including the query itself
    out = np.zeros((Tn, nh, d))
    n_rep = nh // nkv
    for h in range(nh):
        kv = h // n_rep if variant != "gqa_modulo" else h % nkv
        logits = (q[:, h, :] @ k[:, kv, :].T) * d ** -0.5
        logits = np.where(allowed, logits, -np.inf)
        if variant == "no_sinks":
            m = logits.max(-1, keepdims=True)
            e = np.exp(logits - m)
            probs = e / e.sum(-1, keepdims=True)
        else:
            sink = np.full((Tn, 1), p[f"l{li}.sinks"][h])
            comb = np.concatenate([logits, sink], axis=-1)
            m = comb.max(-1, keepdims=True)
            e = np.exp(comb - m)
            probs = (e / e.sum(-1, keepdims=True))[:, :-1]  # drop the sink column
        out[:, h, :] = probs @ v[:, kv, :]
    return out.reshape(Tn, nh * d) @ p[f"l{li}.o_w"].T + p[f"l{li}.o_b"]


def moe(x, p, li, cfg, variant):
    E, k, lim = cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["swiglu_limit"]
    logits = x @ p[f"l{li}.router_w"].T + p[f"l{li}.router_b"]  # [T, E]
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        if variant == "softmax_then_topk":
            full = np.exp(logits[t] - logits[t].max())
            full /= full.sum()
            idx = np.argsort(-logits[t])[:k]
            w = full[idx]
        else:
            idx = np.argsort(-logits[t])[:k]
            tl = logits[t, idx]
            w = np.exp(tl - tl.max())
            w /= w.sum()
        for e_, wt in zip(idx, w):
            gu = x[t] @ p[f"l{li}.gate_up"][e_] + p[f"l{li}.gate_up_b"][e_]  # [2I], weight is [H, 2I]
            if variant == "concat_gate_up":
                I = gu.shape[0] // 2
                gate, up = gu[:I], gu[I:]
            else:
                gate, up = gu[0::2], gu[1::2]
            if variant != "no_clamp":
                gate = np.minimum(gate, lim)
                up = np.clip(up, -lim, lim)
            glu = gate * (1.0 / (1.0 + np.exp(-ALPHA * gate)))
            h = (up + 1.0) * glu if variant != "no_plus_one" else up * glu
            o = h @ p[f"l{li}.down"][e_] + p[f"l{li}.down_b"][e_]  # weight is [I, H]
            y[t] += wt * o
    return y


def np_forward(p, ids, cfg, rope, variant="exact"):
    x = p["embed"][ids]
    eps = cfg["rms_norm_eps"]
    for li in range(cfg["num_hidden_layers"]):
        h = rmsnorm(x, p[f"l{li}.ln1"], eps)
        x = x + attention(h, p, li, cfg, rope, variant)
        h = rmsnorm(x, p[f"l{li}.ln2"], eps)
        x = x + moe(h, p, li, cfg, variant)
    x = rmsnorm(x, p["norm"], eps)
    return x @ p["lm_head"].T


def params_from_hf(model, cfg):
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    p = {"embed": sd["model.embed_tokens.weight"], "norm": sd["model.norm.weight"], "lm_head": sd["lm_head.weight"]}
    for li in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{li}."
        m = {
            "ln1": "input_layernorm.weight", "ln2": "post_attention_layernorm.weight",
            "q_w": "self_attn.q_proj.weight", "q_b": "self_attn.q_proj.bias",
            "k_w": "self_attn.k_proj.weight", "k_b": "self_attn.k_proj.bias",
            "v_w": "self_attn.v_proj.weight", "v_b": "self_attn.v_proj.bias",
            "o_w": "self_attn.o_proj.weight", "o_b": "self_attn.o_proj.bias",
            "sinks": "self_attn.sinks",
            "router_w": "mlp.router.weight", "router_b": "mlp.router.bias",
            "gate_up": "mlp.experts.gate_up_proj", "gate_up_b": "mlp.experts.gate_up_proj_bias",
            "down": "mlp.experts.down_proj", "down_b": "mlp.experts.down_proj_bias",
        }
        for short, name in m.items():
            p[f"l{li}.{short}"] = sd[pre + name]
    return p


# ----------------------------------------------------------------------------
# MXFP4 encode / decode (numpy), original OpenAI layout
# ----------------------------------------------------------------------------
def mxfp4_encode(w_rows_cols):
    """w: [..., R, C] (C % 32 == 0) -> blocks [..., R, C/32, 16] uint8, scales [..., R, C/32] uint8.
    Element 2j of a group -> low nibble of byte j, element 2j+1 -> high nibble."""
    *pre, R, C = w_rows_cols.shape
    g = w_rows_cols.reshape(*pre, R, C // 32, 32)
    amax = np.abs(g).max(-1, keepdims=True)
    e = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-30))) - 2, -127)
    e = np.clip(e, -127, 127)
    scaled = g / np.exp2(e)
    mag = np.abs(scaled)
    pos = FP4_VALUES[:8]
    code = np.abs(mag[..., None] - pos).argmin(-1)  # 0..7
    code = code + 8 * (scaled < 0)
    code = code.astype(np.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).astype(np.uint8)
    scales = (e[..., 0] + 127).astype(np.uint8)
    return blocks, scales


def mxfp4_decode(blocks, scales):
    lo = blocks & 0x0F
    hi = blocks >> 4
    codes = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], blocks.shape[-1] * 2)
    vals = FP4_VALUES[codes] * np.exp2(scales.astype(np.int32) - 127)[..., None]
    return vals.reshape(*blocks.shape[:-2], -1)  # [..., R, C]


# ----------------------------------------------------------------------------
def main():
    results = {}
    cfg = GptOssConfig(**CFG, rope_scaling=dict(ROPE_SCALING), rope_theta=ROPE_THETA, attn_implementation="eager")
    print("config.layer_types       :", cfg.layer_types)
    print("config.rope_parameters   :", cfg.rope_parameters)
    print("config.swiglu_alpha      :", cfg.swiglu_alpha)
    model = GptOssForCausalLM(cfg).float().eval()
    print("attn implementation      :", model.config._attn_implementation)
    print("experts implementation   :", getattr(model.config, "_experts_implementation", None))

    # big-ish random re-init so clamps / sinks / window all matter
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if "norm" in name:
                prm.copy_(1.0 + 0.3 * torch.randn(prm.shape, generator=g))
            elif "sinks" in name:
                prm.copy_(1.5 * torch.randn(prm.shape, generator=g))
            elif name.endswith("bias") or name.endswith("_bias"):
                prm.copy_(0.5 * torch.randn(prm.shape, generator=g))
            elif "experts" in name:
                prm.copy_(0.6 * torch.randn(prm.shape, generator=g))
            else:
                prm.copy_(0.25 * torch.randn(prm.shape, generator=g))

    print("\n== tensor names / shapes (bf16-layout state_dict, layer 0) ==")
    for k, v in model.state_dict().items():
        if ".layers.1." in k:
            continue
        print(f"  {k:50s} {tuple(v.shape)} {v.dtype}")

    ids = torch.tensor([[5, 17, 99, 3, 64, 127, 0, 42, 7, 88]])
    with torch.no_grad():
        hf_logits = model(ids).logits[0].double().numpy()

    cfgd = dict(CFG, layer_types=cfg.layer_types)
    inv_freq, af, (lo, hi) = yarn_inv_freq(CFG["head_dim"], ROPE_THETA, 32.0, 4096, 32.0, 1.0, truncate=False)
    # cross-check inv_freq / attention factor against transformers' rotary module
    hf_inv = model.model.rotary_emb.inv_freq.double().numpy()
    print("\nYaRN correction range (truncate=False): low=%.4f high=%.4f" % (lo, hi))
    print("max |inv_freq numpy - HF|       : %.3e" % np.abs(hf_inv - inv_freq).max())
    print("attention_scaling HF / numpy    : %.6f / %.6f" % (model.model.rotary_emb.attention_scaling, af))

    p = params_from_hf(model, cfgd)
    ref = np_forward(p, ids[0].numpy(), cfgd, (inv_freq, af))
    diff = np.abs(ref - hf_logits).max()
    scale = np.abs(hf_logits).max()
    print("\n== A. transformers fp32 logits vs numpy fp64 forward ==")
    print(f"max|logit| = {scale:.3f}   max abs diff = {diff:.3e}   rel = {diff / scale:.3e}")
    results["A_exact"] = float(diff)

    print("wrong variants (should all be large):")
    for var in ["window_plus_1", "no_sinks", "concat_gate_up", "no_clamp", "no_plus_one",
                "softmax_then_topk", "interleaved_rope", "gqa_modulo"]:
        d_ = np.abs(np_forward(p, ids[0].numpy(), cfgd, (inv_freq, af), variant=var) - hf_logits).max()
        print(f"  {var:20s} max abs diff = {d_:.3e}")
        results["A_" + var] = float(d_)
    inv_t, af_t, _ = yarn_inv_freq(CFG["head_dim"], ROPE_THETA, 32.0, 4096, 32.0, 1.0, truncate=True)
    d_ = np.abs(np_forward(p, ids[0].numpy(), cfgd, (inv_t, af_t)) - hf_logits).max()
    print(f"  {'yarn_truncate=True':20s} max abs diff = {d_:.3e}")
    results["A_yarn_truncate_true"] = float(d_)

    # default (non-eager) experts implementation, if different, must agree too
    try:
        cfg2 = GptOssConfig(**CFG, rope_scaling=dict(ROPE_SCALING), rope_theta=ROPE_THETA)
        m2 = GptOssForCausalLM(cfg2).float().eval()
        m2.load_state_dict(model.state_dict())
        with torch.no_grad():
            l2 = m2(ids).logits[0].double().numpy()
        print("default implementations (attn=%s, experts=%s): max abs diff vs numpy = %.3e"
              % (m2.config._attn_implementation, getattr(m2.config, "_experts_implementation", None),
                 np.abs(l2 - ref).max()))
    except Exception as ex:  # pragma: no cover
        print("default-implementation run failed:", repr(ex))

    # --------------------------------------------------------------------
    # B. MXFP4 checkpoint -> transformers dequantize path
    # --------------------------------------------------------------------
    print("\n== B. MXFP4 checkpoint (original layout) -> transformers Mxfp4Dequantize ==")
    from safetensors.numpy import save_file

    tmp = tempfile.mkdtemp(prefix="gptoss_tiny_mxfp4_")
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = {}
    deq = {}
    for k, v in sd.items():
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
            orig_layout = np.ascontiguousarray(np.swapaxes(v, 1, 2))  # HF [E,in,out] -> original [E,out,in]
            blocks, scales = mxfp4_encode(orig_layout.astype(np.float64))
            tensors[k + "_blocks"] = blocks
            tensors[k + "_scales"] = scales
            deq[k] = np.swapaxes(mxfp4_decode(blocks, scales), 1, 2)  # back to [E,in,out]
        else:
            tensors[k] = v
    for k in list(tensors):
        if k.endswith("_blocks") or k.endswith("_scales"):
            print(f"  {k:50s} {tensors[k].shape} {tensors[k].dtype}")
    save_file(tensors, os.path.join(tmp, "model.safetensors"))
    conf = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        **CFG,
        "layer_types": cfg.layer_types,
        "rope_theta": ROPE_THETA,
        "rope_scaling": ROPE_SCALING,
        "torch_dtype": "float32",
        "quantization_config": {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
        },
    }
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(conf, f, indent=1)

    # On CPU transformers always dequantizes pre-quantized MXFP4 (quantizer_mxfp4.py); asking for
    # dequantize=True explicitly also skips the `accelerate` requirement of validate_environment.
    from transformers import Mxfp4Config
    mq = GptOssForCausalLM.from_pretrained(
        tmp, dtype=torch.float32, quantization_config=Mxfp4Config(dequantize=True)).eval()
    for li in range(CFG["num_hidden_layers"]):
        for proj in ["gate_up_proj", "down_proj"]:
            k = f"model.layers.{li}.mlp.experts.{proj}"
            got = mq.state_dict()[k].double().numpy()
            dd = np.abs(got - deq[k]).max()
            print(f"  loaded {k:42s} shape {tuple(got.shape)}  max|HF dequant - numpy decode| = {dd:.1e}")
            results["B_param_" + k] = float(dd)
    with torch.no_grad():
        lq = mq(ids).logits[0].double().numpy()
    pq = params_from_hf(model, cfgd)
    for li in range(CFG["num_hidden_layers"]):
        pq[f"l{li}.gate_up"] = deq[f"model.layers.{li}.mlp.experts.gate_up_proj"]
        pq[f"l{li}.down"] = deq[f"model.layers.{li}.mlp.experts.down_proj"]
    refq = np_forward(pq, ids[0].numpy(), cfgd, (inv_freq, af))
    dq = np.abs(refq - lq).max()
    print(f"  logits: HF(MXFP4 dequant) vs numpy(dequant weights) max abs diff = {dq:.3e}")
    print(f"  (quantization effect: HF(MXFP4) vs HF(original fp32) = {np.abs(lq - hf_logits).max():.3e})")
    results["B_logits"] = float(dq)

    # what does transformers 5 write to config.json?
    tmp_save = tempfile.mkdtemp(prefix="gptoss_tiny_saved_cfg_")
    cfg.save_pretrained(tmp_save)
    saved = json.load(open(os.path.join(tmp_save, "config.json")))
    print("  transformers-5 save_pretrained config keys: rope_scaling" +
          (" PRESENT" if "rope_scaling" in saved else " ABSENT") +
          ", rope_parameters" + (" PRESENT" if "rope_parameters" in saved else " ABSENT") +
          ", rope_theta(top-level)" + (" PRESENT" if "rope_theta" in saved else " ABSENT"))
    print("  saved rope_parameters =", saved.get("rope_parameters"))
    shutil.rmtree(tmp_save, ignore_errors=True)

    # --------------------------------------------------------------------
    # C. mlx-lm on the same folder
    # --------------------------------------------------------------------
    print("\n== C. mlx-lm load_model(MXFP4 folder) ==")
    try:
        import mlx.core as mx
        from pathlib import Path
        from mlx_lm.utils import load_model, quantize_model

        mm, mcfg = load_model(Path(tmp))
        print("  mlx config['quantization'] after load:", mcfg.get("quantization"))
        from mlx.utils import tree_flatten
        for k, v in tree_flatten(mm.parameters()):
            if ".layers.0." in k and ("experts" in k or "router" in k or "sinks" in k):
                print(f"  mlx {k:48s} {tuple(v.shape)} {v.dtype}")
        out = mm(mx.array(ids.numpy()))
        ml = np.array(out[0].astype(mx.float32)).astype(np.float64)
        d_hf = np.abs(ml - refq).max()
        inv_t, af_t, (lo_t, hi_t) = yarn_inv_freq(CFG["head_dim"], ROPE_THETA, 32.0, 4096, 32.0, 1.0, truncate=True)
        refq_t = np_forward(pq, ids[0].numpy(), cfgd, (inv_t, af_t))
        d_t = np.abs(ml - refq_t).max()
        print(f"  mlx logits vs numpy (HF YaRN, truncate=False): {d_hf:.3e}")
        print(f"  mlx logits vs numpy (YaRN truncate=True, low={lo_t}, high={hi_t}): {d_t:.3e}")
        results["C_mlx_vs_truncFalse"] = float(d_hf)
        results["C_mlx_vs_truncTrue"] = float(d_t)

        # what a further mlx-lm quantization (like the *-MXFP4-Q8 repos) writes
        _, qcfg = quantize_model(mm, dict(mcfg), None, 8, mode="affine")
        q = qcfg["quantization"]
        short = {k: v for k, v in q.items() if not k.startswith("model.layers.1.")}
        print("  after quantize_model(bits=8, affine) on top: quantization =")
        print("   ", json.dumps(short, indent=None))
    except Exception as ex:
        import traceback
        traceback.print_exc()
        print("  mlx part failed:", repr(ex))

    # --------------------------------------------------------------------
    # D. mlx-lm on an *unquantized* HF-layout folder (gate_up_proj [E, H, 2I])
    # --------------------------------------------------------------------
    print("\n== D. mlx-lm load_model(unquantized HF-layout folder, legacy rope_scaling) ==")
    tmp2 = tempfile.mkdtemp(prefix="gptoss_tiny_f32_")
    try:
        import mlx.core as mx
        from pathlib import Path
        from mlx_lm.utils import load_model

        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, os.path.join(tmp2, "model.safetensors"))
        conf2 = {k: v for k, v in conf.items() if k != "quantization_config"}
        with open(os.path.join(tmp2, "config.json"), "w") as f:
            json.dump(conf2, f)
        try:
            load_model(Path(tmp2))
            print("  as-is: loaded (unexpected)")
            results["D_mlx_hf_layout_as_is_loads"] = 1.0
        except ValueError as ex:
            # sanitize() renames `experts.gate_up_proj` -> `experts.gate_proj` (no `.weight`): strict load fails
            print("  as-is: mlx-lm REFUSES it ->", str(ex).splitlines()[0], str(ex).splitlines()[1])
            results["D_mlx_hf_layout_as_is_loads"] = 0.0
        # hand-converted to mlx-lm's sanitized names: gate = cols ::2, up = cols 1::2, transpose to [E, out, in]
        sd_m = {}
        for k, v in sd.items():
            if k.endswith("experts.gate_up_proj"):
                b = k[: -len("gate_up_proj")]
                sd_m[b + "gate_proj.weight"] = np.ascontiguousarray(np.swapaxes(v[..., 0::2], 1, 2))
                sd_m[b + "up_proj.weight"] = np.ascontiguousarray(np.swapaxes(v[..., 1::2], 1, 2))
            elif k.endswith("experts.gate_up_proj_bias"):
                b = k[: -len("gate_up_proj_bias")]
                sd_m[b + "gate_proj.bias"] = np.ascontiguousarray(v[..., 0::2])
                sd_m[b + "up_proj.bias"] = np.ascontiguousarray(v[..., 1::2])
            elif k.endswith("experts.down_proj"):
                sd_m[k + ".weight"] = np.ascontiguousarray(np.swapaxes(v, 1, 2))
            elif k.endswith("experts.down_proj_bias"):
                sd_m[k[: -len("down_proj_bias")] + "down_proj.bias"] = v
            else:
                sd_m[k] = v
        save_file(sd_m, os.path.join(tmp2, "model.safetensors"))
        mm3, _ = load_model(Path(tmp2))
        ml3 = np.array(mm3(mx.array(ids.numpy()))[0].astype(mx.float32)).astype(np.float64)
        inv_t, af_t, _ = yarn_inv_freq(CFG["head_dim"], ROPE_THETA, 32.0, 4096, 32.0, 1.0, truncate=True)
        ref_t = np_forward(p, ids[0].numpy(), cfgd, (inv_t, af_t))
        d_tr = np.abs(ml3 - ref_t).max()
        d_hf = np.abs(ml3 - ref).max()
        print(f"  hand-sanitized (gate_proj/up_proj/down_proj .weight/.bias): vs numpy(trunc YaRN) = {d_tr:.3e},"
              f" vs numpy(HF YaRN) = {d_hf:.3e}")
        results["D_mlx_sanitized_vs_truncTrue"] = float(d_tr)
        # what `mlx_lm.convert -q --q-mode mxfp4` would record for an unquantized gpt-oss
        from mlx_lm.utils import quantize_model
        _, qc = quantize_model(mm3, dict(json.load(open(os.path.join(tmp2, "config.json")))), None, None, mode="mxfp4")
        print("  quantize_model(mode='mxfp4') on unquantized model: quantization =",
              json.dumps({k: v for k, v in qc["quantization"].items() if not k.startswith("model.layers.1.")}))
        mlq = np.array(mm3(mx.array(ids.numpy()))[0].astype(mx.float32)).astype(np.float64)
        print(f"  (after that: logits change by {np.abs(mlq - ml3).max():.3e}; router is 8-bit affine gs64)")
    except Exception as ex:
        import traceback
        traceback.print_exc()
        print("  part D failed:", repr(ex))
    shutil.rmtree(tmp2, ignore_errors=True)

    # --------------------------------------------------------------------
    # E. MLX's own mode="mxfp4" packing == OpenAI packing?
    # --------------------------------------------------------------------
    print("\n== E. mx.quantize(mode='mxfp4') layout ==")
    try:
        import mlx.core as mx
        w = np.random.RandomState(3).randn(8, 96).astype(np.float32) * 3
        qo = mx.quantize(mx.array(w), group_size=32, bits=4, mode="mxfp4")
        wq, sc = qo[0], qo[1]
        print(f"  returns {len(qo)} arrays: weight {wq.shape} {wq.dtype}, scales {sc.shape} {sc.dtype} (no biases)")
        dq = mx.dequantize(wq, sc, group_size=32, bits=4, mode="mxfp4")
        print("  dequantize output dtype:", dq.dtype)
        b = np.array(wq).view(np.uint8).reshape(8, 96 // 32, 16)  # uint32 LE -> bytes == OpenAI blocks
        mine = mxfp4_decode(b, np.array(sc))
        d_e = np.abs(mine - np.array(dq.astype(mx.float32))).max()
        print(f"  numpy OpenAI-style decode of MLX bytes vs mx.dequantize: {d_e:.1e}")
        amax = np.abs(w.reshape(8, 3, 32)).max(-1)
        e_mlx = np.array(sc).astype(int) - 127
        print("  MLX encoder scale rule e = ceil(log2(amax/6)) holds for all groups:",
              bool((e_mlx == np.ceil(np.log2(amax / 6.0))).all()),
              "(our test encoder uses floor(log2(amax))-2, which clips (6,8) to 6; decode is identical)")
        results["E_mlx_layout"] = float(d_e)
    except Exception as ex:
        print("  part E failed:", repr(ex))

    shutil.rmtree(tmp, ignore_errors=True)
    print("\nSUMMARY:", json.dumps(results, indent=1))
    ok = results["A_exact"] < 1e-3 and results["B_logits"] < 1e-3
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
