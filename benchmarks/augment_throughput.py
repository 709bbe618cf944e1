"""Augmentation throughput: images/s of every path, side by side in one run, with ratios.

Rows (all on the same images, the same policy, one process unless stated):

- ``fused engine``: ``aug=kornia_gpu``'s default on CUDA (``aug.engine=fused``: the Triton
  kernels of :mod:`nailseg.augment.fused`, uint8 in, augmented and normalised float out); only
  where it can run (CUDA, or ``TRITON_INTERPRET=1`` for a slow functional check on a CPU), with
  the launches it makes per batch, counted by the dispatcher;
- ``reference engine``: the same transform as torch/Kornia ops (``aug.engine=reference``, the
  default on a CPU);
- ``stock Kornia``: ``kornia.augmentation.AugmentationSequential`` with Kornia's own ops for the
  same policy (flips, ``RandomAffine``, ``RandomGaussianNoise``, ``RandomGaussianBlur``, and for
  the colour one-of ``ColorJiggle`` (HSV), ``RandomClahe`` and ``ColorJiggle`` (brightness and
  contrast), each with ``p = colour.p / 3``: Kornia has no per-sample one-of), plus the same
  conversion and normalisation;
- ``convert + normalise``: the floor, ``aug=none``'s device transform;
- ``albumentations (bare)`` and ``albu_cpu transform``: per sample, per core; with
  ``--cpu-procs N`` also over N processes at once.

Then the engine's per-op breakdown (each stage timed alone, synchronised), so the limiter shows.
On CUDA the timed loops synchronise only at their ends; the breakdown synchronises per stage.

Usage:
    .venv/bin/python benchmarks/augment_throughput.py                       # CPU case: 256 px, 16
    .venv/bin/python benchmarks/augment_throughput.py --device cuda --size 384 --batch 32 \\
        --cpu-procs 16                                                       # the GPU case
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import kornia.augmentation as K
import numpy as np
import torch

from nailseg.augment.albu import AlbumentationsAugment, build_albumentations
from nailseg.augment.base import NoAugment
from nailseg.augment.kornia_gpu import KorniaAugment, fused_interpreted, fused_unavailable
from nailseg.augment.params import COLOUR_OPS, sample_params
from nailseg.augment.policy import AugPolicy
from nailseg.config import compose_config

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nails52"


def load_images(data: Path, size: int, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Real photos resized to ``size`` (nails52), or drawn noise where the data set is absent."""
    paths = sorted((data / "images").glob("*.jpg"))[:count]
    images, masks = [], []
    for path in paths:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        label = cv2.imread(str(data / "labels" / path.name), cv2.IMREAD_GRAYSCALE)
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST) > 127)
    if not images:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (size, size, 3), np.uint8) for _ in range(count)]
        masks = [rng.integers(0, 2, (size, size), np.uint8) for _ in range(count)]
    return images, [m.astype(np.uint8) for m in masks]


def stock_kornia(policy: AugPolicy) -> K.AugmentationSequential:
    """Kornia's own augmentation modules for the policy (see the module docstring)."""
    ops: list[torch.nn.Module] = []
    if policy.hflip_p:
        ops.append(K.RandomHorizontalFlip(p=policy.hflip_p))
    if policy.vflip_p:
        ops.append(K.RandomVerticalFlip(p=policy.vflip_p))
    if policy.affine is not None:
        a = policy.affine
        ops.append(K.RandomAffine(a.degrees, (a.translate, a.translate), tuple(a.scale), p=a.p))
    if policy.noise is not None:
        ops.append(K.RandomGaussianNoise(std=float(np.mean(policy.noise.std)), p=policy.noise.p))
    if policy.blur is not None:
        b = policy.blur
        ops.append(K.RandomGaussianBlur(b.kernel_size, tuple(b.sigma), p=b.p))
    colour = policy.colour
    if colour is not None and colour.ops():
        p = colour.p / len(colour.ops())
        if colour.hsv is not None:
            h = colour.hsv
            ops.append(K.ColorJiggle(0, 0, h.saturation, h.hue, p=p))
        if colour.clahe is not None:
            grid = (colour.clahe.grid_size, colour.clahe.grid_size)
            ops.append(K.RandomClahe(tuple(colour.clahe.clip_limit), grid, p=p))
        if colour.brightness_contrast is not None:
            bc = colour.brightness_contrast
            ops.append(K.ColorJiggle(bc.brightness, bc.contrast, 0, 0, p=p))
    return K.AugmentationSequential(*ops, data_keys=["input", "mask"])


