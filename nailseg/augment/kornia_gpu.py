"""``aug=kornia_gpu``: the policy as one batched, sync-free engine on the model's device.

Workers only decode and resize and return ``uint8``; the batch is converted, augmented and
normalised after it reaches the device (``on_after_batch_transfer``), or is gathered there from
``data.cache=device``. Two engines compute the same transform (``aug.engine``):

- ``fused`` (the default on CUDA, ``auto``): a handful of Triton kernels per batch
  (:mod:`nailseg.augment.fused`): parameters, geometry with noise, blur with the CLAHE
  histograms, the CLAHE LUTs, colour with normalisation. Needs CUDA (or Triton's interpreter,
  ``TRITON_INTERPRET=1``, which the tests use on a CPU).
- ``reference`` (the default elsewhere): this module, built on Kornia's functional layer
  (``kornia.filters``, ``kornia.color``, ``kornia.enhance``), not on its augmentation wrappers;
  geometry is torch's ``grid_sample`` on one grid shared by image and mask (see
  :func:`sampling_grid` for why not ``kornia.geometry.warp_affine``). It defines what the
  policy means; the fused kernels are tested against it sample by sample.

In both:

- parameters: every random parameter of sample ``i`` is drawn on the device from that sample's
  seed alone (:mod:`nailseg.augment.params`, the same counter hash in both engines), so a sample
  augments the same way in any batch, on any device and in either engine, and ``nailseg preview``
  shows exactly what training sees;
- geometry: flips, rotation, scale and shift are one 2x3 matrix per sample; the image is resampled
  once (bilinear, or nearest) and the mask once (nearest) at the same points, zeros outside;
- intensity: noise, blur, HSV, CLAHE and brightness/contrast with per-sample parameters; whether
  an op applies to a sample is decided on the device. In the reference, a ``torch.where`` on
  CUDA (no host sync: the CPU can queue the model's kernels ahead of the GPU); on a CPU there is
  no device to wait for, so there the op runs only on the samples it applies to (the same
  values, less work). In the fused kernels, a branch on the sample's row of the parameter table;
- output: normalised, in the dtype the model computes in (``bf16``/``fp16`` under mixed
  precision), optionally ``channels_last``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from kornia.color import hsv_to_rgb, lab_to_rgb, rgb_to_hsv, rgb_to_lab
from kornia.filters import filter2d_separable, gaussian_blur2d, get_gaussian_kernel1d
from torch import Tensor
from torch.nn import functional as F

from nailseg.augment.base import AugmentBackend
from nailseg.augment.counter_rng import normal_field
from nailseg.augment.params import COLOUR_OPS, NOISE_STREAM, AugParams, sample_params
from nailseg.augment.policy import AugPolicy
from nailseg.errors import ConfigError

try:  # kornia >= 0.9: CLAHE with one clip limit per image, as a tensor (what RandomClahe uses).
    from kornia.enhance.equalization import _equalize_clahe
except ImportError:  # pragma: no cover - pyproject requires kornia >= 0.9
    _equalize_clahe = None

SELECT_MODES = ("auto", "where", "subset")
ENGINES = ("auto", "reference", "fused")
Op = Callable[[Tensor, AugParams], Tensor]


def _selected(
    tensors: tuple[Tensor, ...], on: Tensor, params: AugParams, op: Callable, mode: str
) -> tuple[Tensor, ...]:
    """``op`` applied to the samples where ``on``; the others pass through unchanged.

    ``op`` maps a tuple of batches (and their parameters) to a tuple of batches. ``where``: run on
    the whole batch and keep the result where ``on`` (no host sync, static shapes). ``subset``:
    gather the samples where ``on``, run, scatter back (``nonzero`` reads ``on`` on the host: free
    on a CPU, a sync on CUDA); when most samples are on, gathering and scattering cost more than
    the op saves, so it runs as ``where``.
    """
    index = None if mode == "where" else on.nonzero().flatten()
    if index is None or 2 * index.numel() > tensors[0].shape[0]:
        keep = on.view(-1, 1, 1, 1)
        return tuple(
            torch.where(keep, new, old)
            for new, old in zip(op(tensors, params), tensors, strict=True)
        )
    if index.numel() == 0:
        return tensors
    new = op(tuple(t[index] for t in tensors), params.select(index))
    return tuple(old.index_copy(0, index, n) for old, n in zip(tensors, new, strict=True))


def fused_interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``: CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fused_unavailable() -> str | None:
    """Why the fused engine cannot run on this machine, or ``None`` when it can."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (torch's Linux CUDA builds bring it)"
    if not torch.cuda.is_available() and not fused_interpreted():
        return "it needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False)"
    return None


