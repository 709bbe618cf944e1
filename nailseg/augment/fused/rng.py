"""The counter-based draws of :mod:`nailseg.augment.counter_rng`, as Triton device functions.

The reference engine hashes ``(sample seed, stream, counter)`` with torch integer ops in ``int64``
(values kept below 2**32); here the same hash runs in ``uint32``, whose products wrap modulo 2**32
exactly as the reference's ``& 0xFFFFFFFF`` does. So a kernel draws bit for bit the uniforms the
reference draws, on any device, and the fused and reference engines agree sample by sample.
Triton's own ``tl.rand`` (Philox) is not used: its stream differs from the reference's, and the
reference must stay a plain torch program that runs on a CPU without Triton.
"""

from __future__ import annotations

import triton
import triton.language as tl

from nailseg.augment.counter_rng import _GOLDEN

GOLDEN: tl.constexpr = tl.constexpr(_GOLDEN)


@triton.jit
def mix32(x):
    """``counter_rng.mix32`` on ``uint32`` values."""
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@triton.jit
def stream_key(seed, stream: tl.constexpr):
    """The key of ``(seed, stream)``: ``seed`` any integer, the low 32 bits count."""
    s = (seed & 0xFFFFFFFF).to(tl.uint32)
    return mix32(mix32(s) + tl.full((), stream * GOLDEN % 4294967296, tl.uint32))


@triton.jit
def uniform(key, STREAM: tl.constexpr):
    """Column ``STREAM`` of ``counter_rng.uniform`` for the key ``stream_key(seed, 0)``: a
    float32 in ``[0, 1)`` on 24 bits, the same on every device."""
    bits = mix32(mix32(key + (STREAM * GOLDEN % 4294967296)) ^ key)
    return (bits >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def noise_key(seed):
    """The key of ``counter_rng.normal_field`` (stream 1, counter 0) for one sample seed."""
    key = stream_key(seed, 1)
    return mix32(mix32(key) ^ key)


@triton.jit
def normal(key, index, half):
    """Element ``index`` of ``counter_rng.normal_field``: Box-Muller on one hash per pair.

    ``key`` is :func:`noise_key`; element ``j`` takes the cosine half of pair ``j`` when
    ``j < half``, else the sine half of pair ``j - half`` (``half``: half the element count,
    rounded up).
    """
    second = index >= half
    pair = tl.where(second, index - half, index).to(tl.uint32)
    bits = mix32(key + pair * GOLDEN)
    u1 = ((bits >> 16).to(tl.float32) + 0.5) * (1.0 / 65536.0)
    u2 = ((bits & 0xFFFF).to(tl.float32) + 0.5) * (1.0 / 65536.0)
    radius = tl.sqrt(-2.0 * tl.log(u1))
    angle = 6.283185307179586 * u2
    return tl.where(second, radius * tl.sin(angle), radius * tl.cos(angle))
