"""Inference on a trained run: load its network, predict (with test-time augmentation), score.

Shared by ``nailseg eval``, ``nailseg predict`` and ``nailseg export``
(:mod:`nailseg.commands`). Layer: train/build (next to :mod:`nailseg.build`).

Everything a prediction depends on comes from the run itself, never from today's defaults: the
network from the run's recorded config (``config.resolved.yaml``), its weights from the
checkpoint, the normalisation from the checkpoint's hyper-parameters (else ``run.json``), the
image size from the recorded ``data.image_size``, the threshold from ``run.json`` (written by
``nailseg eval --threshold auto``), else the checkpoint's.

Multi-class runs (the recorded ``data.classes`` is a list, see :mod:`nailseg.classes`): the
class names come from the recorded config and must be the checkpoint's
(``hyper_parameters["classes"]``); the colours of the label maps from the recorded
``data.palette``, else :func:`default_palette`; probabilities are the softmax over the channels
and the predicted class their argmax (no threshold).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics.functional.classification import (
    binary_stat_scores,
    multiclass_confusion_matrix,
)

from nailseg.build import instantiate_node
from nailseg.classes import check_classes
from nailseg.data.datamodule import as_size
from nailseg.errors import ConfigError, PickledCheckpointError
from nailseg.runs.checkpoint import read_checkpoint, read_error
from nailseg.runs.record import RUN_JSON, find_run_dir, read_config, read_run

log = logging.getLogger(__name__)

NET_PREFIX = "net."  # SegmentationModule keeps the network as ``self.net``
# The thresholds `best_threshold` tries: 0.05, 0.10, ..., 0.95.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass
class LoadedRun:
    """A trained network and what it needs to be used as it was trained.

    Attributes:
        model: the smp network in eval mode on ``device``; ``model(images)`` gives logits.
        run_dir: the run's dir; ``checkpoint``: the weights' file.
        cfg: the run's recorded config (``config.resolved.yaml``).
        record: its ``run.json``.
        normalization: ``{"mean": [r, g, b], "std": [r, g, b]}`` of the [0, 1] input.
        image_size: ``(height, width)`` the run trained at.
        threshold: foreground probability threshold (``run.json`` ``threshold``, else the
            checkpoint's); ``threshold_source`` says which. Binary runs only: a multi-class
            run's class is the argmax of its channels.
        classes: the class names of a multi-class run (the recorded ``data.classes``, the
            checkpoint's too), class ``i`` being output channel ``i``; ``None``: binary.
        palette: multi-class: one ``(r, g, b)`` per class, the recorded ``data.palette``, else
            :func:`default_palette`; ``None`` for binary.
    """

    model: nn.Module
    run_dir: Path
    checkpoint: Path
    cfg: DictConfig
    record: dict[str, Any]
    normalization: dict[str, list[float]]
    image_size: tuple[int, int]
    threshold: float
    threshold_source: str
    device: torch.device
    hparams: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None

    @property
    def multiclass(self) -> bool:
        return self.classes is not None

    @property
    def arch(self) -> str:
        return str(self.cfg.model.get("arch", self.cfg.model.get("_target_")))

    @property
    def encoder(self) -> str:
        return str(self.cfg.model.get("encoder_name", self.cfg.get("encoder", {}).get("name")))

    def normalize(self, images: Tensor) -> Tensor:
        """``uint8`` ``(B, 3, H, W)`` images to the normalised ``float32`` the network takes."""
        mean = torch.tensor(self.normalization["mean"], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.normalization["std"], device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255 - mean) / std


def resolve_run(path: Path | str) -> tuple[Path, Path | None]:
    """``(run_dir, checkpoint)`` for a run dir, a multirun job dir, ``run.json`` or a ``.ckpt``.

    A checkpoint's run dir is its grandparent (``RUN/checkpoints/x.ckpt``); ``checkpoint`` is
    ``None`` when a run dir was given (the run's best is used).
    """
    path = Path(path).expanduser()
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise ConfigError(f"Checkpoint {path} does not exist.")
        run_dir = path.resolve().parent.parent
        if not (run_dir / RUN_JSON).is_file():
            raise ConfigError(
                f"Checkpoint {path} is not inside a run dir: {run_dir} has no {RUN_JSON}, so the"
                " network's config (model.arch, encoder, image size, normalisation) is unknown."
                " Pass the run dir that wrote it, or keep the checkpoint in RUN/checkpoints/."
            )
        return run_dir, path.resolve()
    return find_run_dir(path), None


def _default_checkpoint(run_dir: Path, record: dict[str, Any]) -> Path:
    for key in ("best_checkpoint", "last_checkpoint"):
        value = record.get(key)
        if not value:
            continue
        # This run dir's own file first: a moved or copied run keeps the recorded paths of the
        # original.
        for ckpt in (run_dir / "checkpoints" / Path(value).name, Path(value)):
            if ckpt.is_file():
                return ckpt
    found = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    raise ConfigError(
        f"{run_dir / RUN_JSON} names no existing checkpoint (best_checkpoint:"
        f" {record.get('best_checkpoint')}, last_checkpoint: {record.get('last_checkpoint')})."
        + (
            f" Pass one of its checkpoints instead, e.g. {found[0]}."
            if found
            else " The run saved none: train it (longer) first."
        )
    )


def _plain(value: Any) -> Any:
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def _shape(tensor: Tensor | None) -> str:
    return "absent" if tensor is None else str(tuple(tensor.shape))


def check_state_dict(
    expected: dict[str, Tensor], state: dict[str, Tensor], what: str, recorded: str
) -> None:
    """Refuse weights that do not fit the network: ``ConfigError`` naming the first differing key
    with both shapes, the counts of missing, unexpected and wrongly shaped tensors, and
    ``recorded`` (the architecture and encoder the run's config says)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if not (missing or unexpected or wrong):
        return
    order = list(expected) + unexpected
    first = next(k for k in order if k in set(missing) | set(unexpected) | set(wrong))
    raise ConfigError(
        f"{what} does not fit the network its run recorded ({recorded}): first differing tensor"
        f" {first!r}: checkpoint {_shape(state.get(first))}, network {_shape(expected.get(first))}"
        f" ({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape)."
        " The checkpoint was trained with another model/encoder: pass the run dir that wrote it,"
        " or fix model.arch/encoder.name in its config.resolved.yaml."
    )


def default_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """``count`` distinct colours: Pascal VOC's colour map (class 0 black, then the bits of the
    class index interleaved into the high bits of red, green and blue).

    Examples:
        >>> default_palette(4)
        ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))
    """
    colours = []
    for index in range(count):
        rgb, bits = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        colours.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colours)


def describe_classes(classes: Sequence[str] | None) -> str:
    """``[background, nail, skin]``, or ``null (binary)``, for messages."""
    return "null (binary)" if classes is None else f"[{', '.join(classes)}]"


def threshold_refusal(classes: Sequence[str]) -> str:
    """The one line for ``--threshold`` on a multi-class run (``eval``, ``predict``)."""
    return (
        f"--threshold applies to binary runs only; this run has {len(classes)} classes"
        f" ({', '.join(classes)}): each pixel gets the class of highest probability. Leave"
        " --threshold out."
    )


def run_classes(
    cfg: DictConfig, hparams: dict[str, Any], ckpt: Path, run_dir: Path
) -> tuple[tuple[str, ...] | None, tuple[tuple[int, int, int], ...] | None]:
    """The class names and palette of a run (``None, None`` for binary), refusing a checkpoint
    whose ``hyper_parameters["classes"]`` are not the recorded ``data.classes``.

    Raises:
        ConfigError: one line naming both lists, e.g. "Checkpoint X was trained for classes
            [background, nail, skin] (its hyper_parameters) but its run recorded
            data.classes=[background, skin, nail] ...".
    """
    config_file = run_dir / "config.resolved.yaml"
    recorded = check_classes(_plain(cfg.data.get("classes")), f"data.classes in {config_file}")
    trained = check_classes(hparams.get("classes"), f"hyper_parameters.classes of {ckpt}")
    if recorded != trained:
        raise ConfigError(
            f"Checkpoint {ckpt} was trained for classes {describe_classes(trained)} (its"
            f" hyper_parameters) but its run recorded data.classes={describe_classes(recorded)}"
            f" in {config_file}: pass the run dir that wrote the checkpoint, or set data.classes"
            " there to the checkpoint's list."
        )
    return recorded, class_palette(recorded, _plain(cfg.data.get("palette")))


def class_palette(
    classes: Sequence[str] | None, palette: Sequence[Sequence[int]] | None = None
) -> tuple[tuple[int, int, int], ...] | None:
    """The colours label maps of these classes are drawn in: ``data.palette`` when it gives one
    per class, else :func:`default_palette`; ``None`` for binary (``classes`` ``None``)."""
    if classes is None:
        return None
    if palette is not None and len(palette) == len(classes):
        return tuple((int(r), int(g), int(b)) for r, g, b in palette)
    return default_palette(len(classes))


def trained_size(cfg: DictConfig, record: dict[str, Any], run_dir: Path) -> tuple[int, int]:
    """The ``(height, width)`` a run trained at: ``data.image_size``, or with ``auto`` the size
    it resolved to, recorded in ``run.json`` (``data.image_size``)."""
    size = _plain(cfg.data.image_size)
    if size == "auto":
        size = (record.get("data") or {}).get("image_size")
        if not size:
            raise ConfigError(
                f"{run_dir / RUN_JSON} does not say which size data.image_size=auto chose (the"
                " run stopped before its data check); it has no weights worth loading."
            )
    return as_size(size)


def load_run(
    path: Path | str, device: str | torch.device = "cpu", checkpoint: Path | str | None = None
) -> LoadedRun:
    """Load a trained run's network with its weights, normalisation, image size and threshold.

    Args:
        path: a run dir (single run or multirun job dir), its ``run.json``, or a ``.ckpt`` file
            inside ``RUN/checkpoints/``.
        device: where the network goes.
        checkpoint: another checkpoint than the run's ``best_checkpoint`` (else
            ``last_checkpoint``).

    Raises:
        ConfigError: not a run, no checkpoint, an unreadable one (one holding pickled Python
            objects: :class:`~nailseg.errors.PickledCheckpointError`), or weights that do not fit
            the recorded network.
    """
    run_dir, ckpt = resolve_run(path)
    record = read_run(run_dir)
    cfg = read_config(run_dir)
    ckpt = Path(checkpoint) if checkpoint is not None else ckpt
    ckpt = ckpt or _default_checkpoint(run_dir, record)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available here.")
    if not Path(ckpt).is_file():
        raise ConfigError(f"Checkpoint {ckpt} does not exist.")
    try:
        # weights_only: a checkpoint is data, never code to run (a pickle is refused).
        saved = read_checkpoint(ckpt, mmap=False)
    except PickledCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for a bad file
        raise ConfigError(
            f"Cannot read checkpoint {ckpt} ({read_error(err)}): it is truncated, damaged or"
            " not a checkpoint. Use a checkpoint that nailseg wrote."
        ) from err
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise ConfigError(f"{ckpt} is not a Lightning checkpoint (no state_dict).")
    hparams = dict(saved.get("hyper_parameters") or {})
    state = {
        k[len(NET_PREFIX) :]: v for k, v in saved["state_dict"].items() if k.startswith(NET_PREFIX)
    }
    node = copy.deepcopy(cfg.model)
    if "encoder_weights" in node:
        node.encoder_weights = None  # the weights come from the checkpoint: nothing to download
    # Before the weights: a checkpoint of another class list may well fit the network's shapes.
    classes, palette = run_classes(cfg, hparams, Path(ckpt), run_dir)
    model = instantiate_node(node, "network")
    recorded = (
        f"model.arch={node.get('arch')}, encoder.name={node.get('encoder_name')}"
        f" in {run_dir / 'config.resolved.yaml'}"
    )
    check_state_dict(model.state_dict(), state, f"Checkpoint {ckpt}", recorded)
    model.load_state_dict(state)
    model.eval().to(device)
    normalization = hparams.get("normalization") or record.get("normalization")
    if not normalization or "mean" not in normalization or "std" not in normalization:
        raise ConfigError(
            f"Neither {ckpt} (hyper_parameters.normalization) nor {run_dir / RUN_JSON}"
            " (normalization) says how the inputs were normalised; the run is too old or"
            " incomplete to predict with."
        )
    if record.get("threshold") is not None:
        threshold, source = (
            float(record["threshold"]),
            f"{RUN_JSON} (nailseg eval --threshold auto)",
        )
    else:
        threshold, source = float(hparams.get("threshold", 0.5)), "checkpoint"
    return LoadedRun(
        model=model,
        run_dir=run_dir,
        checkpoint=Path(ckpt),
        cfg=cfg,
        record=record,
        normalization={
            "mean": [float(v) for v in normalization["mean"]],
            "std": [float(v) for v in normalization["std"]],
        },
        image_size=trained_size(cfg, record, run_dir),
        threshold=threshold,
        threshold_source=source,
        device=device,
        hparams=hparams,
        classes=classes,
        palette=palette,
    )


# Flips of TTA: the dims of (B, C, H, W) each version flips; a flip is its own inverse.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def probabilities(logits: Tensor) -> Tensor:
    """The sigmoid of a binary network's one channel, the softmax over a multi-class one's."""
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(1)


@torch.inference_mode()
def predict_probs(model: nn.Module, images: Tensor, tta: bool = False) -> Tensor:
    """Probabilities of normalised images ``(B, 3, H, W)``: foreground ``(B, 1, H, W)`` (the
    sigmoid) for a binary network, one per class ``(B, C, H, W)`` (the softmax over the
    channels) for a multi-class one.

    With ``tta`` the identity, horizontal, vertical and both flips go through the network as one
    batch (concatenated along the batch), each output is flipped back, and the probabilities
    (sigmoid or softmax) are averaged.
    """
    if not tta:
        return probabilities(model(images))
    batch = torch.cat([images.flip(dims) if dims else images for dims in TTA_FLIPS])
    probs = probabilities(model(batch)).chunk(len(TTA_FLIPS))
    back = [p.flip(dims) if dims else p for p, dims in zip(probs, TTA_FLIPS, strict=True)]
    return torch.stack(back).mean(0)


def best_threshold(
    probs: Tensor | Sequence[Tensor],
    masks: Tensor | Sequence[Tensor],
    ignore_index: int | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> tuple[float, float]:
    """The threshold of ``thresholds`` with the highest dataset-level IoU, and that IoU.

    For each threshold the confusion counts are summed over all pixels of all images (void pixels
    left out) with torchmetrics' ``binary_stat_scores``, the function the evaluation itself
    uses, so "foreground" means ``prob > threshold`` here as in ``eval`` and ``predict``
    (torchmetrics' binned ``BinaryPrecisionRecallCurve`` would give all thresholds in one pass
    but counts ``prob >= threshold``). IoU is ``TP / (TP + FP + FN)``. Ties go to the threshold
    nearest 0.5.

    Args:
        probs: probabilities ``(N, 1, H, W)``, or a sequence of such batches.
        masks: targets of the same shapes, 1 foreground, 0 background, ``ignore_index`` void.
    """
    if isinstance(probs, Tensor):
        probs, masks = [probs], [masks]
    counts = torch.zeros(len(thresholds), 3, dtype=torch.float64)  # tp, fp, fn
    for p, m in zip(probs, masks, strict=True):
        p, m = p.detach().float().cpu(), m.detach().long().cpu()
        for row, threshold in enumerate(thresholds):
            tp, fp, _, fn, _ = binary_stat_scores(
                p, m, threshold=float(threshold), ignore_index=ignore_index
            ).tolist()
            counts[row] += torch.tensor([tp, fp, fn], dtype=torch.float64)
    tp, fp, fn = counts.unbind(1)
    iou = tp / (tp + fp + fn).clamp(min=1)
    grid = torch.tensor(list(thresholds), dtype=torch.float64)
    best = iou.max()
    ties = torch.nonzero(iou == best).flatten()
    pick = ties[(grid[ties] - 0.5).abs().argmin()]
    return float(grid[pick]), float(best)


def confusion_counts(
    probs: Tensor, masks: Tensor, threshold: float, ignore_index: int | None = None
) -> Tensor:
    """Per image ``[tp, fp, tn, fn, support]`` ``(N, 5)``: torchmetrics' ``binary_stat_scores``,
    samplewise, void pixels left out."""
    return binary_stat_scores(
        probs.float(),
        masks.long(),
        threshold=threshold,
        multidim_average="samplewise",
        ignore_index=ignore_index,
    ).reshape(-1, 5)


def class_confusion(
    labels: Tensor, masks: Tensor, num_classes: int, ignore_index: int | None = None
) -> Tensor:
    """Per image confusion matrices ``(N, C, C)`` (rows: true class, columns: predicted) of
    predicted classes ``(N, H, W)`` against class-index masks ``(N, 1, H, W)`` or ``(N, H, W)``,
    void pixels (``ignore_index``) left out: torchmetrics' ``multiclass_confusion_matrix``, the
    metric the LightningModule accumulates in training. Their sum over images is the
    dataset-level matrix, for :func:`nailseg.model.module.class_scores`."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    matrices = [
        multiclass_confusion_matrix(
            p.long(), t.long(), num_classes, ignore_index=ignore_index, validate_args=False
        )
        for p, t in zip(labels, masks, strict=True)
    ]
    if not matrices:
        return torch.zeros(0, num_classes, num_classes, dtype=torch.long)
    return torch.stack(matrices)


def scores(tp: float, fp: float, fn: float) -> dict[str, float]:
    """IoU, Dice, precision and recall from confusion counts.

    An image with no foreground in either mask or prediction scores 1 for IoU and Dice (nothing
    to find, nothing found); precision with no predicted and recall with no true foreground are
    ``nan`` (undefined).

    Examples:
        >>> scores(6, 2, 2)
        {'iou': 0.6, 'dice': 0.75, 'precision': 0.75, 'recall': 0.75}
    """
    union = tp + fp + fn
    return {
        "iou": tp / union if union else 1.0,
        "dice": 2 * tp / (union + tp) if union else 1.0,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
    }


def to_uint8_batch(images: Sequence[np.ndarray]) -> Tensor:
    """``(H, W, 3)`` ``uint8`` arrays of one size to a ``(B, 3, H, W)`` ``uint8`` tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
