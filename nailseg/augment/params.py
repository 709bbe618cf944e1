"""Per-sample augmentation parameters, drawn on the device from each sample's seed alone.

Sampling is kept apart from applying (:mod:`nailseg.augment.kornia_gpu`), so a batch's parameters
can be looked at, recorded or replayed. Every parameter of sample ``i`` is a function of its seed
only (:mod:`nailseg.augment.counter_rng`), so a sample augments the same way whatever batch it is
in, on a CPU or on CUDA. Each parameter has its own stream, so switching one part of the policy off
leaves every other draw as it was (masks of the full policy equal those of its geometric part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from nailseg.augment.counter_rng import uniform
from nailseg.augment.policy import AugPolicy

# One column of uniforms per random quantity; the order is part of the reproducibility contract.
STREAMS = (
    "hflip",
    "vflip",
    "affine",
    "angle",
    "scale",
    "shift_x",
    "shift_y",
    "noise",
    "noise_std",
    "blur",
    "blur_sigma",
    "colour",
    "colour_choice",
    "hue",
    "saturation",
    "value",
    "clip_limit",
    "contrast",
    "brightness",
)
NOISE_STREAM = 1  # counter_rng stream of the per-pixel noise; uniforms use stream 0

# ``colour_op`` codes: -1 for none, else the index of the op in ``Colour.ops()`` order.
COLOUR_OPS = ("hsv", "clahe", "brightness_contrast")

# The columns of :meth:`AugParams.table`: the drawn values of one sample, one row per sample, as
# the fused engine's parameter kernel writes them (``nailseg.augment.fused``); flags are 0/1.
TABLE_COLUMNS = (
    "hflip",
    "vflip",
    "affine",
    "angle",
    "scale",
    "shift_x",
    "shift_y",
    "geometric",
    "noise",
    "noise_std",
    "blur",
    "blur_sigma",
    "colour_op",
    "hue",
    "saturation",
    "value",
    "clip_limit",
    "contrast",
    "brightness",
)


@dataclass
class AugParams:
    """The parameters of one batch, one row per sample, all tensors on the batch's device.

    ``matrix`` maps source pixel coordinates to output pixel coordinates (pixel centres at
    integers, ``align_corners=True``); ``geometric`` says which samples it changes. A switched-off
    op has ``on`` all false. ``matrix`` is made of the drawn flips, ``angle`` (degrees), ``scale``
    and ``shift`` (pixels), kept as drawn.
    """

    seeds: Tensor  # (B,) the sample seeds (per-pixel noise is keyed by them)
    hflip: Tensor  # (B,) bool
    vflip: Tensor  # (B,) bool
    affine_on: Tensor  # (B,) bool
    angle: Tensor  # (B,) degrees, 0 where the affine part is off
    scale: Tensor  # (B,) 1 where off
    shift: Tensor  # (B, 2) x and y, pixels, 0 where off
    matrix: Tensor  # (B, 2, 3)
    geometric: Tensor  # (B,) bool
    noise_on: Tensor  # (B,) bool
    noise_std: Tensor  # (B,)
    blur_on: Tensor  # (B,) bool
    blur_sigma: Tensor  # (B,)
    colour_op: Tensor  # (B,) int64, -1: none
    hsv_shift: Tensor  # (B, 3): hue (fraction of the circle), saturation, value
    clip_limit: Tensor  # (B,)
    contrast: Tensor  # (B,): x * (1 + contrast) + brightness
    brightness: Tensor  # (B,)

    def select(self, index: Tensor) -> AugParams:
        """The parameters of the samples at ``index``."""
        return AugParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def table(self) -> Tensor:
        """``(B, len(TABLE_COLUMNS))`` float32: the drawn values in the fused engine's layout."""
        columns = {
            "hflip": self.hflip,
            "vflip": self.vflip,
            "affine": self.affine_on,
            "angle": self.angle,
            "scale": self.scale,
            "shift_x": self.shift[:, 0],
            "shift_y": self.shift[:, 1],
            "geometric": self.geometric,
            "noise": self.noise_on,
            "noise_std": self.noise_std,
            "blur": self.blur_on,
            "blur_sigma": self.blur_sigma,
            "colour_op": self.colour_op,
            "hue": self.hsv_shift[:, 0],
            "saturation": self.hsv_shift[:, 1],
            "value": self.hsv_shift[:, 2],
            "clip_limit": self.clip_limit,
            "contrast": self.contrast,
            "brightness": self.brightness,
        }
        return torch.stack([columns[name].to(torch.float32) for name in TABLE_COLUMNS], 1)


def _between(u: Tensor, low: float, high: float) -> Tensor:
    return low + u * (high - low)


