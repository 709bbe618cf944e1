"""Time to quality: the framework's defaults against a plain PyTorch loop, same data, same budget,
same number of cores, run side by side at the same time.

Each side is a process pinned to its own core(s) (``taskset``) with one thread per core. The
plain loop is what a user could write in 60 lines: smp U-Net/ResNet-18 from scratch, Dice+BCE,
AdamW at a constant 1e-3, horizontal flips only, 224 px, batches of 8, the whole set decoded into
memory first, one validation at the end. The framework runs ``python train.py data=folder
budget=...`` with nothing else changed. Both validate on the same split (the framework's split
CSVs, seed 42) with dataset-level IoU at threshold 0.5, each at its own image size.

Usage:
    python benchmarks/time_to_quality.py --budget 120
    python benchmarks/time_to_quality.py --budget 600 --images DIR --masks DIR
    python benchmarks/time_to_quality.py --budget 600 --file pairs.csv   # data=csv, its split

Prints one line per side and the difference in val IoU; with ``--seeds 0 1 2`` one race per
training seed (both sides; the split stays the same) and the means. A single race is noisy: the
plain loop's constant learning rate leaves its final weights wherever the last step put them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAILS52 = REPO.parent / "shared" / "data" / "nails52"


def plain_loop(split_dir: Path, budget: float, out: Path, size: int = 224, seed: int = 0) -> None:
    """The reference loop (run in its own pinned process)."""
    import cv2
    import numpy as np
    import segmentation_models_pytorch as smp
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    torch.manual_seed(seed)

    def load(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = [], []
        with (split_dir / f"{name}.csv").open() as f:
            for row in csv.DictReader(f):
                image = cv2.cvtColor(cv2.imread(row["image"]), cv2.COLOR_BGR2RGB)
                with Image.open(row["mask"]) as file:  # palette masks: indices, not colours
                    palette = file.mode == "P"
                    values = np.asarray(file if palette else file.convert("L"))
                mask = values > (0 if palette else 127)
                images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
                masks.append(
                    cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
                )
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x - mean) / std, torch.from_numpy(np.stack(masks)).float().unsqueeze(1)

    train_x, train_y = load("train")
    valid_x, valid_y = load("valid")
    model = smp.Unet("resnet18", encoder_weights=None, classes=1)
    dice, bce = smp.losses.DiceLoss("binary"), torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start, steps, epochs, step_s = time.monotonic(), 0, 0, 0.0
    done = False
    while not done:
        model.train()
        order = torch.randperm(len(train_x))
        for i in range(0, len(order), 8):
            t0 = time.monotonic()
            index = order[i : i + 8]
            x, y = train_x[index], train_y[index]
            flip = torch.rand(len(index)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            logits = model(x)
            loss = dice(logits, y) + bce(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            step_s = time.monotonic() - t0
            # Leave room for the final validation (about two steps' time on 10 images).
            if time.monotonic() - start + 3 * step_s > budget:
                done = True
                break
        epochs += 1
    model.eval()
    tp = fp = fn = 0.0
    with torch.no_grad():
        for i in range(0, len(valid_x), 8):
            pred = model(valid_x[i : i + 8]).sigmoid() > 0.5
            truth = valid_y[i : i + 8] > 0.5
            tp += (pred & truth).sum().item()
            fp += (pred & ~truth).sum().item()
            fn += (~pred & truth).sum().item()
    result = {
        "val_iou": tp / max(tp + fp + fn, 1),
        "epochs": epochs,
        "steps": steps,
        "seconds": round(time.monotonic() - start, 1),
    }
    out.write_text(json.dumps(result))


def data_overrides(args: argparse.Namespace) -> list[str]:
    if args.file:
        return ["data=csv", f"data.file={args.file.resolve()}"]
    return ["data=folder", f"data.images={args.images}", f"data.masks={args.masks}"]


def split_csvs(data: list[str], data_dir: Path) -> Path:
    """The framework's split of the data (what both sides train and validate on)."""
    sys.path.insert(0, str(REPO))
    from nailseg.build import instantiate_node
    from nailseg.config import compose_config
    from nailseg.data import datamodule_node

    cfg = compose_config(
        [
            *data,
            f"paths.data_dir={data_dir}",
            "paths.output_dir=unused",
        ]
    )
    datamodule = instantiate_node(datamodule_node(cfg.data), "datamodule")
    datamodule.setup("fit")
    return Path(datamodule.split_folder)


