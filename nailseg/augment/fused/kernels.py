"""The fused engine's Triton kernels: the whole ``tutorial`` policy in five launches per batch.

Why by hand: no library fuses a per-sample segmentation pipeline with masks (Kornia and
torchvision launch one or more kernels per op and per parameter tensor; triton-augment has no
masks, noise, blur or CLAHE and reads its parameters on the host; CV-CUDA's CLAHE takes one clip
limit per batch). Each kernel reproduces the reference engine's definition
(:mod:`nailseg.augment.kornia_gpu`, Kornia's functional ops), which stays the CPU path and the
meaning of the policy; ``tests/test_fused_engine.py`` holds them to it.

1. :func:`params_kernel`: every random parameter of every sample from its seed
   (:mod:`nailseg.augment.fused.rng`, the reference's counter hash), into a ``(B, 19)`` table in
   the layout of :data:`nailseg.augment.params.TABLE_COLUMNS`.
2. :func:`warp_noise_kernel`: flips, rotation, scale and shift as one source point per output
   pixel, the image sampled bilinear (or nearest) and the mask nearest at that point, zeros
   outside; uint8 in; then the Gaussian noise of the samples that get it.
3. :func:`blur_kernel`: the Gaussian blur of the samples that get it (per-sample sigma, reflect
   border), and, for the samples whose colour op is CLAHE, the per-tile histograms of L (LAB).
4. :func:`nailseg.augment.fused.clahe.clahe_lut_kernel`: clip and CDF per tile (CLAHE samples).
5. :func:`finish_kernel`: the sample's colour op (HSV, CLAHE applied by interpolating the tile
   LUTs, or brightness/contrast), then normalisation, written in the model's dtype and memory
   format.

A sample that does not get an op skips it inside the kernel (a branch on its row of the table),
so no host decision and no sync is ever needed.
"""

from __future__ import annotations

import triton
import triton.language as tl

from nailseg.augment.fused.clahe import clahe_apply, clahe_count
from nailseg.augment.fused.colour import (
    hsv_to_rgb,
    lab_to_rgb,
    remainder,
    rgb_to_hsv,
    rgb_to_lab,
)
from nailseg.augment.fused.rng import noise_key, normal, stream_key, uniform
from nailseg.augment.params import COLOUR_OPS, TABLE_COLUMNS

NCOL: tl.constexpr = tl.constexpr(len(TABLE_COLUMNS))
# Table columns (see TABLE_COLUMNS).
C_HFLIP: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("hflip"))
C_VFLIP: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("vflip"))
C_AFFINE: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("affine"))
C_ANGLE: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("angle"))
C_SCALE: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("scale"))
C_SHIFT_X: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("shift_x"))
C_SHIFT_Y: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("shift_y"))
C_GEOMETRIC: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("geometric"))
C_NOISE: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("noise"))
C_NOISE_STD: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("noise_std"))
C_BLUR: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("blur"))
C_SIGMA: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("blur_sigma"))
C_OP: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("colour_op"))
C_HUE: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("hue"))
C_SATURATION: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("saturation"))
C_VALUE: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("value"))
C_CLIP: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("clip_limit"))
C_CONTRAST: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("contrast"))
C_BRIGHTNESS: tl.constexpr = tl.constexpr(TABLE_COLUMNS.index("brightness"))
# Colour op codes (COLOUR_OPS order, as the reference's ``colour_op``).
HSV_OP: tl.constexpr = tl.constexpr(COLOUR_OPS.index("hsv"))
CLAHE_OP: tl.constexpr = tl.constexpr(COLOUR_OPS.index("clahe"))
BC_OP: tl.constexpr = tl.constexpr(COLOUR_OPS.index("brightness_contrast"))