def _on_image(op: Op) -> Callable:
    """An image-only op as a ``_selected`` op on ``(image,)``."""
    return lambda tensors, params: (op(tensors[0], params),)


def sampling_grid(matrix: Tensor, size: tuple[int, int]) -> Tensor:
    """The ``grid_sample`` grid of the pixel matrices ``matrix`` (``(B, 2, 3)``, source to output).

    With ``align_corners=True`` pixel ``p`` sits at normalised ``u = S^-1 (p - c)``, ``S`` and
    ``c`` both ``((W - 1) / 2, (H - 1) / 2)``. Output pixel ``S u + c`` comes from source pixel
    ``A^-1 (S u + c - t)``, so the normalised source is ``S^-1 A^-1 S u + S^-1 (A^-1 (c - t) - c)``.
    The 2x2 inverse is written out: ``torch.linalg.inv`` reads its status on the host (a sync on
    CUDA), and these matrices are never singular (their scale is positive).
    """
    height, width = size
    sx, sy = (width - 1) / 2, (height - 1) / 2
    a, b, tx = matrix[:, 0].unbind(1)
    c, d, ty = matrix[:, 1].unbind(1)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det  # A^-1
    rx, ry = sx - tx, sy - ty
    theta = torch.stack(
        [
            torch.stack([ia, ib * sy / sx, ((ia * rx + ib * ry) - sx) / sx], 1),
            torch.stack([ic * sx / sy, id_, ((ic * rx + id_ * ry) - sy) / sy], 1),
        ],
        1,
    )
    return F.affine_grid(theta, [matrix.shape[0], 1, height, width], align_corners=True)


def _noise(image: Tensor, params: AugParams) -> Tensor:
    field = normal_field(params.seeds, tuple(image.shape[1:]), NOISE_STREAM)
    return (image + field * params.noise_std.view(-1, 1, 1, 1)).clamp_(0, 1)


def gaussian_blur(image: Tensor, kernel_size: int, sigma: Tensor, host_check: bool | None = None):
    """Kornia's Gaussian blur (reflect border) with one sigma per image (``(B,)``).

    ``gaussian_blur2d`` reads a tensor sigma on the host to check it is positive: free on a CPU
    (where it also has a faster path), a sync on CUDA. Elsewhere the same 1-D kernels
    (``get_gaussian_kernel1d``) go through Kornia's ``filter2d_separable``, which reads nothing
    back; the policy's schema already keeps sigma positive. ``host_check`` forces a path (tests).
    """
    if image.device.type == "cpu" if host_check is None else host_check:
        return gaussian_blur2d(image, kernel_size, sigma[:, None].expand(-1, 2))
    kernel = get_gaussian_kernel1d(kernel_size, sigma[:, None])
    return filter2d_separable(image, kernel, kernel, "reflect")


def _hsv(image: Tensor, params: AugParams) -> Tensor:
    h, s, v = rgb_to_hsv(image).unbind(1)
    hue, saturation, value = (params.hsv_shift[:, k].view(-1, 1, 1) for k in range(3))
    h = torch.remainder(h + hue * (2 * math.pi), 2 * math.pi)
    # Albumentations leaves grey (saturation 0) pixels grey; so do we.
    s = torch.where(s > 0, (s + saturation).clamp(0, 1), s)
    v = (v + value).clamp(0, 1)
    return hsv_to_rgb(torch.stack([h, s, v], 1)).clamp_(0, 1)


def _brightness_contrast(image: Tensor, params: AugParams) -> Tensor:
    alpha = (1 + params.contrast).view(-1, 1, 1, 1)
    return (image * alpha + params.brightness.view(-1, 1, 1, 1)).clamp_(0, 1)


