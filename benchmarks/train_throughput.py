"""End-to-end training throughput: train images/s through the real path, against the ideal.

Every row composes the real config (``train.py``'s), builds the DataModule, the LightningModule and
the Trainer with the project's own builders, and runs Lightning's ``fit``: config -> DataModule ->
(workers or ``data.cache=device``) -> ``on_after_batch_transfer`` -> LightningModule. Epoch 1
warms up (workers, cuDNN, allocator); epoch 2 is timed, synchronised at its start and its end.

"Ideal" is the same module, the same precision and the same determinism settings, fitted by the
same kind of Trainer on a batch that already sits on the device, augmented and normalised: only
the model's step is left. Each row's ratio to ideal is printed; all rows come from one process.

``aug=albu_cpu`` with ``data.cache=device`` is refused by the DataModule (Albumentations augments
per sample in CPU workers); the table says so instead of a figure.

Usage:
    .venv/bin/python benchmarks/train_throughput.py --quick            # a CPU smoke run
    .venv/bin/python benchmarks/train_throughput.py --size 384 --batch 32 --precision bf16-mixed \\
        --encoders effnet_b4 resnet18 --workers 8 --albu-workers 15    # the GPU case
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from nailseg.build import build_datamodule, build_module
from nailseg.config import compose_config
from nailseg.errors import NailsegError

AUGS = ("kornia_gpu", "albu_cpu", "none")
CACHES = ("ram", "device")


class EpochTimer(pl.Callback):
    """Wall time and sample count of the last training epoch, synchronised at both ends."""

    def __init__(self) -> None:
        self.seconds, self.images, self._start, self._count = 0.0, 0, 0.0, 0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._sync()
        self._start, self._count = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._count += int(batch["image"].shape[0])

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._sync()
        self.seconds, self.images = time.perf_counter() - self._start, self._count

    @property
    def rate(self) -> float:
        return self.images / self.seconds


class Repeat:
    """One batch ``count`` times: a loader (a list would be read as a list of loaders)."""

    def __init__(self, batch: dict, count: int) -> None:
        self.batch, self.count = batch, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter([self.batch] * self.count)


def _trainer(args: argparse.Namespace, timer: EpochTimer, deterministic) -> pl.Trainer:
    return pl.Trainer(
        accelerator="auto",
        devices=1,
        precision=args.precision,
        deterministic=deterministic,
        max_epochs=2,
        limit_train_batches=args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )


def _config(args: argparse.Namespace, tmp: Path, encoder: str, aug: str, cache: str):
    workers = args.albu_workers if aug == "albu_cpu" else args.workers
    return compose_config(
        [
            f"paths.output_dir={tmp / 'run'}",
            f"paths.data_dir={args.data_dir}",
            f"encoder={encoder}",
            f"aug={aug}",
            f"data.cache={cache}",
            f"data.image_size={args.size}",
            f"data.source.image_size={args.size}",
            f"data.source.count={args.count}",
            f"data.batch_size={args.batch}",
            f"data.num_workers={0 if cache == 'device' else workers}",
        ]
    )


def measure(args: argparse.Namespace, encoder: str, aug: str, cache: str) -> float | str:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args, Path(tmp), encoder, aug, cache)
        pl.seed_everything(cfg.seed, workers=True)
        try:
            datamodule = build_datamodule(cfg)
            datamodule.setup("fit")
            module = build_module(cfg)
            timer = EpochTimer()
            _trainer(args, timer, cfg.deterministic).fit(module, datamodule=datamodule)
        except NailsegError as err:
            return f"refused ({str(err).split(';')[0].split(' (')[0]})"
        return timer.rate


def ideal(args: argparse.Namespace, encoder: str) -> float:
    """The same module and Trainer settings stepped on one batch already on the device."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args, Path(tmp), encoder, "none", "ram")
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        raw = next(iter(datamodule.train_dataloader()))
        image, mask = datamodule.augment.batch_transform(
            raw["image"].to(device), raw["mask"].to(device), raw["seed"].to(device), False
        )
        batch = {"image": image, "mask": mask, "seed": raw["seed"].to(device)}
        module = build_module(cfg)
        timer = EpochTimer()
        trainer = _trainer(args, timer, cfg.deterministic)
        trainer.fit(module, train_dataloaders=Repeat(batch, args.steps))
        return timer.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["effnet_b4", "resnet18"])
    parser.add_argument("--augs", nargs="+", default=list(AUGS))
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed train batches")
    parser.add_argument("--count", type=int, default=0, help="synthetic samples (0: enough)")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, else 32")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--albu-workers", type=int, default=15)
    parser.add_argument("--data-dir", type=Path, default=Path("data/bench"))
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    args = parser.parse_args()
    if args.quick:
        args.encoders, args.size, args.batch, args.steps = ["resnet18"], 64, 4, 6
        args.workers = args.albu_workers = 1
    if args.precision is None:
        args.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    # Enough samples for the timed batches after the validation share is held out.
    args.count = args.count or int(args.batch * args.steps / 0.8) + args.batch
    warnings.filterwarnings("ignore")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    header = ["encoder", "ideal"] + [f"{a} {c}" for a in args.augs for c in CACHES]
    rows = []
    for encoder in args.encoders:
        ideal(args, encoder)  # warm-up: the process's first steps pick and build its kernels
        best = ideal(args, encoder)
        cells = [encoder, f"{best:,.0f}"]
        for aug in args.augs:
            for cache in CACHES:
                value = measure(args, encoder, aug, cache)
                cells.append(
                    value if isinstance(value, str) else f"{value:,.0f} ({value / best:.2f})"
                )
        rows.append(cells)
    print(
        f"\nTrain images/s (ratio to ideal): U-Net, {args.size}x{args.size}, batch {args.batch},"
        f" {args.precision}, {args.steps} timed batches after a warm-up epoch, workers"
        f" {args.workers} ({args.albu_workers} for albu_cpu), device {device},"
        f" torch {torch.__version__}"
    )
    print(" | ".join(header))
    for cells in rows:
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
