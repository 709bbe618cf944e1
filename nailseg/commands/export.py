"""``nailseg export RUN_DIR --format onnx [--out FILE] [--opset N]``: the run's network as an ONNX
model, checked against PyTorch.

The ONNX graph maps normalised images ``image`` ``(B, 3, H, W)`` float32 to logits ``logits``
``(B, 1, H, W)``, with batch, height and width dynamic (height and width multiples of 32, as
for every smp encoder). What a user needs to prepare inputs and read outputs is in the model's
``metadata_props``: ``mean``, ``std`` (of [0, 1] RGB), ``threshold`` (on the sigmoid),
``image_size`` (trained at; ``[height, width]``), ``arch``, ``encoder``, ``input_range``,
``output``, and the ``run_dir``/``checkpoint`` it came from.

A multi-class run's logits are ``(B, C, H, W)``, one channel per class; its metadata has no
``threshold`` (the class is the argmax over the channels) but ``classes`` (the class names, class
``i`` being channel ``i``) and ``palette`` (one ``[r, g, b]`` per class), both JSON.

After writing, onnxruntime and PyTorch run the same random inputs of two sizes (64x64 and
96x128, batch 2); the largest absolute logit difference is printed, and above
:data:`TOLERANCE` the export fails (exit 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from nailseg.commands import add_run_argument, command
from nailseg.errors import ConfigError
from nailseg.inference import LoadedRun, load_run
from nailseg.runs.writable import ensure_writable_dir

TOLERANCE = 1e-4  # largest absolute difference of logits, onnxruntime vs PyTorch (float32)
CHECK_SIZES = ((64, 64), (96, 128))
DEFAULT_OPSET = 17
INSTALL_HINT = "pip install 'nailseg[export]' (onnx, onnxruntime)"


def opset_range() -> tuple[int, int]:
    """The ONNX opsets the installed torch's TorchScript exporter (``dynamo=False``, as
    :func:`export_onnx` uses) supports, from torch's constants (7 to 20 where torch has none).
    Above it torch only warns, and the graph may be wrong; below it, it refuses."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return 7, 20
    low = getattr(_constants, "ONNX_MIN_OPSET", 7)
    high = getattr(
        _constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 20)
    )
    return int(low), int(high)


def check_opset(opset: int) -> None:
    """Refuse an ``--opset`` the exporter does not support, naming the range.

    Raises:
        ConfigError: "--opset 3: the installed torch (2.x) exports ONNX opsets 7 to 20 ..."
    """
    low, high = opset_range()
    if not low <= opset <= high:
        raise ConfigError(
            f"--opset {opset}: the installed torch ({torch.__version__}) exports ONNX opsets"
            f" {low} to {high}. Give one of those, or leave --opset out ({DEFAULT_OPSET})."
        )


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ConfigError(
            f"ONNX export needs the onnx and onnxruntime packages ({err.name} is missing):"
            f" {INSTALL_HINT}."
        ) from err
    return onnx, onnxruntime


def metadata(loaded: LoadedRun) -> dict[str, str]:
    """The model's ``metadata_props``: everything needed to use it without the run dir."""
    meta = {
        "mean": json.dumps(loaded.normalization["mean"]),
        "std": json.dumps(loaded.normalization["std"]),
        "input_range": "RGB in [0, 1], then (x - mean) / std per channel",
    }
    if loaded.classes is None:
        meta["threshold"] = str(loaded.threshold)
        output = "logits (B, 1, H, W); foreground where sigmoid(logits) > threshold"
    else:
        meta["classes"] = json.dumps(list(loaded.classes))
        meta["palette"] = json.dumps([list(c) for c in loaded.palette or ()])
        output = (
            f"logits (B, {len(loaded.classes)}, H, W), channel i = class i of classes; the class"
            " is the argmax over the channels (their softmax gives probabilities)"
        )
    meta |= {
        "image_size": json.dumps(list(loaded.image_size)),
        "arch": loaded.arch,
        "encoder": loaded.encoder,
        "output": output,
        "run_dir": str(loaded.run_dir),
        "checkpoint": str(loaded.checkpoint),
    }
    return meta


def export_onnx(loaded: LoadedRun, out: Path, opset: int) -> None:
    """Write ``out`` with dynamic batch, height and width, and the metadata."""
    onnx, _ = _onnx_modules()
    model = loaded.model.cpu().eval()
    height, width = loaded.image_size
    example = torch.zeros(1, 3, height, width)
    dims = {0: "batch", 2: "height", 3: "width"}
    # The legacy TorchScript exporter (dynamo=False): faster than the dynamo one and writes one
    # self-contained file (no external-data side file for the weights).
    try:
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": dims, "logits": dims},
            opset_version=opset,
            dynamo=False,
        )
    except torch.onnx.errors.OnnxExporterError as err:
        if opset == DEFAULT_OPSET:
            raise  # the default opset exports every smp network: a failure there is a bug
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--opset {opset} cannot express this network ({first.split('. ')[0]}). Use a"
            f" newer opset, e.g. the default --opset {DEFAULT_OPSET}."
        ) from err
    proto = onnx.load(str(out))
    for key, value in metadata(loaded).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def check_parity(loaded: LoadedRun, out: Path) -> list[tuple[tuple[int, int], float]]:
    """The largest absolute logit difference, onnxruntime vs PyTorch, per size of
    :data:`CHECK_SIZES`."""
    _, ort = _onnx_modules()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    model = loaded.model.cpu().eval()
    diffs = []
    for size in CHECK_SIZES:
        x = torch.randn(2, 3, *size, generator=generator)
        with torch.inference_mode():
            expected = model(x).numpy()
        (got,) = session.run(["logits"], {"image": x.numpy()})
        if got.shape != expected.shape:
            raise ConfigError(
                f"{out}: onnxruntime gives logits of shape {got.shape} for input {tuple(x.shape)},"
                f" PyTorch {expected.shape}."
            )
        diffs.append((size, float(np.abs(got - expected).max())))
    return diffs


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nailseg export",
        description="Export a run's network to ONNX (dynamic batch/height/width, normalisation"
        " and threshold, or a multi-class run's class names and palette, in the metadata) and"
        " check it against PyTorch.",
    )
    add_run_argument(parser)
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--out", type=Path, default=None, help="file (default: RUN_DIR/model.onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = parser.parse_args(argv)
    check_opset(args.opset)
    _onnx_modules()  # before loading anything: a missing package is said at once
    loaded = load_run(args.run_dir, "cpu")
    out = (args.out or loaded.run_dir / "model.onnx").expanduser()
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a file, e.g. --out {out}/model.onnx.")
    ensure_writable_dir(
        out.parent, f"The folder of --out {out}", "Pass --out FILE in a writable folder."
    )
    export_onnx(loaded, out, args.opset)
    diffs = check_parity(loaded, out)
    worst = max(d for _, d in diffs)
    for (h, w), diff in diffs:
        print(f"onnxruntime vs PyTorch, 2x3x{h}x{w}: max |logit difference| {diff:.2e}")
    if worst > TOLERANCE:
        raise ConfigError(
            f"{out}: onnxruntime's logits differ from PyTorch's by {worst:.2e}, above the"
            f" tolerance {TOLERANCE:.0e}. Try another --opset (now {args.opset})."
        )
    print(f"Wrote {out} (opset {args.opset}; parity within {TOLERANCE:.0e})")
    return 0
