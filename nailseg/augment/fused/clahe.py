"""CLAHE on a lightness channel as Triton pieces that fuse into one batch kernel.

The reference is kornia 0.9's ``kornia.enhance.equalization._equalize_clahe(light, clip, (G, G),
False)`` on a ``(B, 1, H, W)`` batch with one clip limit per image, which these pieces reproduce:
the same tiles (``ceil(H / G) x ceil(W / G)``, reflect padding at the end of each axis), the same
histograms (bin ``(x * 255).long()`` in float32), bit-identical LUTs (OpenCV's clip and
redistribution, round half to even) and the same interpolation between the LUTs of neighbouring
tiles, anchored at tile centres. Kornia pads, unfolds and copies the image into tiles, histograms,
clips and gathers them in tens of launches per call, with tile-sized intermediates.

Here there are three pieces: :func:`clahe_count` (a device function: a block of one sample's pixels
into its tile histograms, padding included), :func:`clahe_lut_kernel` (one program per tile and
sample: histogram to LUT, with that sample's clip limit read from the parameter table) and
:func:`clahe_apply` (a device function: a block of pixels to their equalised values). The count and
apply functions are called by the batch kernels that also do the other ops, so CLAHE adds one small
launch. They are hand-written because no library offers CLAHE with a clip limit per sample as
Triton pieces that fuse into such a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

try:  # the combine function of ``tl.sum`` / ``tl.cumsum``
    from triton.language.standard import _sum_combine as _add
except ImportError:  # pragma: no cover - a triton that renamed it

    @triton.jit
    def _add(a, b):
        return a + b


def clahe_tiles(height: int, width: int, grid: int) -> tuple[int, int]:
    """The tile size ``(tile_h, tile_w)`` kornia uses for an image on a ``grid x grid`` grid.

    Raises ``ValueError`` (kornia's conditions and wording) for a grid that is not positive or an
    image with an axis not larger than the grid.

    >>> clahe_tiles(50, 37, 8)
    (7, 5)
    """
    if grid <= 0:
        raise ValueError(f"Input grid_size elements must be positive. Got {(grid, grid)}")
    if height <= grid or width <= grid:
        raise ValueError(
            "Cannot compute tiles on the image according to the given grid size. "
            f"Got image size ({height}, {width}) and grid size {(grid, grid)}. "
            f"The smallest image this grid admits is ({grid + 1}, {grid + 1})."
        )
    # With an axis larger than the grid, the padding (below one tile per grid cell, so below the
    # grid) is always smaller than the axis, so the reflection kornia pads with is defined.
    return -(-height // grid), -(-width // grid)


@triton.jit
def _tile_offset(ty, tx, tile_h, tile_w, GRID: tl.constexpr):
    """Offset of the histogram (or LUT) of the tile holding padded position ``(ty, tx)``."""
    return ((ty // tile_h) * GRID + tx // tile_w) * 256


@triton.jit
def clahe_count(hist_ptr, light, y, x, mask, height, width, tile_h, tile_w, GRID: tl.constexpr):
    """Count a block of one sample's pixels into its ``(GRID * GRID, 256)`` int32 histograms.

    A pixel at ``(y, x)`` is counted at its own position and at every position of the reflect
    padding (rows and columns ``p`` in ``[H, tile * GRID)`` copy ``2 * (H - 1) - p``) that copies
    it, so the counts equal kornia's tile histograms of the padded image. Values outside ``[0, 1]``
    (and NaN) are not counted, as in kornia.
    """
    valid = mask & (light >= 0.0) & (light <= 1.0)
    bins = tl.minimum(tl.maximum((light * 255.0).to(tl.int32), 0), 255)
    # The padded position that copies this row / column, where there is one.
    ry = 2 * (height - 1) - y
    rx = 2 * (width - 1) - x
    has_ry = (ry >= height) & (ry < tile_h * GRID)
    has_rx = (rx >= width) & (rx < tile_w * GRID)
    ry = tl.where(has_ry, ry, y)
    rx = tl.where(has_rx, rx, x)
    ptr = hist_ptr + bins
    tl.atomic_add(ptr + _tile_offset(y, x, tile_h, tile_w, GRID), 1, mask=valid, sem="relaxed")
    tl.atomic_add(
        ptr + _tile_offset(ry, x, tile_h, tile_w, GRID), 1, mask=valid & has_ry, sem="relaxed"
    )
    tl.atomic_add(
        ptr + _tile_offset(y, rx, tile_h, tile_w, GRID), 1, mask=valid & has_rx, sem="relaxed"
    )
    tl.atomic_add(
        ptr + _tile_offset(ry, rx, tile_h, tile_w, GRID),
        1,
        mask=valid & has_ry & has_rx,
        sem="relaxed",
    )


@triton.jit
def clahe_lut_kernel(
    hist_ptr,
    lut_ptr,
    params_ptr,
    params_stride,
    pixels,
    lut_scale,
    CLIP_COL: tl.constexpr,
    OP_COL: tl.constexpr,
    CLAHE_OP: tl.constexpr,
    GRID: tl.constexpr,
):
    """One tile's LUT from its histogram, as kornia's ``_compute_luts`` (grid ``(GRID**2, B)``).

    ``hist_ptr``: ``(B, GRID**2, 256)`` int32; ``lut_ptr``: ``(B, GRID**2, 256)`` float32, written
    (integers 0..255) only for samples whose ``params[b, OP_COL] == CLAHE_OP``; the clip limit is
    ``params[b, CLIP_COL]`` (clipping is off for a limit that is not positive). ``pixels`` is
    ``tile_h * tile_w`` and ``lut_scale`` is ``255 / pixels`` (float32, as torch scales).
    """
    tile = tl.program_id(0)
    sample = tl.program_id(1)
    row = params_ptr + sample * params_stride
    op = tl.load(row + OP_COL)
    if op != CLAHE_OP:
        return
    clip = tl.load(row + CLIP_COL)
    bins = tl.arange(0, 256)
    offset = (sample * (GRID * GRID) + tile) * 256
    hist = tl.load(hist_ptr + offset + bins)

    # max(floor(clip * pixels / 256), 1) in float64, exact as kornia's; capped at ``pixels``
    # (no count exceeds it, so the cap changes nothing) so that it fits an int32. A limit that is
    # not positive (or NaN) clips nothing, which the cap also expresses.
    limit = clip.to(tl.float64) * pixels / 256.0
    limit = tl.minimum(tl.maximum(limit, 1.0), pixels)
    max_val = tl.where(clip > 0.0, limit.to(tl.int32), pixels)

    clipped_hist = tl.minimum(hist, max_val)
    # ``tl.reduce`` / ``tl.associative_scan`` with ``tl.sum``'s combine function are what ``tl.sum``
    # and ``tl.cumsum`` compile to. Called by name, those two fail under the interpreter if
    # triton.language was imported before ``TRITON_INTERPRET=1`` was set; the interpreter has a
    # fast (numpy) path for this combine function only.
    clipped = pixels - tl.reduce(clipped_hist, 0, _add)
    residual = clipped % 256
    # OpenCV's spread of the residual: one count on every ``step``-th bin from bin 0.
    step = tl.maximum(256 // tl.maximum(residual, 1), 1)
    hit = ((bins % step) == 0) & ((bins // step) < residual)
    clipped_hist = clipped_hist + clipped // 256 + hit.to(tl.int32)

    lut = tl.associative_scan(clipped_hist, 0, _add).to(tl.float32) * lut_scale
    lut = tl.minimum(tl.maximum(lut, 0.0), 255.0)
    # Round half to even: ``lut - floor(lut)`` is exact, so the tie test is too.
    base = tl.floor(lut)
    frac = lut - base
    odd = (base.to(tl.int32) & 1) == 1
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    tl.store(lut_ptr + offset + bins, base + up.to(tl.float32))


@triton.jit
def _clahe_axis(p, tile, GRID: tl.constexpr):
    """Lower / upper tile index and the weight of the upper one along one axis (kornia's)."""
    # ``(p - (tile - 1) / 2) / tile`` in float32 with IEEE division, as torch computes it.
    pos = tl.div_rn(p.to(tl.float32) - (tile - 1) * 0.5, tile * 1.0)
    base = tl.floor(pos)
    lower = base.to(tl.int32)
    upper = tl.minimum(tl.maximum(lower + 1, 0), GRID - 1)
    lower = tl.minimum(tl.maximum(lower, 0), GRID - 1)
    weight = tl.minimum(tl.maximum(pos - base, 0.0), 1.0)
    weight = tl.where((pos < 0.0) | (pos > GRID - 1), 0.0, weight)
    return lower, upper, weight


@triton.jit
def clahe_apply(lut_ptr, light, y, x, height, width, tile_h, tile_w, GRID: tl.constexpr):
    """Equalised values in ``[0, 1]`` of a block of one sample's pixels (``lut_ptr``: its LUTs).

    Interpolates the LUTs of the (up to) four tiles whose centres surround ``(y, x)`` at the pixel's
    level ``(light * 255).long()``, as kornia does. All indices are clamped, so lanes outside the
    image read in bounds; their values are meaningless.
    """
    y0, y1, wy = _clahe_axis(y, tile_h, GRID)
    x0, x1, wx = _clahe_axis(x, tile_w, GRID)
    ptr = lut_ptr + tl.minimum(tl.maximum((light * 255.0).to(tl.int32), 0), 255)
    top_left = tl.load(ptr + (y0 * GRID + x0) * 256)
    top_right = tl.load(ptr + (y0 * GRID + x1) * 256)
    bottom_left = tl.load(ptr + (y1 * GRID + x0) * 256)
    bottom_right = tl.load(ptr + (y1 * GRID + x1) * 256)
    top = top_right + (top_left - top_right) * (1.0 - wx)
    bottom = bottom_right + (bottom_left - bottom_right) * (1.0 - wx)
    return tl.div_rn(top + (bottom - top) * wy, 255.0)