def count_launches(step: Callable[[], object]) -> list[str]:
    """The device ops of one ``step`` (a custom op of the fused engine counts as its kernel)."""
    from nailseg.augment.fused.ops import LaunchCounter  # needs Triton: only where fused runs

    with LaunchCounter() as counter:
        step()
    return counter.ops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step: Callable[[], object], batch: int, device: torch.device, seconds: float) -> float:
    """Images/s of ``step`` (one batch a call), after a warm-up; synchronised at the ends only."""
    for _ in range(3):
        step()
    sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        if calls % 4 == 0:
            sync(device)
            if time.perf_counter() - start > seconds:
                break
    return calls * batch / (time.perf_counter() - start)


def alone_ms(part: Callable[[], object], device: torch.device, reps: int) -> float:
    """Milliseconds of one call of ``part``, timed alone (synchronised), median of ``reps``."""
    part()
    samples = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        part()
        sync(device)
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def stage_times(
    engine: KorniaAugment, image: torch.Tensor, mask: torch.Tensor, seeds: torch.Tensor, reps: int
) -> dict[str, tuple[float, float]]:
    """Milliseconds per batch of each part of the engine, timed alone (median of ``reps``).

    Two figures a part: as the engine runs it on this device (``where`` on CUDA, ``subset``
    elsewhere: only the samples it applies to), and on the whole batch (every sample).
    """
    device = image.device
    size = (image.shape[-2], image.shape[-1])
    params = sample_params(engine.policy, seeds, size)
    x, m = image.float().div_(255), mask.float()
    everyone = torch.ones_like(params.geometric)
    all_on = replace(params, geometric=everyone, noise_on=everyone, blur_on=everyone)
    parts: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "convert uint8 -> float": (lambda: image.float().div_(255),) * 2,
        "sample parameters": (lambda: sample_params(engine.policy, seeds, size),) * 2,
    }
    mode = engine._mode(device)
    for name, stage in engine.stages:
        code = COLOUR_OPS.index(name) if name in COLOUR_OPS else None
        whole = all_on
        if code is not None:
            whole = replace(all_on, colour_op=torch.full_like(params.colour_op, code))
        parts[name] = (
            lambda stage=stage: stage(x, m, params, mode),
            lambda stage=stage, whole=whole: stage(x, m, whole, "subset"),
        )
    parts["normalise"] = (lambda: engine.normalize_float(x),) * 2
    return {
        name: (alone_ms(a, device, reps), alone_ms(b, device, reps))
        for name, (a, b) in parts.items()
    }


def fused_step_times(
    engine: KorniaAugment, image: torch.Tensor, mask: torch.Tensor, seeds: torch.Tensor, reps: int
) -> dict[str, float]:
    """Milliseconds per batch of each launch of the fused engine, timed alone (median of
    ``reps``), in the order one batch runs them."""
    device = image.device
    steps, _, _ = engine.fused_transform().steps(image, mask, seeds)
    return {name: alone_ms(step, device, reps) for name, step in steps}


def albu_rates(
    policy: AugPolicy, images: list[np.ndarray], masks: list[np.ndarray], seconds: float
) -> dict[str, float]:
    """Per-sample images/s on this core: bare Albumentations and our albu_cpu transform.

    Interleaved rounds (bare, ours, bare, ...), median of each, so drift hits both alike.
    """
    pipeline = build_albumentations(policy, train=True)
    ours = AlbumentationsAugment(policy).sample_transform(train=True)
    pipeline.set_random_state(np.random.default_rng(0), random.Random(0))
    count = len(images)

    def bare(i: int) -> None:
        pipeline(image=images[i % count], mask=masks[i % count])

    def seeded(i: int) -> None:
        ours(images[i % count], masks[i % count], i)

    results: dict[str, list[float]] = {"albumentations (bare)": [], "albu_cpu transform": []}
    rounds = 6
    for _ in range(rounds):
        for name, fn in (("albumentations (bare)", bare), ("albu_cpu transform", seeded)):
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / (2 * rounds):
                fn(done)
                done += 1
            results[name].append(done / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in results.items()}


