"""The fused Triton engine (``aug.engine=fused``) against the reference engine, sample by sample.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``,
set by ``conftest.py`` on a machine without CUDA; float32 only); with one, on CUDA. Parameters
must be equal bit for bit, images within 1/255, masks equal but for nearest-neighbour ties.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from nailseg.augment.base import NoAugment
from nailseg.augment.kornia_gpu import KorniaAugment, fused_interpreted
from nailseg.augment.params import TABLE_COLUMNS, sample_params
from nailseg.config import compose_config
from nailseg.errors import ConfigError

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(
    not CUDA and not fused_interpreted(),
    reason="the fused engine needs CUDA or Triton's interpreter (TRITON_INTERPRET=1)",
)
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _policy(name: str) -> dict:
    return dict(compose_config(["paths.output_dir=unused", f"aug/policy={name}"]).aug.policy)


# A policy that takes the other branches: nearest image resampling, vertical flips, no blur or
# noise, CLAHE alone on a 4 x 4 grid.
ODD = {
    "hflip_p": 0.5,
    "vflip_p": 0.5,
    "affine": {"p": 0.9, "degrees": 30, "interpolation": "nearest"},
    "noise": None,
    "blur": None,
    "colour": {
        "p": 0.9,
        "hsv": None,
        "brightness_contrast": None,
        "clahe": {"clip_limit": [1.0, 6.0], "grid_size": 4},
    },
}
POLICIES = {"tutorial": _policy("tutorial"), "heavy": _policy("heavy"), "odd": ODD}


def _batch(count: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Smooth photos-like images (CLAHE and blur have structure to work on) and random masks."""
    generator = torch.Generator().manual_seed(height * 1000 + width)
    coarse = torch.rand(count, 3, max(height // 8, 2), max(width // 8, 2), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, (height, width), mode="bilinear")
    grain = torch.rand(count, 3, height, width, generator=generator) * 0.1
    image = ((smooth * 0.9 + grain) * 255).round().to(torch.uint8)
    mask = (torch.rand(count, 1, height, width, generator=generator) > 0.5).to(torch.uint8)
    mask[:, :, :4, :4] = 255  # the void value rides along
    seeds = torch.arange(count, dtype=torch.int64) * 7919 + height
    return image.to(DEVICE), mask.to(DEVICE), seeds.to(DEVICE)


def _run(engine: KorniaAugment, image, mask, seeds, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not a GPU" (the reference on a CPU)
        return engine.batch_transform(image, mask, seeds, True, **kwargs)


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_kernel_draws_exactly_the_reference_parameters(name: str) -> None:
    engine = KorniaAugment(POLICIES[name], engine="fused")
    seeds = (torch.arange(512, dtype=torch.int64) * 104729 - 7).to(DEVICE)
    table = engine.fused_transform().params(seeds, (40, 56))
    reference = sample_params(engine.policy, seeds, (40, 56)).table()
    differ = {
        c: int(n) for c, n in zip(TABLE_COLUMNS, (table != reference).sum(0), strict=True) if n
    }
    assert not differ, differ
    # The draws are not all trivial: several ops are on, in some samples and off in others.
    flags = reference[:, [TABLE_COLUMNS.index(c) for c in ("geometric", "affine")]]
    assert 0 < float(flags.mean()) < 1


@pytest.mark.parametrize(
    ("name", "size"), [("tutorial", (40, 56)), ("heavy", (37, 51)), ("odd", (48, 48))]
)
def test_fused_images_and_masks_match_the_reference(name: str, size: tuple[int, int]) -> None:
    image, mask, seeds = _batch(12, *size)
    reference = KorniaAugment(POLICIES[name], engine="reference")
    fused = KorniaAugment(POLICIES[name], engine="fused")
    want_image, want_mask = _run(reference, image.cpu(), mask.cpu(), seeds.cpu())
    got_image, got_mask = _run(fused, image, mask, seeds)
    std = torch.tensor(reference.normalization["std"]).view(1, 3, 1, 1)
    error = (got_image.cpu() - want_image).abs() * std  # in [0, 1] image units
    assert float(error.max()) <= 1 / 255, float(error.max()) * 255
    assert got_mask.dtype == torch.float32
    assert float((got_mask.cpu() != want_mask).float().mean()) <= 1e-3
    # Every kind of op was exercised by this batch.
    params = sample_params(reference.policy, seeds.cpu(), size)
    assert params.geometric.any()
    ops = set(params.colour_op.tolist())
    assert len(ops) >= 2, ops


def test_output_dtype_layout_and_normalization() -> None:
    policy = POLICIES["tutorial"]
    image, mask, seeds = _batch(4, 32, 40)
    fused = KorniaAugment(policy, engine="fused", channels_last=True)
    out, _ = _run(fused, image, mask, seeds)
    assert out.is_contiguous(memory_format=torch.channels_last)
    plain, _ = _run(KorniaAugment(policy, engine="fused"), image, mask, seeds)
    assert plain.is_contiguous()
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    dtypes = [torch.bfloat16, torch.float16] if CUDA else []  # the interpreter is float32 only
    for dtype in dtypes:
        low, _ = _run(fused, image, mask, seeds, dtype=dtype)
        assert low.dtype == dtype
        torch.testing.assert_close(low.float(), plain, atol=0.05, rtol=0.01)


@pytest.mark.parametrize(("name", "most"), [("tutorial", 8), ("heavy", 8), ("odd", 8)])
def test_a_batch_is_a_handful_of_launches(name: str, most: int) -> None:
    """The issue's target: at most 8 device launches per batch (Triton kernels + aten ops)."""
    from nailseg.augment.fused.ops import LaunchCounter  # counts a custom op once, as its kernel

    engine = KorniaAugment(POLICIES[name], engine="fused")
    image, mask, seeds = _batch(2, 32, 32)
    _run(engine, image, mask, seeds)  # first call: compile (CUDA), policy copied once
    with LaunchCounter() as counter:
        _run(engine, image, mask, seeds)
    kernels = [op for op in counter.ops if op.startswith("nailseg::")]
    assert len(counter.ops) <= most, counter.ops
    assert {"nailseg::fused_params", "nailseg::fused_warp_noise", "nailseg::fused_finish"} <= set(
        kernels
    )
    # The reference, counted the same way, for scale (hundreds).
    reference = KorniaAugment(POLICIES[name], engine="reference", select="where")
    with LaunchCounter() as counter:
        _run(reference, image, mask, seeds)
    assert len(counter.ops) > 10 * most


def test_a_sample_augments_the_same_in_any_batch() -> None:
    engine = KorniaAugment(POLICIES["heavy"], engine="fused")
    image, mask, seeds = _batch(6, 32, 32)
    full = _run(engine, image, mask, seeds)
    order = torch.tensor([4, 1, 5], device=DEVICE)
    part = _run(engine, image[order], mask[order], seeds[order])
    torch.testing.assert_close(part[0], full[0][order], rtol=0, atol=0)
    torch.testing.assert_close(part[1], full[1][order], rtol=0, atol=0)
    # Seeds as a strided view (every other element of a table): the same batch.
    strided = torch.stack([seeds, seeds * 0], 1)[:, 0]
    assert not strided.is_contiguous()
    torch.testing.assert_close(_run(engine, image, mask, strided)[0], full[0], rtol=0, atol=0)


def test_engine_choice_and_removed_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = POLICIES["tutorial"]
    assert KorniaAugment(policy).uses_fused(torch.device("cpu")) is False
    assert KorniaAugment(policy, engine="reference").uses_fused(torch.device("cuda")) is False
    with pytest.raises(ConfigError, match=r"aug.engine='turbo' is invalid"):
        KorniaAugment(policy, engine="turbo")
    with pytest.raises(ConfigError, match="aug.compile=true was removed"):
        KorniaAugment(policy, compile=True)
    KorniaAugment(policy, compile=False)  # as older runs recorded it: they still resume
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ConfigError) as caught:
            KorniaAugment(policy, engine="fused")
        message = str(caught.value)
        assert "needs a CUDA GPU" in message and "aug.engine=auto" in message
        assert "\n" not in message


@requires_cuda
def test_the_fused_transform_captures_into_one_cuda_graph() -> None:
    engine = KorniaAugment(POLICIES["heavy"], engine="fused")
    image, mask, seeds = _batch(8, 64, 64)
    eager = _run(engine, image, mask, seeds, dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _run(engine, image, mask, seeds, dtype=torch.bfloat16)  # warm up off the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _run(engine, image, mask, seeds, dtype=torch.bfloat16)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured[0], eager[0], rtol=0, atol=0)
    torch.testing.assert_close(captured[1], eager[1], rtol=0, atol=0)
    # New seeds, same graph: a new augmentation.
    seeds.add_(1)
    graph.replay()
    torch.cuda.synchronize()
    assert not torch.equal(captured[0], eager[0])


@requires_cuda
def test_the_fused_train_step_has_no_host_sync() -> None:
    engine = KorniaAugment(POLICIES["heavy"], engine="fused")
    image, mask, seeds = _batch(8, 64, 64)
    _run(engine, image, mask, seeds)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _run(engine, image, mask, seeds, dtype=torch.bfloat16)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_a_policy_with_every_part_off_only_converts_and_normalises() -> None:
    """Off parts draw the reference's neutral values, and the kernels then change nothing."""
    off = {"hflip_p": 0.0, "affine": None, "noise": None, "blur": None, "colour": None}
    engine = KorniaAugment(off, engine="fused")
    image, mask, seeds = _batch(3, 24, 40)
    table = engine.fused_transform().params(seeds, (24, 40))
    assert torch.equal(table, sample_params(engine.policy, seeds, (24, 40)).table())
    out, out_mask = _run(engine, image, mask, seeds)
    plain, plain_mask = NoAugment(off).batch_transform(image, mask, seeds, False)
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-6)
    assert torch.equal(out_mask, plain_mask)


def test_every_kernel_compiles_for_an_h100() -> None:
    """Triton's CUDA compiler and ptxas (shipped with Triton) accept every kernel variant, for
    sm_90, on a machine without a GPU: what the interpreter cannot check."""
    script = Path(__file__).with_name("fused_compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(script), "90"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("cubin") == 9, done.stdout