# The policy as numbers, one float32 vector per engine and device (``ops.policy_vector``):
# probabilities, and each range as ``(low, high - low)`` with ``high - low`` taken in double
# precision before the cast, as the reference's ``low + u * (high - low)`` does.
POLICY_SLOTS = (
    "hflip_p",
    "vflip_p",
    "affine_p",
    "angle_low",
    "angle_range",
    "scale_low",
    "scale_range",
    "shift_low",
    "shift_range",
    "noise_p",
    "std_low",
    "std_range",
    "blur_p",
    "sigma_low",
    "sigma_range",
    "colour_p",
    "colour_count",
    "code0",
    "code1",
    "code2",
    "hue_low",
    "hue_range",
    "saturation_low",
    "saturation_range",
    "value_low",
    "value_range",
    "clip_low",
    "clip_range",
    "contrast_low",
    "contrast_range",
    "brightness_low",
    "brightness_range",
)


@triton.jit
def _draw(key, pol_ptr, STREAM: tl.constexpr, LOW: tl.constexpr):
    """``low + u * range`` for the uniform of ``STREAM`` and the policy slots ``LOW``, ``LOW+1``."""
    u = uniform(key, STREAM)
    return tl.load(pol_ptr + LOW) + u * tl.load(pol_ptr + LOW + 1)