def _albu_worker(args: tuple) -> dict[str, float]:
    policy, size, data, seconds = args
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    images, masks = load_images(data, size, 16)
    return albu_rates(policy, images, masks, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--policy", default="tutorial", help="conf/aug/policy/NAME.yaml")
    parser.add_argument("--seconds", type=float, default=4.0, help="per timed row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU device)")
    parser.add_argument("--cpu-procs", type=int, default=0, help="albu over N processes too")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*not a GPU.*")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    device = torch.device(args.device)
    policy = AugPolicy.from_config(
        compose_config(["paths.output_dir=unused", f"aug/policy={args.policy}"]).aug.policy
    )
    images, masks = load_images(args.data, args.size, args.batch)
    image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)
    mask = torch.from_numpy(np.stack(masks))[:, None].to(device)
    seeds = torch.arange(args.batch, device=device) + 1000

    engine = KorniaAugment(policy, engine="reference")
    fused_runs = fused_unavailable() is None and (device.type == "cuda" or fused_interpreted())
    fused = KorniaAugment(policy, engine="fused") if fused_runs else None
    floor = NoAugment(policy)
    stock = stock_kornia(policy).to(device)

    def stock_step() -> None:
        x, m = stock(image.float().div(255), mask.float())
        floor.normalize_float(x)

    rows: dict[str, float] = {}
    launches = None
    if fused is not None:
        rows["fused engine"] = rate(
            lambda: fused.batch_transform(image, mask, seeds, True),
            args.batch,
            device,
            args.seconds,
        )
        launches = count_launches(lambda: fused.batch_transform(image, mask, seeds, True))
    rows["reference engine"] = rate(
        lambda: engine.batch_transform(image, mask, seeds, True), args.batch, device, args.seconds
    )
    rows["stock Kornia AugmentationSequential"] = rate(stock_step, args.batch, device, args.seconds)
    rows["convert + normalise (floor)"] = rate(
        lambda: floor.batch_transform(image, mask, seeds, True), args.batch, device, args.seconds
    )
    cv2_threads = cv2.getNumThreads()
    rows.update(albu_rates(policy, images, masks, 2 * args.seconds))
    if args.cpu_procs:
        with mp.get_context("spawn").Pool(args.cpu_procs) as pool:
            results = pool.map(
                _albu_worker,
                [(policy, args.size, args.data, 2 * args.seconds)] * args.cpu_procs,
            )
        for name in ("albumentations (bare)", "albu_cpu transform"):
            rows[f"{name}, {args.cpu_procs} processes"] = sum(r[name] for r in results)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"\nAugmentation throughput: {args.size}x{args.size} RGB + mask, batch {args.batch},"
        f" policy {args.policy}, device {device} ({name}), torch threads {args.threads},"
        f" OpenCV threads {cv2_threads}, torch {torch.__version__}"
    )
    print(f"{'path':<48} {'images/s':>12}")
    for row, value in rows.items():
        print(f"{row:<48} {value:>12,.0f}")
    engine_rate = rows["reference engine"]
    stock_rate = rows["stock Kornia AugmentationSequential"]
    ratios = {
        "reference / stock Kornia": engine_rate / stock_rate,
        "reference / floor (convert + normalise)": engine_rate
        / rows["convert + normalise (floor)"],
        "albu_cpu / bare Albumentations": rows["albu_cpu transform"]
        / rows["albumentations (bare)"],
        "reference / albu_cpu (one core)": engine_rate / rows["albu_cpu transform"],
    }
    if fused is not None:
        fused_rate = rows["fused engine"]
        ratios["fused / reference"] = fused_rate / engine_rate
        ratios["fused / stock Kornia"] = fused_rate / stock_rate
        ratios["fused / floor (convert + normalise)"] = (
            fused_rate / rows["convert + normalise (floor)"]
        )
        if args.cpu_procs:
            procs = rows[f"albu_cpu transform, {args.cpu_procs} processes"]
            ratios[f"fused / albu_cpu ({args.cpu_procs} processes)"] = fused_rate / procs
    print("\nratios")
    for name, value in ratios.items():
        print(f"  {name:<40} {value:8.3f}")
    if fused is None:
        print(f"\nfused engine: not run on {device.type} ({fused_unavailable() or 'needs CUDA'})")
    else:
        print(f"\nfused engine: {len(launches)} launches per batch: {', '.join(launches)}")
        steps = fused_step_times(fused, image, mask, seeds, reps=10)
        total = sum(steps.values())
        print(f"fused engine per-launch breakdown, ms per batch of {args.batch}, each timed alone")
        for step, ms in steps.items():
            print(f"  {step:<28} {ms:10.3f} {100 * ms / total:6.1f}%")
        print(f"  {'sum':<28} {total:10.3f}")

    times = stage_times(engine, image, mask, seeds, reps=10)
    total = sum(t[0] for t in times.values())
    mode = engine._mode(device)
    print(
        f"\nreference engine per-op breakdown, ms per batch of {args.batch}, each part timed alone"
    )
    print(f"  {'part':<24} {'as run (' + mode + ')':>16} {'share':>7} {'whole batch':>12}")
    for part, (ms, whole) in times.items():
        print(f"  {part:<24} {ms:16.2f} {100 * ms / total:6.1f}% {whole:12.2f}")
    print(f"  {'sum':<24} {total:16.2f}")


if __name__ == "__main__":
    main()
