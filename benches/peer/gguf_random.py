"""Shared by the random-weight GGUF writers (make_gguf_qwen3moe.py,
make_gguf_qwen35moe.py): importing llama.cpp's gguf-py, and random but valid tensor
data (Q4_0 / Q8_0 blocks, f16, small f32)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

DEFAULT_GGUF_PY = None  # or pass --gguf-py / set GGUF_PY; else the installed gguf package


def import_gguf(path: str | None):
    for p in [path, os.environ.get("GGUF_PY"), DEFAULT_GGUF_PY]:
        if p and os.path.isdir(p) and p not in sys.path:
            sys.path.insert(0, p)
    import gguf  # noqa: E402
    return gguf


# ---------------------------------------------------------------------------
# random block generators; each returns a uint8 array of exactly nbytes for
# n "units" (blocks for quantized types, elements for float types)
# ---------------------------------------------------------------------------

SIGNED_SCALES = True  # set from --positive-scales


def _f16_bits(u16: np.ndarray, exp_lo: int) -> np.ndarray:
    """Turn random uint16 into f16 bit patterns with biased exponent exp_lo or
    exp_lo+1 and random mantissa, i.e. |value| in [2^(exp_lo-15), 2^(exp_lo-13)).
    The sign is random unless SIGNED_SCALES is False. (Real Q4_0/Q8_0 files have
    scales of both signs; a random sign cancels the -0.5*d mean of (nibble-8).)"""
    e = (exp_lo + ((u16 >> 10) & 1)).astype(np.uint16)
    mask = np.uint16(0x83FF) if SIGNED_SCALES else np.uint16(0x03FF)
    return (u16 & mask) | (e << np.uint16(10))


def gen_q4_0(rng: np.random.Generator, nblocks: int) -> np.ndarray:
    # block_q4_0: f16 d; uint8 qs[16]  -> 18 bytes, value = (nibble - 8) * d
    buf = np.frombuffer(rng.bytes(nblocks * 18), dtype=np.uint8).copy()
    w = buf.view(np.uint16).reshape(nblocks, 9)
    # |d| in [2^-7, 2^-5) = [0.0078, 0.031), i.e. around 0.01-0.02
    w[:, 0] = _f16_bits(w[:, 0], 8)
    return buf


def gen_q8_0(rng: np.random.Generator, nblocks: int) -> np.ndarray:
    # block_q8_0: f16 d; int8 qs[32] -> 34 bytes, value = q * d
    buf = np.frombuffer(rng.bytes(nblocks * 34), dtype=np.uint8).copy()
    w = buf.view(np.uint16).reshape(nblocks, 17)
    # |d| in [2^-11, 2^-9) ~ 0.0005-0.002; q in [-128,127] -> element std
    # ~0.08, about the same as the Q4_0 weights above
    w[:, 0] = _f16_bits(w[:, 0], 4)
    return buf


def gen_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    # random sign, exponent 8..11 (|x| in [2^-7, 2^-3)), random mantissa
    u = np.frombuffer(rng.bytes(n * 2), dtype=np.uint16).copy()
    e = (8 + ((u >> 10) & 3)).astype(np.uint16)
    u = (u & np.uint16(0x83FF)) | (e << np.uint16(10))
    return u.view(np.uint8)


def gen_f32_small(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    return (rng.standard_normal(n, dtype=np.float32) * np.float32(std)).view(np.uint8)


def ones(rng: np.random.Generator, n: int) -> bytes:
    return np.ones(n, dtype=np.float32).tobytes()


def write_data(w, gguf, tensors, tinfo, qt, total: int, seed: int, chunk_mb: int, out,
               special) -> int:
    """Writes the GGUF header and every tensor's random data, chunk by chunk, then closes
    `w` (tensor infos already added). `special[kind](rng, n)` makes the bytes of a float
    tensor of n values of that kind; other tensors are quantized `qt` blocks (or f16)."""
    GT = gguf.GGMLQuantizationType
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    fout = w.fout[0]
    align = w.data_alignment

    def pad(n):
        r = (-n) % align
        if r:
            fout.write(b"\x00" * r)

    pad(fout.tell())

    rng = np.random.default_rng(seed)
    chunk = max(1, chunk_mb) << 20
    t0 = time.time()
    written = 0
    last_report = t0
    for name, shape, kind in tensors:
        t, nb = tinfo(shape, kind)
        start = fout.tell()
        n = int(np.prod(shape, dtype=np.int64))
        if kind in special:
            fout.write(special[kind](rng, n))
        else:
            if qt == GT.F16:
                unit_bytes, gen = 2, gen_f16
            elif qt == GT.Q4_0:
                unit_bytes, gen = 18, gen_q4_0
            else:
                unit_bytes, gen = 34, gen_q8_0
            n_units = nb // unit_bytes
            per_chunk = max(1, chunk // unit_bytes)
            done = 0
            while done < n_units:
                m = min(per_chunk, n_units - done)
                fout.write(memoryview(gen(rng, m)))
                done += m
        got = fout.tell() - start
        if got != nb:
            raise RuntimeError(f"{name}: wrote {got} bytes, expected {nb}")
        pad(nb)
        written += nb
        now = time.time()
        if now - last_report > 10:
            last_report = now
            print(f"  {written/2**30:.2f}/{total/2**30:.2f} GiB "
                  f"({written/2**20/(now-t0):.0f} MiB/s)", flush=True)

    w.close()
    dt = time.time() - t0
    size = out.stat().st_size
    print(f"wrote {out} in {dt:.1f}s")
    print(f"file size: {size} bytes ({size/2**30:.2f} GiB)")
    return 0
