"""The fused engine on the host: one custom op per kernel, and the transform that chains them.

Each kernel of :mod:`nailseg.augment.fused.kernels` is one ``torch.library`` op that writes into
buffers it is given (``mutates_args``), so the dispatcher, ``TorchDispatchMode`` and
``torch.compile`` see every launch as one op, and the buffers are allocated where they can be
seen too. On CUDA the ops are ``torch.library.triton_op`` and launch through ``wrap_triton``;
under ``TRITON_INTERPRET=1`` (Triton's interpreter, which runs the kernels on CPU tensors and which
``wrap_triton`` refuses, pytorch #152868) they are plain ``custom_op`` s that call the kernels
directly. Per batch, for the ``tutorial`` policy: one zero fill (the CLAHE histograms) and five
kernels; nothing is read on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import triton
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from nailseg.augment.fused import kernels
from nailseg.augment.fused.clahe import clahe_lut_kernel, clahe_tiles
from nailseg.augment.kornia_gpu import fused_interpreted
from nailseg.augment.params import COLOUR_OPS, TABLE_COLUMNS
from nailseg.augment.policy import AugPolicy

# Read once, as Triton reads it when the kernels are defined (at import).
INTERPRET = fused_interpreted()
_TRITON_OP = hasattr(torch.library, "triton_op") and not INTERPRET
NAMESPACE = "nailseg"


def _op(name: str, mutates: Sequence[str]) -> Callable:
    register = torch.library.triton_op if _TRITON_OP else torch.library.custom_op
    return register(f"{NAMESPACE}::{name}", mutates_args=tuple(mutates))


def _launch(kernel: Callable) -> Callable:
    if _TRITON_OP:
        return torch.library.wrap_triton(kernel)
    return kernel


def _per_pixel(batch: Tensor) -> tuple[tuple[int, int], int]:
    """The launch grid and ``BLOCK`` of a kernel over ``batch``'s pixels (``(B, C, H, W)``): one
    program per block of one sample's plane (the kernels' ``_pixels``)."""
    count, _, height, width = batch.shape
    plane = height * width
    # On a GPU 1024 pixels a program; the interpreter runs programs one by one in Python, so
    # there a program takes a whole (small) test image.
    block = min(triton.next_power_of_2(plane), 1 << 14) if INTERPRET else 1024
    return (triton.cdiv(plane, block), count), block


@_op("fused_params", ["table"])
def fused_params(seeds: Tensor, policy: Tensor, table: Tensor, height: int, width: int) -> None:
    """Draw every sample's parameters (``table``, ``(B, len(TABLE_COLUMNS))``) from its seed."""
    count = seeds.shape[0]
    _launch(kernels.params_kernel)[(triton.cdiv(count, 128),)](
        seeds,
        policy,
        table,
        count,
        float(width),
        float(height),
        BLOCK=128,
        # No fused multiply-add: ``low + u * range`` rounds twice, as the reference's torch ops
        # do, so the parameters are equal bit for bit.
        enable_fp_fusion=False,
    )


@_op("fused_warp_noise", ["work", "mask_out"])
def fused_warp_noise(
    image: Tensor,
    mask: Tensor,
    table: Tensor,
    seeds: Tensor,
    work: Tensor,
    mask_out: Tensor,
    bilinear: bool,
    noise: bool,
) -> None:
    """Geometry (image and mask at one source point) and noise: uint8 in, float32 out."""
    height, width = image.shape[-2:]
    programs, block = _per_pixel(image)
    _launch(kernels.warp_noise_kernel)[programs](
        image,
        mask,
        table,
        seeds,
        work,
        mask_out,
        height,
        width,
        image.stride(0),
        image.stride(1),
        image.stride(2),
        image.stride(3),
        mask.stride(0),
        mask.stride(2),
        mask.stride(3),
        BILINEAR=bilinear,
        NOISE=noise,
        BLOCK=block,
    )


@_op("fused_blur", ["out", "hist"])
def fused_blur(
    work: Tensor,
    table: Tensor,
    out: Tensor,
    hist: Tensor,
    kernel_size: int,
    blur: bool,
    clahe: bool,
    grid: int,
    tile_h: int,
    tile_w: int,
) -> None:
    """Blur where drawn; CLAHE histograms of L where CLAHE was drawn."""
    height, width = work.shape[-2:]
    programs, block = _per_pixel(work)
    _launch(kernels.blur_kernel)[programs](
        work,
        table,
        out,
        hist,
        height,
        width,
        tile_h,
        tile_w,
        KSIZE=kernel_size,
        BLUR=blur,
        CLAHE=clahe,
        GRID=grid,
        BLOCK=block,
    )


