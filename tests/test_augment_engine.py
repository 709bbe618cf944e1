"""The ``kornia_gpu`` reference engine: per-sample parameters, sync-free selection, output format.

Statistical parity with Albumentations is in ``test_augment_parity.py`` and image/mask alignment
in ``test_augment_alignment.py``; both run against this engine (on a CPU; ``aug.engine=auto``
runs the fused kernels on CUDA). The fused Triton engine is held to this one sample by sample in
``test_fused_engine.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nailseg.augment.counter_rng import normal_field, uniform
from nailseg.augment.kornia_gpu import KorniaAugment, gaussian_blur
from nailseg.augment.params import sample_params
from nailseg.augment.policy import AugPolicy
from nailseg.config import compose_config

HEAVY = dict(compose_config(["paths.output_dir=unused", "aug/policy=heavy"]).aug.policy)
DEVICES = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _batch(count: int = 12, size: int = 48) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    mask = (torch.rand(count, 1, size, size, generator=generator) > 0.5).to(torch.uint8)
    return image, mask, torch.arange(count, dtype=torch.int64) * 7919 + 11


def _augment(engine: KorniaAugment, image, mask, seeds, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not a GPU", tested in test_augment_device_path
        return engine.batch_transform(image, mask, seeds, True, **kwargs)


@pytest.mark.parametrize("select", ["where", "subset"])
def test_a_sample_augments_the_same_in_any_batch(select: str) -> None:
    engine = KorniaAugment(HEAVY, select=select)
    image, mask, seeds = _batch()
    full_image, full_mask = _augment(engine, image, mask, seeds)
    # The same samples in another order and in other company: each row is unchanged.
    order = torch.tensor([5, 0, 11, 3])
    part_image, part_mask = _augment(engine, image[order], mask[order], seeds[order])
    torch.testing.assert_close(part_image, full_image[order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part_mask, full_mask[order])
    alone_image, _ = _augment(engine, image[7:8], mask[7:8], seeds[7:8])
    torch.testing.assert_close(alone_image, full_image[7:8], atol=1e-5, rtol=1e-5)


def test_where_and_subset_give_the_same_batch() -> None:
    image, mask, seeds = _batch()
    where = _augment(KorniaAugment(HEAVY, select="where"), image, mask, seeds)
    subset = _augment(KorniaAugment(HEAVY, select="subset"), image, mask, seeds)
    torch.testing.assert_close(where[0], subset[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(where[1], subset[1])
    # And the batch was really augmented, by several different ops.
    params = sample_params(AugPolicy.from_config(HEAVY), seeds, (48, 48))
    assert params.geometric.any() and params.noise_on.any() and params.blur_on.any()
    assert len(set(params.colour_op.tolist())) >= 3


def test_another_seed_gives_another_augmentation() -> None:
    engine = KorniaAugment(HEAVY)
    image, mask, seeds = _batch()
    first, _ = _augment(engine, image, mask, seeds)
    second, _ = _augment(engine, image, mask, seeds + 1)
    per_sample = (first - second).abs().flatten(1).amax(1)
    assert (per_sample > 0.1).float().mean() > 0.8


def test_counter_rng_is_uniform_and_keyed_by_seed_alone() -> None:
    u = uniform(torch.arange(20_000), 3).numpy()
    for column in u.T:
        # KS distance to Uniform(0, 1), 0.1 % critical value for n = 20000: 1.95 / sqrt(n).
        sorted_ = np.sort(column)
        grid = np.arange(1, len(column) + 1) / len(column)
        assert np.abs(sorted_ - grid).max() < 1.95 / np.sqrt(len(column))
    assert abs(np.corrcoef(u.T)[0, 1]) < 4 / np.sqrt(len(u))
    noise = normal_field(torch.tensor([3, 9]), (3, 32, 32))
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
    torch.testing.assert_close(normal_field(torch.tensor([9]), (3, 32, 32)), noise[1:])


def test_where_path_has_no_host_reads() -> None:
    """The CUDA path traces as one graph: no ``.item()``, ``nonzero()`` or branch on a value.

    Dynamo breaks the graph at every op whose result the host must read (the syncs the issue
    forbids); ``subset`` reads ``nonzero`` on purpose and must show breaks, so this can fail.
    """
    engine = KorniaAugment(HEAVY)
    image, mask, seeds = _batch(4, 32)
    torch._dynamo.reset()
    where = torch._dynamo.explain(engine._train_transform)(
        image, mask, seeds, torch.float32, "where"
    )
    assert where.graph_break_count == 0, [b.reason for b in where.break_reasons]
    assert where.graph_count == 1
    subset = torch._dynamo.explain(engine._train_transform)(
        image, mask, seeds, torch.float32, "subset"
    )
    assert subset.graph_break_count > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_output_in_the_model_dtype_and_channels_last(dtype: torch.dtype) -> None:
    engine = KorniaAugment(HEAVY, channels_last=True)
    image, mask, seeds = _batch(4, 32)
    out, out_mask = _augment(engine, image, mask, seeds, dtype=dtype)
    reference, _ = _augment(KorniaAugment(HEAVY), image, mask, seeds)
    assert out.dtype == dtype and out_mask.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.01)
    valid, _ = engine.batch_transform(image, mask, seeds, False, dtype=dtype)
    assert valid.dtype == dtype and valid.is_contiguous(memory_format=torch.channels_last)


@requires_cuda
def test_cuda_draws_and_warps_as_the_cpu_does() -> None:
    """The same seeds give the same augmentation on CUDA as on a CPU (integer-hash draws)."""
    image, mask, seeds = _batch(32, 64)
    cpu = _augment(KorniaAugment(HEAVY), image, mask, seeds)
    cuda = _augment(KorniaAugment(HEAVY), image.cuda(), mask.cuda(), seeds.cuda())
    # Nearest-neighbour ties may round the other way where float sums differ in the last bit.
    assert (cuda[1].cpu() != cpu[1]).float().mean() < 1e-3
    assert (cuda[0].cpu() - cpu[0]).abs().mean() < 1e-2


@requires_cuda
def test_a_cuda_train_step_has_no_host_sync(make_cfg) -> None:
    """Transform, forward, loss, metrics, backward and optimiser step with syncs made errors."""
    from nailseg.build import build_module

    cfg = make_cfg("aug=kornia_gpu", "aug/policy=heavy")
    module = build_module(cfg).cuda()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    engine = KorniaAugment(HEAVY)
    image, mask, seeds = (t.cuda() for t in _batch(8, 64))

    def step() -> None:
        x, y = engine.batch_transform(image, mask, seeds, True)
        loss = module.training_step({"image": x, "mask": y, "seed": seeds}, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # first use: constants copied to the device once, kernels chosen
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_the_sync_free_blur_is_kornias_blur() -> None:
    """The reference's CUDA blur path (no host read of sigma) computes ``gaussian_blur2d``."""
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(4, 3, 37, 51, generator=generator)
    sigma = torch.tensor([0.3, 0.7, 1.2, 2.0])
    for size in (3, 5, 7):
        checked = gaussian_blur(image, size, sigma, host_check=True)
        free = gaussian_blur(image, size, sigma, host_check=False)
        torch.testing.assert_close(free, checked, atol=1e-6, rtol=0)
        assert not torch.equal(checked, image)


@requires_cuda
def test_the_reference_engine_on_cuda_reads_nothing_back() -> None:
    engine = KorniaAugment(HEAVY, engine="reference")
    image, mask, seeds = (t.cuda() for t in _batch(8, 64))
    engine.batch_transform(image, mask, seeds, True)  # constants copied once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.batch_transform(image, mask, seeds, True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