def sample_params(policy: AugPolicy, seeds: Tensor, size: tuple[int, int]) -> AugParams:
    """Draw the training parameters of every sample from its seed.

    Args:
        policy: the policy whose ranges and probabilities are drawn from.
        seeds: ``(B,)`` integer sample seeds, on the device the parameters should live on.
        size: ``(height, width)`` of the images (shifts are fractions of the side).

    Examples:
        >>> p = sample_params(AugPolicy(), torch.tensor([1, 2, 3]), (64, 64))
        >>> tuple(p.matrix.shape), p.colour_op.dtype
        ((3, 2, 3), torch.int64)
    """
    u = dict(zip(STREAMS, uniform(seeds, len(STREAMS)).unbind(1), strict=True))
    height, width = size
    count, device = seeds.shape[0], seeds.device
    zeros, false = torch.zeros(count, device=device), torch.zeros(count, device=device, dtype=bool)

    # Geometry: flips, then rotation and isotropic scale about the centre, then the shift; all in
    # one matrix, so image and mask are resampled once, with the same coordinates.
    hflip, vflip = u["hflip"] < policy.hflip_p, u["vflip"] < policy.vflip_p
    cx, cy = (width - 1) / 2, (height - 1) / 2
    fx, fy = torch.where(hflip, -1.0, 1.0), torch.where(vflip, -1.0, 1.0)
    affine = policy.affine
    if affine is not None:
        on = u["affine"] < affine.p
        angle = torch.where(on, _between(u["angle"], -affine.degrees, affine.degrees), 0.0)
        scale = torch.where(on, _between(u["scale"], *affine.scale), 1.0)
        tx = torch.where(on, _between(u["shift_x"], -affine.translate, affine.translate), 0.0)
        ty = torch.where(on, _between(u["shift_y"], -affine.translate, affine.translate), 0.0)
        tx, ty = tx * width, ty * height
    else:
        on, angle, scale, tx, ty = false, zeros, zeros + 1, zeros, zeros
    radians = angle * (math.pi / 180)
    cos, sin = torch.cos(radians) * scale, torch.sin(radians) * scale
    # dst = R (F (src - c)) + c + t, with F = diag(fx, fy): the flip about the centre.
    matrix = torch.stack(
        [
            torch.stack([cos * fx, -sin * fy, cx + tx - (cos * fx * cx - sin * fy * cy)], 1),
            torch.stack([sin * fx, cos * fy, cy + ty - (sin * fx * cx + cos * fy * cy)], 1),
        ],
        1,
    )

    noise = policy.noise
    noise_on = u["noise"] < noise.p if noise is not None else false
    noise_std = _between(u["noise_std"], *noise.std) if noise is not None else zeros
    blur = policy.blur
    blur_on = u["blur"] < blur.p if blur is not None else false
    blur_sigma = _between(u["blur_sigma"], *blur.sigma) if blur is not None else zeros + 1

    colour = policy.colour
    colour_op = torch.full((count,), -1, device=device, dtype=torch.int64)
    hsv, clip, contrast, brightness = torch.zeros(count, 3, device=device), zeros + 1, zeros, zeros
    if colour is not None and colour.ops():
        # Python scalars only: a constant tensor built here would be a host-to-device copy.
        names = colour.ops()
        pick = (u["colour_choice"] * len(names)).long().clamp_(max=len(names) - 1)
        chosen = colour_op
        for k, name in enumerate(names):
            chosen = torch.where(pick == k, COLOUR_OPS.index(name), chosen)
        colour_op = torch.where(u["colour"] < colour.p, chosen, colour_op)
        if colour.hsv is not None:
            limits = (colour.hsv.hue, colour.hsv.saturation, colour.hsv.value)
            hsv = torch.stack(
                [
                    _between(u[name], -limit, limit)
                    for name, limit in zip(("hue", "saturation", "value"), limits, strict=True)
                ],
                1,
            )
        if colour.clahe is not None:
            clip = _between(u["clip_limit"], *colour.clahe.clip_limit)
        if colour.brightness_contrast is not None:
            bc = colour.brightness_contrast
            contrast = _between(u["contrast"], -bc.contrast, bc.contrast)
            brightness = _between(u["brightness"], -bc.brightness, bc.brightness)
    return AugParams(
        seeds=seeds,
        hflip=hflip,
        vflip=vflip,
        affine_on=on,
        angle=angle,
        scale=scale,
        shift=torch.stack([tx, ty], 1),
        matrix=matrix,
        geometric=hflip | vflip | on,
        noise_on=noise_on,
        noise_std=noise_std,
        blur_on=blur_on,
        blur_sigma=blur_sigma,
        colour_op=colour_op,
        hsv_shift=hsv,
        clip_limit=clip,
        contrast=contrast,
        brightness=brightness,
    )