@_op("fused_clahe_luts", ["luts"])
def fused_clahe_luts(hist: Tensor, table: Tensor, luts: Tensor, grid: int, pixels: int) -> None:
    """Clip, redistribute and accumulate each tile's histogram into its LUT (CLAHE samples)."""
    count = table.shape[0]
    _launch(clahe_lut_kernel)[(grid * grid, count)](
        hist,
        luts,
        table,
        table.stride(0),
        pixels,
        255.0 / pixels,
        CLIP_COL=TABLE_COLUMNS.index("clip_limit"),
        OP_COL=TABLE_COLUMNS.index("colour_op"),
        CLAHE_OP=COLOUR_OPS.index("clahe"),
        GRID=grid,
    )


@_op("fused_finish", ["out"])
def fused_finish(
    work: Tensor,
    table: Tensor,
    luts: Tensor,
    out: Tensor,
    scale: list[float],
    shift: list[float],
    hsv: bool,
    clahe: bool,
    brightness_contrast: bool,
    grid: int,
    tile_h: int,
    tile_w: int,
) -> None:
    """The colour op, normalisation, the model's dtype and memory format."""
    height, width = work.shape[-2:]
    programs, block = _per_pixel(work)
    _launch(kernels.finish_kernel)[programs](
        work,
        table,
        luts,
        out,
        height,
        width,
        tile_h,
        tile_w,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        out.stride(3),
        *scale,
        *shift,
        HSV=hsv,
        CLAHE=clahe,
        BC=brightness_contrast,
        GRID=grid,
        BLOCK=block,
    )


class LaunchCounter(TorchDispatchMode):
    """The ops the dispatcher runs inside the ``with`` block, by name (``ops``), less those that
    launch nothing (allocations, views). One of this module's ops counts once: its kernel."""

    FREE = ("empty", "empty_strided", "empty_like", "view", "as_strided", "alias", "detach")

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.name().split("::")[1].split(".")[0] not in self.FREE:
            self.ops.append(func.name().split(".")[0])
        return func(*args, **(kwargs or {}))


def _range(low: float, high: float) -> tuple[float, float]:
    return low, high - low


def policy_vector(policy: AugPolicy) -> list[float]:
    """The policy as the numbers the parameter kernel reads (``kernels.POLICY_SLOTS``).

    A part that is off has probability 0 and the ranges whose draw the reference then gives
    (``angle`` 0, ``scale`` 1, ``sigma`` 1, ``clip`` 1, shifts 0).
    """
    slots = dict.fromkeys(kernels.POLICY_SLOTS, 0.0)
    slots.update(hflip_p=policy.hflip_p, vflip_p=policy.vflip_p, scale_low=1.0, sigma_low=1.0)
    slots["clip_low"] = 1.0
    if policy.affine is not None:
        a = policy.affine
        slots.update(affine_p=a.p)
        slots["angle_low"], slots["angle_range"] = _range(-a.degrees, a.degrees)
        slots["scale_low"], slots["scale_range"] = _range(*a.scale)
        slots["shift_low"], slots["shift_range"] = _range(-a.translate, a.translate)
    if policy.noise is not None:
        slots["noise_p"] = policy.noise.p
        slots["std_low"], slots["std_range"] = _range(*policy.noise.std)
    if policy.blur is not None:
        slots["blur_p"] = policy.blur.p
        slots["sigma_low"], slots["sigma_range"] = _range(*policy.blur.sigma)
    colour = policy.colour
    if colour is not None and colour.ops():
        names = colour.ops()
        slots["colour_p"], slots["colour_count"] = colour.p, float(len(names))
        for k, name in enumerate(names):
            slots[f"code{k}"] = float(COLOUR_OPS.index(name))
        if colour.hsv is not None:
            for name in ("hue", "saturation", "value"):
                limit = getattr(colour.hsv, name)
                slots[f"{name}_low"], slots[f"{name}_range"] = _range(-limit, limit)
        if colour.clahe is not None:
            slots["clip_low"], slots["clip_range"] = _range(*colour.clahe.clip_limit)
        if colour.brightness_contrast is not None:
            bc = colour.brightness_contrast
            slots["contrast_low"], slots["contrast_range"] = _range(-bc.contrast, bc.contrast)
            slots["brightness_low"], slots["brightness_range"] = _range(
                -bc.brightness, bc.brightness
            )
    return [float(slots[name]) for name in kernels.POLICY_SLOTS]


