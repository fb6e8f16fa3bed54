#!/usr/bin/env python3
"""numpy-only check of the MLX fixtures: read model.safetensors + config.json the way
a loader must (no mlx, no torch), dequantize every quantized tensor in float64,
map MLX names to HF names, run the numpy reference forward pass of
tests/fixtures/check_numpy.py and compare with golden.json. It is also an
executable spec of the MLX format as mlx-lm writes it.

    python3 tests/fixtures_mlx/check_numpy.py [DIR ...]    # default: every fixture here
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # do not leave __pycache__ in tests/fixtures
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))
from check_numpy import forward  # noqa: E402  (the HF-name numpy forward pass)


def read_safetensors(path):
    """-> dict name -> array (U32 stays uint32; F32/F16/BF16 -> float64). Offsets are relative to the end of the
    header; mlx does not pad the header, so data is generally not 4-byte aligned in the file (we copy)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf, dt = data[a:b], info["dtype"]
        if dt == "U32":
            arr = np.frombuffer(buf, dtype="<u4")
        elif dt == "F32":
            arr = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif dt == "F16":
            arr = np.frombuffer(buf, dtype="<f2").astype(np.float64)
        elif dt == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            raise ValueError(dt)
        out[name] = arr.reshape(info["shape"])
    return out


def unpack(words, bits):
    """uint32 [..., W] -> codes [..., W*32/bits]. Each row is one little-endian bit stream, least significant bit
    first: code i = stream bits [i*bits, (i+1)*bits), so 3/5/6-bit codes can straddle two u32 words."""
    by = np.ascontiguousarray(words, dtype="<u4").view(np.uint8)
    st = np.unpackbits(by, axis=-1, bitorder="little")
    st = st.reshape(*st.shape[:-1], st.shape[-1] // bits, bits).astype(np.int64)
    return (st << np.arange(bits)).sum(-1)


def load(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    files = sorted(set(json.load(open(os.path.join(d, "model.safetensors.index.json")))["weight_map"].values()))
    t = {}
    for fn in files:
        t.update(read_safetensors(os.path.join(d, fn)))
    q = cfg["quantization"]
    w = {}
    for name, arr in t.items():
        mod, leaf = name.rsplit(".", 1)
        if leaf in ("scales", "biases"):
            continue
        if f"{mod}.scales" in t:  # quantized module: .weight (u32) + .scales + .biases
            o = q.get(mod)
            gs, bits = (o["group_size"], o["bits"]) if isinstance(o, dict) else (q["group_size"], q["bits"])
            sc, bi = t[f"{mod}.scales"], t[f"{mod}.biases"]
            codes = unpack(arr, bits)
            assert codes.shape[-1] == sc.shape[-1] * gs, (name, codes.shape, sc.shape, gs, bits)
            arr = np.repeat(sc, gs, -1) * codes + np.repeat(bi, gs, -1)
        else:
            assert arr.dtype != np.uint32, name
        if ".mlp.switch_mlp." in mod:  # [E, out, in] -> per-expert HF names
            pre, proj = mod.split(".mlp.switch_mlp.")
            for e in range(arr.shape[0]):
                w[f"{pre}.mlp.experts.{e}.{proj}.weight"] = arr[e]
        else:
            w[name] = arr
    return cfg, w


def main():
    dirs = sys.argv[1:] or sorted(
        os.path.join(HERE, d) for d in os.listdir(HERE) if os.path.exists(os.path.join(HERE, d, "golden.json"))
    )
    bad = 0
    for d in dirs:
        cfg, w = load(d)
        g = json.load(open(os.path.join(d, "golden.json")))
        ids, P = g["ids"], g["prompt_len"]
        ref = np.array(g["logits"], dtype=np.float32)
        out = forward(cfg, w, np.array(ids))
        err = np.abs(out - ref).max()
        greedy_ok = list(out[P - 1 : -1].argmax(-1)) == ids[P:]
        ok = err <= g["atol"] and greedy_ok and ref.shape == (len(ids), cfg["vocab_size"])
        bad += not ok
        print(f"{'OK ' if ok else 'BAD'} {os.path.basename(d)}: rows {ref.shape[0]} max|diff| {err:.2e} "
              f"greedy {'ok' if greedy_ok else 'MISMATCH'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
