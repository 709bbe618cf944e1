"""Counter-based random numbers on any device: a value is a hash of ``(sample seed, counter)``.

The device engine (:mod:`nailseg.augment.kornia_gpu`) draws every random parameter of sample ``i``
from that sample's seed alone, on the device, as a tensor, with no host sync. ``torch.Generator``
cannot do that: it holds one state for a whole call and is seeded from a Python int (a device to
host copy when the seed is a device tensor), so a sample's draw would depend on the rest of its
batch. torch exposes no keyed (counter-based) generator, so this is the small one we need: a
32-bit integer hash (Wellons' "hash prospector" two-round multiply-xorshift, both multipliers
below 2**31) applied twice, in ``int64`` arithmetic that never overflows: every value is kept
below 2**32, so a product stays below 2**63. The same seed gives the same numbers on a CPU and on
CUDA, bit for bit, since only integer ops are involved until the final scaling.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive counters over the 32 bits


def mix32(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash of ``int64`` values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK
    return x ^ (x >> 15)


def keyed(seeds: Tensor, counters: Tensor, stream: int = 0) -> Tensor:
    """32-bit hashes of every ``(seed, stream, counter)``; ``seeds`` ``(B,)``, any ``counters``.

    Counters must be below 2**31. Returns ``int64`` values in ``[0, 2**32)`` of shape
    ``(B, *counters.shape)``.
    """
    key = mix32((mix32(seeds.to(torch.int64) & _MASK) + stream * _GOLDEN) & _MASK)
    key = key.view(-1, *([1] * counters.ndim))
    return mix32(mix32((key + counters * _GOLDEN) & _MASK) ^ key)


def uniform(seeds: Tensor, streams: int) -> Tensor:
    """``(B, streams)`` float32 uniforms in ``[0, 1)``: column ``k`` is sample ``i``'s stream ``k``.

    Examples:
        >>> u = uniform(torch.tensor([7, 8]), 3)
        >>> tuple(u.shape), bool((u >= 0).all() and (u < 1).all())
        ((2, 3), True)
        >>> torch.equal(uniform(torch.tensor([8]), 3)[0], u[1])  # a sample's own draw
        True
    """
    counters = torch.arange(streams, device=seeds.device, dtype=torch.int64)
    # 24 bits: every value exactly representable in float32.
    return (keyed(seeds, counters, 0) >> 8).to(torch.float32) * (1.0 / (1 << 24))


def normal_field(seeds: Tensor, shape: tuple[int, ...], stream: int = 1) -> Tensor:
    """Standard normal ``(B, *shape)`` float32, element ``j`` of sample ``i`` keyed by ``(i, j)``.

    Box-Muller on the two 16-bit halves of one hash per pair of elements (its cosine and sine
    halves): values are bounded by ``sqrt(-2 ln(2**-17))`` = 4.86, plenty for augmentation noise.
    One mixing round per element here (a Weyl sequence through the mixer, as SplitMix does): the
    key is already mixed twice, and this is the engine's most expensive draw.
    """
    count = math.prod(shape)
    half = (count + 1) // 2
    key = keyed(seeds, torch.zeros(1, device=seeds.device, dtype=torch.int64), stream)
    bits = mix32((key + _weyl(half, seeds.device)) & _MASK)
    u1 = ((bits >> 16).to(torch.float32) + 0.5) * (1.0 / 65536)
    u2 = ((bits & 0xFFFF).to(torch.float32) + 0.5) * (1.0 / 65536)
    radius, angle = torch.sqrt(-2 * torch.log(u1)), (2 * math.pi) * u2
    pairs = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
    return pairs[:, :count].reshape(-1, *shape)


_WEYL: dict[tuple[int, torch.device], Tensor] = {}


def _weyl(count: int, device: torch.device) -> Tensor:
    """``(j * golden) mod 2**32`` for ``j < count``, made once per size and device."""
    cached = _WEYL.get((count, device))
    if cached is None:
        counters = torch.arange(count, device=device, dtype=torch.int64)
        cached = _WEYL[(count, device)] = ((counters * _GOLDEN) & _MASK)[None]
    return cached