class FusedTransform:
    """The training transform of one policy as the fused kernels (CUDA, or the interpreter).

    Args:
        policy: the policy (as the reference engine reads it).
        mean, std: the normalisation in use (the backend's ``normalization``).
        channels_last: write the image in ``torch.channels_last``.
    """

    def __init__(
        self,
        policy: AugPolicy,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
    ) -> None:
        self.policy = policy
        self.channels_last = channels_last
        # As the reference's normalize_float computes them: 1 / std and -mean / std in float32.
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1 / std_t).tolist()
        self.shift = (-mean_t / std_t).tolist()
        self._policy = torch.tensor(policy_vector(policy), dtype=torch.float32)
        self._on_device: dict[torch.device, Tensor] = {}
        colour = policy.colour
        ops = colour.ops() if colour is not None else []
        self.hsv, self.clahe, self.bc = (
            ("hsv" in ops),
            ("clahe" in ops),
            ("brightness_contrast" in ops),
        )
        self.grid = colour.clahe.grid_size if self.clahe else 1
        affine = policy.affine
        self.bilinear = affine is None or affine.interpolation == "bilinear"
        self.kernel_size = policy.blur.kernel_size if policy.blur is not None else 1

    def params(self, seeds: Tensor, size: tuple[int, int]) -> Tensor:
        """The parameter table of ``seeds`` (``(B, len(TABLE_COLUMNS))`` float32)."""
        seeds = seeds.contiguous()  # read with stride 1 (no copy when it is already)
        table = torch.empty(seeds.shape[0], len(TABLE_COLUMNS), device=seeds.device)
        fused_params(seeds, self._policy_on(seeds.device), table, size[0], size[1])
        return table

    def _policy_on(self, device: torch.device) -> Tensor:
        if device not in self._on_device:  # copied once per device, not once per batch
            self._on_device[device] = self._policy.to(device)
        return self._on_device[device]

    def __call__(
        self, image: Tensor, mask: Tensor, seeds: Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """uint8 ``(B, 3, H, W)`` image and ``(B, 1, H, W)`` mask -> the normalised image in
        ``dtype`` and the float32 mask, as the reference's ``_train_transform`` computes them."""
        steps, out, mask_out = self.steps(image, mask, seeds, dtype)
        for _, step in steps:
            step()
        return out, mask_out

    def steps(
        self, image: Tensor, mask: Tensor, seeds: Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[list[tuple[str, Callable[[], None]]], Tensor, Tensor]:
        """The launches of one batch, in order, as ``(name, launch)`` pairs over buffers
        allocated here, and the image and mask they fill. :meth:`__call__` runs them all; the
        benchmark times each alone (``benchmarks/augment_throughput.py``)."""
        count, _, height, width = image.shape
        device = image.device
        seeds = seeds.contiguous()  # the kernels read it with stride 1 (no copy when it is)
        table = torch.empty(count, len(TABLE_COLUMNS), device=device)
        work = torch.empty(count, 3, height, width, device=device)
        mask_out = torch.empty(count, 1, height, width, device=device)
        policy = self._policy_on(device)
        noise = self.policy.noise is not None
        steps: list[tuple[str, Callable[[], None]]] = [
            ("parameters", lambda: fused_params(seeds, policy, table, height, width)),
            (
                "geometry + noise",
                lambda: fused_warp_noise(
                    image, mask, table, seeds, work, mask_out, self.bilinear, noise
                ),
            ),
        ]
        if self.clahe:
            tile_h, tile_w = clahe_tiles(height, width, self.grid)
            hist = torch.empty(count, self.grid * self.grid, 256, device=device, dtype=torch.int32)
            luts = torch.empty(count, self.grid * self.grid, 256, device=device)
            steps.append(("zero CLAHE histograms", hist.zero_))
        else:  # never read: the kernels' CLAHE branches are compiled out
            tile_h = tile_w = 1
            hist, luts = torch.empty(1, device=device), torch.empty(1, device=device)
        blurred = work
        blur = self.policy.blur is not None
        if blur or self.clahe:
            blurred = torch.empty_like(work)
            steps.append(
                (
                    "blur + CLAHE histograms",
                    lambda: fused_blur(
                        work,
                        table,
                        blurred,
                        hist,
                        self.kernel_size,
                        blur,
                        self.clahe,
                        self.grid,
                        tile_h,
                        tile_w,
                    ),
                )
            )
        if self.clahe:
            pixels = tile_h * tile_w
            steps.append(
                ("CLAHE LUTs", lambda: fused_clahe_luts(hist, table, luts, self.grid, pixels))
            )
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(
            count, 3, height, width, device=device, dtype=dtype, memory_format=memory_format
        )
        steps.append(
            (
                "colour + normalise",
                lambda: fused_finish(
                    blurred,
                    table,
                    luts,
                    out,
                    self.scale,
                    self.shift,
                    self.hsv,
                    self.clahe,
                    self.bc,
                    self.grid,
                    tile_h,
                    tile_w,
                ),
            )
        )
        return steps, out, mask_out