def cores(count: int, offset: int) -> str:
    available = sorted(os.sched_getaffinity(0))
    chosen = available[offset * count : (offset + 1) * count]
    if len(chosen) < count:
        sys.exit(f"needs {2 * count} cores for two sides of {count}; this machine has {available}")
    return ",".join(map(str, chosen))


def race(args: argparse.Namespace, split: Path, tmp_dir: Path, seed: int) -> tuple[dict, dict]:
    """One side-by-side pair with training seed ``seed`` (the split stays the same): the plain
    loop's result and the framework's run record."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.cores), "HF_HUB_OFFLINE": "1"}
    plain_out = tmp_dir / f"plain-{seed}.json"
    plain = subprocess.Popen(
        ["taskset", "-c", cores(args.cores, 0), sys.executable, __file__]
        + ["--plain", str(split), "--budget", str(args.budget), "--out", str(plain_out)]
        + ["--seed", str(seed)],
        env=env,
    )
    run_dir = tmp_dir / f"framework-{seed}"
    framework = subprocess.Popen(
        ["taskset", "-c", cores(args.cores, 1), sys.executable, str(REPO / "train.py")]
        + [
            *data_overrides(args),
            f"paths.data_dir={tmp_dir / 'data'}",
            f"hydra.run.dir={run_dir}",
            f"budget={args.budget}",
            f"seed={seed}",
            "data.seed=42",  # the split of split_csvs, whatever the training seed
            "trainer.enable_progress_bar=false",
            *args.overrides,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = framework.communicate()
    plain.wait()
    if framework.returncode != 0 or plain.returncode != 0:
        sys.exit(f"a side failed:\n{err[-3000:]}")
    return json.loads(plain_out.read_text()), json.loads((run_dir / "run.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=120, help="seconds of training per side")
    parser.add_argument("--images", type=Path, default=NAILS52 / "images")
    parser.add_argument("--masks", type=Path, default=NAILS52 / "labels")
    parser.add_argument("--file", type=Path, help="a list file (data=csv) instead of folders")
    parser.add_argument("--cores", type=int, default=1, help="cores per side")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="training seeds, one race each (the split stays seed 42's); the mean is printed",
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="more train.py overrides")
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # internal: run the loop
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_loop(args.plain, args.budget, args.out, seed=args.seed)
        return
    data = args.file or args.images.parent.name
    print(f"budget {args.budget:.0f} s, {args.cores} core(s) each, side by side; data {data}")
    plain_ious, our_ious = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        split = split_csvs(data_overrides(args), tmp_dir / "data")
        for seed in args.seeds:
            ref, record = race(args, split, tmp_dir, seed)
            ours, budget = record["metrics"]["val/iou"], record.get("budget", {})
            plain_ious.append(ref["val_iou"])
            our_ious.append(ours)
            print(f"seed {seed}: train/valid {record['data']['n']}", flush=True)
            print(
                f"  plain loop : val IoU {ref['val_iou']:.4f}  ({ref['epochs']} epochs,"
                f" {ref['steps']} steps, {ref['seconds']} s)"
            )
            print(
                f"  framework  : val IoU {ours:.4f}  ({budget.get('epochs')} epochs,"
                f" {budget.get('steps')} steps, {budget.get('used_s')} s,"
                f" {'x'.join(map(str, record['data'].get('image_size', [])))} px; best"
                f" {record.get('best_score') or float('nan'):.4f})"
            )
            print(f"  difference : {ours - ref['val_iou']:+.4f} val IoU", flush=True)
    if len(args.seeds) > 1:
        plain_mean, our_mean = statistics.mean(plain_ious), statistics.mean(our_ious)
        print(
            f"mean over {len(args.seeds)} seeds: plain loop {plain_mean:.4f}"
            f" (sd {statistics.stdev(plain_ious):.4f}), framework {our_mean:.4f}"
            f" (sd {statistics.stdev(our_ious):.4f}), difference {our_mean - plain_mean:+.4f}"
        )


if __name__ == "__main__":
    main()