@triton.jit
def params_kernel(seeds_ptr, pol_ptr, table_ptr, count, width, height, BLOCK: tl.constexpr):
    """One row of the parameter table per sample, as ``params.sample_params`` draws it."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < count
    key = stream_key(tl.load(seeds_ptr + rows, mask=live, other=0), 0)

    hflip = uniform(key, 0) < tl.load(pol_ptr + 0)
    vflip = uniform(key, 1) < tl.load(pol_ptr + 1)
    affine = uniform(key, 2) < tl.load(pol_ptr + 2)
    angle = tl.where(affine, _draw(key, pol_ptr, 3, 3), 0.0)
    scale = tl.where(affine, _draw(key, pol_ptr, 4, 5), 1.0)
    shift_x = tl.where(affine, _draw(key, pol_ptr, 5, 7), 0.0) * width
    shift_y = tl.where(affine, _draw(key, pol_ptr, 6, 7), 0.0) * height
    noise = uniform(key, 7) < tl.load(pol_ptr + 9)
    noise_std = _draw(key, pol_ptr, 8, 10)
    blur = uniform(key, 9) < tl.load(pol_ptr + 12)
    sigma = _draw(key, pol_ptr, 10, 13)
    ops = tl.load(pol_ptr + 16)
    pick = tl.minimum((uniform(key, 12) * ops).to(tl.int32), ops.to(tl.int32) - 1)
    code = tl.where(
        pick == 0,
        tl.load(pol_ptr + 17),
        tl.where(pick == 1, tl.load(pol_ptr + 18), tl.load(pol_ptr + 19)),
    )
    colour_op = tl.where(uniform(key, 11) < tl.load(pol_ptr + 15), code, -1.0)

    out = table_ptr + rows * NCOL
    tl.store(out + C_HFLIP, hflip.to(tl.float32), mask=live)
    tl.store(out + C_VFLIP, vflip.to(tl.float32), mask=live)
    tl.store(out + C_AFFINE, affine.to(tl.float32), mask=live)
    tl.store(out + C_ANGLE, angle, mask=live)
    tl.store(out + C_SCALE, scale, mask=live)
    tl.store(out + C_SHIFT_X, shift_x, mask=live)
    tl.store(out + C_SHIFT_Y, shift_y, mask=live)
    tl.store(out + C_GEOMETRIC, (hflip | vflip | affine).to(tl.float32), mask=live)
    tl.store(out + C_NOISE, noise.to(tl.float32), mask=live)
    tl.store(out + C_NOISE_STD, noise_std, mask=live)
    tl.store(out + C_BLUR, blur.to(tl.float32), mask=live)
    tl.store(out + C_SIGMA, sigma, mask=live)
    tl.store(out + C_OP, colour_op, mask=live)
    tl.store(out + C_HUE, _draw(key, pol_ptr, 13, 20), mask=live)
    tl.store(out + C_SATURATION, _draw(key, pol_ptr, 14, 22), mask=live)
    tl.store(out + C_VALUE, _draw(key, pol_ptr, 15, 24), mask=live)
    tl.store(out + C_CLIP, _draw(key, pol_ptr, 16, 26), mask=live)
    tl.store(out + C_CONTRAST, _draw(key, pol_ptr, 17, 28), mask=live)
    tl.store(out + C_BRIGHTNESS, _draw(key, pol_ptr, 18, 30), mask=live)


@triton.jit
def _rint(v):
    """Round half to even (``nearbyint``, what ``grid_sample``'s nearest mode uses)."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _tap(ptr, xi, yi, width, height, stride_y, stride_x, live):
    """The value at integer point ``(xi, yi)`` as float32, 0 outside the image."""
    inside = live & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    offset = yi.to(tl.int64) * stride_y + xi.to(tl.int64) * stride_x
    return tl.load(ptr + offset, mask=inside, other=0).to(tl.float32)


@triton.jit
def warp_noise_kernel(
    image_ptr,
    mask_ptr,
    table_ptr,
    seeds_ptr,
    work_ptr,
    mask_out_ptr,
    height,
    width,
    image_sb,
    image_sc,
    image_sy,
    image_sx,
    mask_sb,
    mask_sy,
    mask_sx,
    BILINEAR: tl.constexpr,
    NOISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """uint8 image and mask in; the warped, noisy float32 image and the warped mask out.

    Output pixel ``p`` comes from source point ``F S^-1 R^-1 (p - c - t) + c``: the inverse of
    the reference's matrix ``R S F (src - c) + c + t`` (``params.sample_params``), which
    ``grid_sample`` evaluates through normalised coordinates. With no geometry the point is ``p``
    itself, exactly, so those samples are copied unchanged.
    """
    b, offs, live, y, x = _pixels(height, width, BLOCK)
    plane = height * width
    row = table_ptr + b * NCOL
    radians = tl.load(row + C_ANGLE) * 0.017453292519943295
    scale = tl.load(row + C_SCALE)
    cos = tl.cos(radians)
    sin = tl.sin(radians)
    flip_x = tl.where(tl.load(row + C_HFLIP) > 0, -1.0, 1.0)
    flip_y = tl.where(tl.load(row + C_VFLIP) > 0, -1.0, 1.0)
    cx = (width - 1) * 0.5
    cy = (height - 1) * 0.5
    qx = x.to(tl.float32) - cx - tl.load(row + C_SHIFT_X)
    qy = y.to(tl.float32) - cy - tl.load(row + C_SHIFT_Y)
    sx = (cos * qx + sin * qy) / scale * flip_x + cx
    sy = (cos * qy - sin * qx) / scale * flip_y + cy

    # The mask: nearest, the point rounded half to even as grid_sample does.
    mx = _rint(sx).to(tl.int32)
    my = _rint(sy).to(tl.int32)
    mask_value = _tap(mask_ptr + b * mask_sb, mx, my, width, height, mask_sy, mask_sx, live)
    tl.store(mask_out_ptr + b * plane + offs, mask_value, mask=live)

    noise_on = tl.load(row + C_NOISE) > 0
    noise_std = tl.load(row + C_NOISE_STD)
    key = noise_key(tl.load(seeds_ptr + b))
    half = (3 * plane + 1) // 2
    source = image_ptr + b * image_sb
    if BILINEAR:
        x0f = tl.floor(sx)
        y0f = tl.floor(sy)
        wx = sx - x0f
        wy = sy - y0f
        x0 = x0f.to(tl.int32)
        y0 = y0f.to(tl.int32)
    else:
        x0 = mx
        y0 = my
    for c in tl.static_range(3):
        channel = source + c * image_sc
        if BILINEAR:
            value = (
                _tap(channel, x0, y0, width, height, image_sy, image_sx, live)
                / 255.0
                * ((1.0 - wx) * (1.0 - wy))
                + _tap(channel, x0 + 1, y0, width, height, image_sy, image_sx, live)
                / 255.0
                * (wx * (1.0 - wy))
                + _tap(channel, x0, y0 + 1, width, height, image_sy, image_sx, live)
                / 255.0
                * ((1.0 - wx) * wy)
                + _tap(channel, x0 + 1, y0 + 1, width, height, image_sy, image_sx, live)
                / 255.0
                * (wx * wy)
            )
        else:
            value = _tap(channel, x0, y0, width, height, image_sy, image_sx, live) / 255.0
        if NOISE:
            if noise_on:
                index = c * plane + offs
                noisy = value + normal(key, index, half) * noise_std
                value = tl.minimum(tl.maximum(noisy, 0.0), 1.0)
        tl.store(work_ptr + (b * 3 + c) * plane + offs, value, mask=live)


@triton.jit
def _pixels(height, width, BLOCK: tl.constexpr):
    """This program's sample and block of pixels: ``(b, offsets, live, rows, columns)``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return tl.program_id(1), offs, offs < height * width, offs // width, offs % width


@triton.jit
def _load_rgb(source, offs, plane, live):
    """The three planes of one float32 ``(3, H, W)`` image at ``offs``."""
    red = tl.load(source + offs, mask=live, other=0.0)
    green = tl.load(source + plane + offs, mask=live, other=0.0)
    blue = tl.load(source + 2 * plane + offs, mask=live, other=0.0)
    return red, green, blue


@triton.jit
def _reflect(i, n):
    # torch's "reflect" padding (no edge repeat), for offsets smaller than the side.
    i = tl.where(i < 0, -i, i)
    return tl.where(i > n - 1, 2 * (n - 1) - i, i)


@triton.jit
def blur_kernel(
    work_ptr,
    table_ptr,
    out_ptr,
    hist_ptr,
    height,
    width,
    tile_h,
    tile_w,
    KSIZE: tl.constexpr,
    BLUR: tl.constexpr,
    CLAHE: tl.constexpr,
    GRID: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Kornia's ``gaussian_blur2d`` (reflect border) per sample, and the CLAHE histograms.

    The 1-D kernel is ``exp(-x**2 / (2 sigma**2))`` normalised to sum 1 (Kornia's
    ``get_gaussian_kernel1d``); each output is the separable sum over the ``KSIZE**2``
    neighbourhood, read from L1/L2 (one launch; no intermediate pass written out).
    """
    b, offs, live, y, x = _pixels(height, width, BLOCK)
    plane = height * width
    row = table_ptr + b * NCOL
    source = work_ptr + b * 3 * plane
    red, green, blue = _load_rgb(source, offs, plane, live)
    if BLUR:
        if tl.load(row + C_BLUR) > 0:
            sigma = tl.load(row + C_SIGMA)
            denominator = 2.0 * (sigma * sigma)
            total = 0.0
            for i in tl.static_range(KSIZE):
                total += tl.exp(-((i - KSIZE // 2) * (i - KSIZE // 2)) / denominator)
            red = tl.zeros((BLOCK,), tl.float32)
            green = tl.zeros((BLOCK,), tl.float32)
            blue = tl.zeros((BLOCK,), tl.float32)
            for j in tl.static_range(KSIZE):
                weight_y = tl.exp(-((j - KSIZE // 2) * (j - KSIZE // 2)) / denominator) / total
                yy = _reflect(y + (j - KSIZE // 2), height)
                line_r = tl.zeros((BLOCK,), tl.float32)
                line_g = tl.zeros((BLOCK,), tl.float32)
                line_b = tl.zeros((BLOCK,), tl.float32)
                for i in tl.static_range(KSIZE):
                    weight_x = tl.exp(-((i - KSIZE // 2) * (i - KSIZE // 2)) / denominator) / total
                    at = source + yy * width + _reflect(x + (i - KSIZE // 2), width)
                    line_r += weight_x * tl.load(at, mask=live, other=0.0)
                    line_g += weight_x * tl.load(at + plane, mask=live, other=0.0)
                    line_b += weight_x * tl.load(at + 2 * plane, mask=live, other=0.0)
                red += weight_y * line_r
                green += weight_y * line_g
                blue += weight_y * line_b
    target = out_ptr + b * 3 * plane
    tl.store(target + offs, red, mask=live)
    tl.store(target + plane + offs, green, mask=live)
    tl.store(target + 2 * plane + offs, blue, mask=live)
    if CLAHE:
        if tl.load(row + C_OP) == CLAHE_OP:
            lightness, _, _ = rgb_to_lab(red, green, blue)
            light = tl.minimum(tl.maximum(lightness / 100.0, 0.0), 1.0)
            histogram = hist_ptr + b * (GRID * GRID * 256)
            clahe_count(histogram, light, y, x, live, height, width, tile_h, tile_w, GRID)


@triton.jit
def finish_kernel(
    work_ptr,
    table_ptr,
    lut_ptr,
    out_ptr,
    height,
    width,
    tile_h,
    tile_w,
    out_sb,
    out_sc,
    out_sy,
    out_sx,
    scale_r,
    scale_g,
    scale_b,
    shift_r,
    shift_g,
    shift_b,
    HSV: tl.constexpr,
    CLAHE: tl.constexpr,
    BC: tl.constexpr,
    GRID: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The sample's colour op, then ``shift + image * scale``, stored in ``out``'s dtype/layout."""
    b, offs, live, y, x = _pixels(height, width, BLOCK)
    plane = height * width
    row = table_ptr + b * NCOL
    source = work_ptr + b * 3 * plane
    red, green, blue = _load_rgb(source, offs, plane, live)
    op = tl.load(row + C_OP)
    if HSV:
        if op == HSV_OP:
            hue, saturation, value = rgb_to_hsv(red, green, blue)
            two_pi = 6.283185307179586
            hue = remainder(hue + tl.load(row + C_HUE) * two_pi, two_pi)
            shifted = tl.minimum(tl.maximum(saturation + tl.load(row + C_SATURATION), 0.0), 1.0)
            saturation = tl.where(saturation > 0, shifted, saturation)
            value = tl.minimum(tl.maximum(value + tl.load(row + C_VALUE), 0.0), 1.0)
            red, green, blue = hsv_to_rgb(hue, saturation, value)
            red = tl.minimum(tl.maximum(red, 0.0), 1.0)
            green = tl.minimum(tl.maximum(green, 0.0), 1.0)
            blue = tl.minimum(tl.maximum(blue, 0.0), 1.0)
    if CLAHE:
        if op == CLAHE_OP:
            lightness, a, b_ = rgb_to_lab(red, green, blue)
            light = tl.minimum(tl.maximum(lightness / 100.0, 0.0), 1.0)
            luts = lut_ptr + b * (GRID * GRID * 256)
            light = clahe_apply(luts, light, y, x, height, width, tile_h, tile_w, GRID)
            red, green, blue = lab_to_rgb(light * 100.0, a, b_)
    if BC:
        if op == BC_OP:
            alpha = 1.0 + tl.load(row + C_CONTRAST)
            beta = tl.load(row + C_BRIGHTNESS)
            red = tl.minimum(tl.maximum(red * alpha + beta, 0.0), 1.0)
            green = tl.minimum(tl.maximum(green * alpha + beta, 0.0), 1.0)
            blue = tl.minimum(tl.maximum(blue * alpha + beta, 0.0), 1.0)
    target = out_ptr + b.to(tl.int64) * out_sb + y * out_sy + x * out_sx
    kind = out_ptr.dtype.element_ty
    tl.store(target, (shift_r + red * scale_r).to(kind), mask=live)
    tl.store(target + out_sc, (shift_g + green * scale_g).to(kind), mask=live)
    tl.store(target + 2 * out_sc, (shift_b + blue * scale_b).to(kind), mask=live)


__all__ = [
    "POLICY_SLOTS",
    "blur_kernel",
    "finish_kernel",
    "params_kernel",
    "warp_noise_kernel",
]