class KorniaAugment(AugmentBackend):
    """The fused device engine (see the module docstring).

    Args:
        policy: the augmentation policy (a config mapping or an :class:`AugPolicy`).
        channels_last: return images in ``torch.channels_last`` memory format.
        engine: ``auto`` (the fused kernels for CUDA batches, the reference elsewhere),
            ``fused`` (CUDA only: an error on a machine without it) or ``reference``.
        select: the reference engine's ``auto`` (``where`` on CUDA, ``subset`` elsewhere),
            ``where`` or ``subset``: how an op is kept to the samples it applies to (both give
            the same values).
        compile: removed (``torch.compile`` of the reference crashed in Inductor on CUDA, and
            the fused engine is already a few kernels); accepted as ``false`` so the records of
            older runs still resume, refused as ``true``.
        normalization: the encoder's ``{"mean": ..., "std": ...}``, used where the policy leaves
            them null; ``None``: ImageNet's (see :class:`~nailseg.augment.base.AugmentBackend`).
    """

    def __init__(
        self,
        policy: Mapping[str, Any] | AugPolicy | None = None,
        channels_last: bool = False,
        engine: str = "auto",
        select: str = "auto",
        normalization: Mapping[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(policy, channels_last=channels_last, normalization=normalization)
        if select not in SELECT_MODES:
            raise ConfigError(
                f"aug.select={select!r} is invalid: expected one of {list(SELECT_MODES)}."
                " Fix it in conf/aug/kornia_gpu.yaml or override aug.select=auto."
            )
        if engine not in ENGINES:
            raise ConfigError(
                f"aug.engine={engine!r} is invalid: expected one of {list(ENGINES)}."
                " Fix it in conf/aug/kornia_gpu.yaml or override aug.engine=auto."
            )
        if compile:
            raise ConfigError(
                "aug.compile=true was removed: torch.compile of the reference engine crashed in"
                " Inductor on CUDA, and on CUDA the fused engine (aug.engine=auto) is already a"
                " few kernels a batch. Drop aug.compile from the command or config."
            )
        if engine == "fused":
            reason = fused_unavailable()
            if reason:
                raise ConfigError(
                    f"aug.engine=fused cannot run here: {reason}. Use aug.engine=auto (fused on"
                    " CUDA, the reference elsewhere) or aug.engine=reference."
                )
        self.select, self.engine = select, engine
        self._fused: Callable | None = None
        self._fused_here: bool | None = None  # auto: can the fused kernels run here
        self._warned_device = False
        self.stages = self._build_stages(self.policy)

    def _build_stages(self, policy: AugPolicy) -> list[tuple[str, Callable]]:
        """The policy's stages in order; each is ``(image, mask, params, mode) -> (image, mask)``.

        Named, so the benchmark can time each one (``benchmarks/augment_throughput.py``).
        """
        stages: list[tuple[str, Callable]] = []
        if policy.hflip_p > 0 or policy.vflip_p > 0 or policy.affine is not None:
            stages.append(("geometry", self._geometry))
        if policy.noise is not None:
            stages.append(("noise", self._intensity(_noise, "noise_on")))
        if policy.blur is not None:
            size = policy.blur.kernel_size

            def blur(image: Tensor, params: AugParams) -> Tensor:
                return gaussian_blur(image, size, params.blur_sigma)

            stages.append(("blur", self._intensity(blur, "blur_on")))
        colour = policy.colour
        if colour is not None and colour.ops():
            ops: dict[str, Op] = {"hsv": _hsv, "brightness_contrast": _brightness_contrast}
            if colour.clahe is not None:
                ops["clahe"] = self._clahe(colour.clahe.grid_size)
            for name in colour.ops():
                stages.append((name, self._colour(ops[name], COLOUR_OPS.index(name))))
        return stages

    @staticmethod
    def _intensity(op: Op, flag: str) -> Callable:
        def stage(image: Tensor, mask: Tensor, params: AugParams, mode: str):
            (image,) = _selected((image,), getattr(params, flag), params, _on_image(op), mode)
            return image, mask

        return stage

    @staticmethod
    def _colour(op: Op, code: int) -> Callable:
        def stage(image: Tensor, mask: Tensor, params: AugParams, mode: str):
            (image,) = _selected((image,), params.colour_op == code, params, _on_image(op), mode)
            return image, mask

        return stage

    @staticmethod
    def _clahe(grid_size: int) -> Op:
        if _equalize_clahe is None:  # pragma: no cover
            raise ImportError("aug=kornia_gpu with CLAHE needs kornia>=0.9 (pip install -U kornia)")

        def clahe(image: Tensor, params: AugParams) -> Tensor:
            # On the L channel of LAB, as Albumentations/OpenCV do for RGB images: equalising
            # R, G and B separately would shift colours.
            lab = rgb_to_lab(image)
            lightness = (lab[:, :1] / 100).clamp(0, 1)
            lightness = _equalize_clahe(lightness, params.clip_limit, (grid_size, grid_size), False)
            return lab_to_rgb(torch.cat([lightness * 100, lab[:, 1:]], 1)).clamp_(0, 1)

        return clahe

    def _geometry(self, image: Tensor, mask: Tensor, params: AugParams, mode: str):
        interpolation = self.policy.affine.interpolation if self.policy.affine else "bilinear"

        def warp(pair: tuple[Tensor, Tensor], params: AugParams) -> tuple[Tensor, Tensor]:
            image, mask = pair
            # One grid for both, so the mask's nearest source pixel is one of the four the image
            # interpolates. (kornia's warp_affine builds its grid anew on each call, which costs
            # more than the resampling itself on a CPU.)
            grid = sampling_grid(params.matrix, (image.shape[-2], image.shape[-1]))
            return (
                F.grid_sample(image, grid, interpolation, "zeros", align_corners=True),
                F.grid_sample(mask, grid, "nearest", "zeros", align_corners=True),
            )

        return _selected((image, mask), params.geometric, params, warp, mode)

    def uses_fused(self, device: torch.device) -> bool:
        """Whether training batches on ``device`` go through the fused kernels."""
        if self.engine == "reference":
            return False
        if self.engine == "fused":
            if device.type != "cuda" and not fused_interpreted():
                raise ConfigError(
                    f"aug.engine=fused runs on CUDA tensors, but this batch is on {device.type}"
                    " (trainer.accelerator?). Use aug.engine=auto or aug.engine=reference."
                )
            return True
        if device.type != "cuda":
            return False
        if self._fused_here is None:  # asked once, not at every batch
            self._fused_here = fused_unavailable() is None
        return self._fused_here

    def fused_transform(self) -> Callable:
        """The fused engine of this policy (:class:`nailseg.augment.fused.ops.FusedTransform`)."""
        if self._fused is None:
            from nailseg.augment.fused.ops import FusedTransform

            self._fused = FusedTransform(
                self.policy,
                self.normalization["mean"],
                self.normalization["std"],
                channels_last=self.channels_last,
            )
        return self._fused

    def _mode(self, device: torch.device) -> str:
        if self.select != "auto":
            return self.select
        return "where" if device.type == "cuda" else "subset"

    def augment_float(
        self, image: Tensor, mask: Tensor, params: AugParams, mode: str = "where"
    ) -> tuple[Tensor, Tensor]:
        """Every stage on a float ``[0, 1]`` batch with the given parameters."""
        for _, stage in self.stages:
            image, mask = stage(image, mask, params, mode)
        return image, mask

    def _train_transform(
        self, image: Tensor, mask: Tensor, seeds: Tensor, dtype: torch.dtype, mode: str
    ) -> tuple[Tensor, Tensor]:
        params = sample_params(self.policy, seeds, (image.shape[-2], image.shape[-1]))
        image, mask = self.augment_float(image.float().div_(255), mask.float(), params, mode)
        return self.normalize_float(image, dtype), mask

    def batch_transform(
        self,
        image: Tensor,
        mask: Tensor,
        seeds: Tensor,
        train: bool,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        self.check_uint8(image)
        if not train:
            return self.normalize_uint8(image, dtype), mask.float()
        device = image.device
        if self.uses_fused(device):
            return self.fused_transform()(image, mask, seeds, dtype)
        if device.type != "cuda" and not self._warned_device:
            warnings.warn(
                f"aug=kornia_gpu is augmenting on {device.type}, not a GPU: it works, but the"
                " speed-up of GPU augmentation needs a CUDA device.",
                stacklevel=2,
            )
            self._warned_device = True
        return self._train_transform(image, mask, seeds, dtype, self._mode(device))
