"""Building the segmentation network from segmentation-models-pytorch, with clear errors.

Registries are plain dicts behind one lookup; a bad key lists the valid ones.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import try_to_load_from_cache
from segmentation_models_pytorch.encoders import (
    get_preprocessing_params,
    is_equivalent_to_timm_universal,
)
from torch import nn

from nailseg.errors import ConfigError, EncoderWeightsError, did_you_mean, refused_pickle

log = logging.getLogger(__name__)

# smp's own registry (``smp.create_model`` reads it): every architecture smp can build, DPT
# included, without a second list here to keep in step.
ARCHITECTURES: Mapping[str, type[nn.Module]] = smp.MODEL_ARCHITECTURES_MAPPING


def _unknown(kind: str, value: str, options: list[str], key: str) -> ConfigError:
    return ConfigError(
        f"Unknown {kind} {value!r} ({key}).{did_you_mean(value, options, quote=True)}"
        f" Options: {', '.join(sorted(options))}."
    )


def check_encoder_name(name: str) -> None:
    """An smp encoder name, or ``tu-`` and any timm model (``tu-resnet10t``, ``tu-NAME.TAG``)."""
    if name.startswith("tu-"):
        if not timm.is_model(name[3:]):
            models = timm.list_models()
            raise ConfigError(
                f"Unknown timm encoder {name!r} (encoder.name): timm has no model"
                f" {name[3:]!r}.{did_you_mean(name[3:], models, 'tu-', quote=True)} Any timm"
                " model works as tu-NAME (python -c 'import timm; print(timm.list_models())')."
            )
        return
    options = list(smp.encoders.get_encoder_names())
    if name not in options:
        raise _unknown("encoder", name, options, "encoder.name")


def build_network(
    arch: str,
    encoder_name: str,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 1,
    **arch_kwargs: Any,
) -> nn.Module:
    """Build an smp model that outputs ``(B, classes, H, W)`` logits.

    Args:
        arch: an architecture smp registers (:data:`ARCHITECTURES`: ``unet``, ``fpn``, ``dpt``...).
        encoder_name: any smp encoder name (``resnet18``, ``timm-efficientnet-b4``, ...), or
            ``tu-`` and a timm model name (``tu-resnet10t``).
        encoder_weights: ``None`` (random init), a pretrained name known to smp for this encoder
            (``imagenet``; for ``tu-`` encoders timm's pretrained tag), or the path of a local
            encoder state dict (``.pth``/``.pt``/``.safetensors``, see
            :func:`load_encoder_weights`).
        arch_kwargs: passed to the smp class; ``None`` values are dropped (library default).
    """
    if arch not in ARCHITECTURES:
        raise _unknown("architecture", arch, list(ARCHITECTURES), "model.arch")
    check_encoder_name(encoder_name)
    kwargs = {k: v for k, v in arch_kwargs.items() if v is not None}
    factory = ARCHITECTURES[arch]
    _check_arch_options(arch, factory, encoder_name, kwargs)
    local_file = None
    pretrained: str | bool | None = encoder_weights  # what smp gets
    if encoder_weights is not None and _looks_like_path(encoder_weights):
        local_file, pretrained = Path(encoder_weights).expanduser(), None
        if not local_file.is_file():
            raise EncoderWeightsError(
                f"Encoder weights file not found: {local_file} (encoder.weights). Give an existing"
                " state-dict file, encoder.weights=imagenet with a network, or"
                " encoder.weights=null."
            )
    elif encoder_weights is not None and encoder_name.startswith("tu-"):
        # timm picks the pretrained tag (its default, or NAME.TAG); smp wants True for it.
        if encoder_weights != "imagenet":
            raise ConfigError(
                f"Encoder {encoder_name!r} takes encoder.weights=imagenet (timm's pretrained"
                f" weights; choose a tag with encoder.name={encoder_name}.TAG), not"
                f" {encoder_weights!r}; or a local file path, or null."
            )
        pretrained = True
    elif encoder_weights is not None:
        known = list(smp.encoders.encoders[encoder_name].get("pretrained_settings", {}))
        if encoder_weights not in known:
            raise ConfigError(
                f"Encoder {encoder_name!r} has no pretrained weights named {encoder_weights!r}"
                f" (encoder.weights). Options: {', '.join(known) or 'none'}, a local file path, or"
                " null."
            )
    try:
        net = factory(
            encoder_name=encoder_name,
            encoder_weights=pretrained,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except (OSError, ConnectionError, RuntimeError) as err:
        if pretrained is None:
            raise
        raise EncoderWeightsError(
            f"Could not load {encoder_weights!r} weights for encoder {encoder_name!r}"
            f" ({_first_line(err)}): they are downloaded on first use, and this machine seems"
            " offline. Either: (1) run once"
            " with a network to fill the cache (HF_HOME / TORCH_HOME); (2) download the encoder's"
            " state dict elsewhere and pass encoder.weights=/path/to/file.pth; or (3) train from"
            " scratch with encoder.weights=null."
        ) from err
    except TypeError as err:
        raise ConfigError(
            f"Bad option for model.arch={arch}: {err}. Check the keys under model."
        ) from err
    if local_file is not None:
        load_encoder_weights(net.encoder, local_file, encoder_name)
    return net


def encoder_normalization(encoder_name: str) -> dict[str, Any]:
    """The encoder's pretrained input normalisation, from smp, offline (nothing is downloaded).

    ``tu-`` encoders (and the ``timm-`` names smp builds as ``tu-``): smp's
    ``get_preprocessing_params``, which reads timm's pretrained config of the model (its default
    tag, or ``tu-NAME.TAG``'s), shipped with timm. smp's own encoders (``resnet18``,
    ``mobilenet_v2``, ``timm-efficientnet-b4``...): smp 0.5+ keeps their values in the
    ``config.json`` of their ``imagenet`` weights on the Hugging Face Hub, which
    ``get_preprocessing_params`` would download; it is read here only from the local cache (smp
    stores it there with the weights, ``encoder.weights=imagenet``). Where neither gives values
    (no cached config, a timm model without pretrained weights): ImageNet's, which are also what
    smp's config gives ``resnet18`` and ``mobilenet_v2``. Values for an input range of
    ``[0, 255]`` are scaled to the ``[0, 1]`` images the augmentation backends normalise.

    Args:
        encoder_name: ``encoder.name``: an smp encoder or ``tu-`` and a timm model.

    Returns:
        ``{"mean": [r, g, b], "std": [r, g, b], "source": "<where the values come from>"}``.

    Raises:
        ConfigError: for an unknown encoder name (as :func:`check_encoder_name`).

    Examples:
        >>> encoder_normalization("tu-resnet18")["mean"]
        [0.485, 0.456, 0.406]
        >>> encoder_normalization("tu-tf_efficientnet_b4.ap_in1k")["std"]
        [0.5, 0.5, 0.5]
    """
    name = encoder_name
    if is_equivalent_to_timm_universal(name):  # as smp.encoders.get_encoder builds them
        name = name.replace("timm-", "tu-")
        if "mobilenetv3" in name:
            name = name.replace("tu-", "tu-tf_")
    else:
        check_encoder_name(name)
    imagenet = "ImageNet's mean/std (timm.data.IMAGENET_DEFAULT_*): {}"
    if name.startswith("tu-"):
        try:
            settings = get_preprocessing_params(name)
        except ValueError:  # a timm model without pretrained weights or config
            return _imagenet(imagenet.format(f"timm has no pretrained config for {name[3:]!r}"))
        source = f"timm pretrained config of {name[3:]!r} (smp get_preprocessing_params)"
    else:
        weights = smp.encoders.encoders[name]["pretrained_settings"].get("imagenet")
        if weights is None:
            return _imagenet(imagenet.format(f"smp has no imagenet weights for {name!r}"))
        repo, revision = weights["repo_id"], weights["revision"]
        path = try_to_load_from_cache(repo, "config.json", revision=revision)
        if not isinstance(path, str):
            return _imagenet(
                imagenet.format(
                    f"smp keeps the values of {name!r} in the config.json of {repo} on the"
                    " Hugging Face Hub, not in the local cache (saved there with"
                    " encoder.weights=imagenet)"
                )
            )
        settings = json.loads(Path(path).read_text())
        source = f"smp config of {name!r} imagenet weights ({repo} config.json, cached)"
    scale = 255.0 if max(settings.get("input_range", [0, 1])) > 1 else 1.0
    if settings.get("input_space", "RGB") != "RGB":
        source += f"; note: this encoder expects {settings['input_space']} input"
    return {
        "mean": [float(v) / scale for v in settings["mean"]],
        "std": [float(v) / scale for v in settings["std"]],
        "source": source,
    }


def _imagenet(source: str) -> dict[str, Any]:
    return {
        "mean": list(timm.data.IMAGENET_DEFAULT_MEAN),
        "std": list(timm.data.IMAGENET_DEFAULT_STD),
        "source": source,
    }


def _looks_like_path(value: str) -> bool:
    return any(sep in value for sep in ("/", "\\")) or value.endswith(
        (".pth", ".pt", ".safetensors")
    )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def _check_arch_options(
    arch: str, factory: type[nn.Module], encoder_name: str, options: dict[str, Any]
) -> None:
    """Refuse options the architecture does not name, unless a timm encoder takes them.

    smp hands such options to the encoder, and only timm (``tu-``) encoders use them: with any
    other encoder a misspelt ``model.decoder_chanels`` would be dropped without a word.
    """
    if encoder_name.startswith("tu-") or is_equivalent_to_timm_universal(encoder_name):
        return
    named = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and p.name not in ("encoder_name", "encoder_weights", "in_channels", "classes")
    ]
    for key in options:
        if key not in named:
            raise ConfigError(
                f"Unknown key model.{key} for model.arch={arch} ({factory.__name__}, encoder"
                f" {encoder_name!r}).{did_you_mean(key, named, 'model.')} Fix the name or remove"
                f" it. Options: {', '.join(f'model.{n}' for n in named)}."
            )


def load_encoder_weights(encoder: nn.Module, path: Path, encoder_name: str = "") -> None:
    """Load a local state-dict file into ``encoder``, strictly, as smp loads its own weights.

    The file holds tensors only: ``torch.save(model.encoder.state_dict(), path)`` or a
    ``.safetensors`` file (pickled objects are refused). A whole smp model's state dict, or a
    Lightning checkpoint's ``state_dict``, also works: the ``...encoder.`` prefix is stripped.

    Raises:
        EncoderWeightsError: one line naming the file and what is wrong: unreadable, not a state
            dict, or missing, unexpected or wrongly shaped tensors (counts and examples).

    Examples:
        >>> net = smp.Unet("resnet18", encoder_weights=None)
        >>> torch.save(net.encoder.state_dict(), "/tmp/resnet18.pth")
        >>> load_encoder_weights(smp.Unet("resnet18", encoder_weights=None).encoder,
        ...                      Path("/tmp/resnet18.pth"), "resnet18")
    """
    expected = encoder.state_dict()
    state = _timm_model_state(_strip_prefix(_read_state_dict(path), expected), expected)
    try:
        # smp's encoders override load_state_dict (dropping classifier heads, renaming old keys)
        # and most return None, not torch's missing/unexpected keys: load strictly through the
        # override (on a copy: it pops keys), and say what does not fit when it refuses.
        encoder.load_state_dict(dict(state))
    except (RuntimeError, KeyError, ValueError) as err:
        raise EncoderWeightsError(_misfit(path, encoder_name, state, expected, err)) from err
    log.info("Loaded encoder weights from %s (%d tensors)", path, len(state))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    how = (
        "Give a file saved with torch.save(model.encoder.state_dict(), PATH) or a .safetensors"
        " file, encoder.weights=imagenet with a network, or encoder.weights=null."
    )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read is a bad file for the user to fix
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if pickled:
            what = (
                f"it holds a pickled Python object ({pickled.group(1)}), not only tensors, and"
                " pickles are not loaded"
            )
        elif refused_pickle(err):  # torch's own words would advise weights_only=False: never
            what = "it holds pickled Python objects, not only tensors, and pickles are not loaded"
        else:
            what = _first_line(err)
        raise EncoderWeightsError(
            f"Cannot read encoder weights {path} (encoder.weights): {what}. {how}"
        ) from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, Mapping):
        raise EncoderWeightsError(
            f"Encoder weights {path} (encoder.weights) hold a {type(state).__name__}, not a state"
            f" dict (parameter names to tensors). {how}"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise EncoderWeightsError(
                f"Encoder weights {path} (encoder.weights) are not a state dict: {key!r} holds a"
                f" {type(value).__name__}, not a tensor. {how}"
            )
    return dict(state)


def _strip_prefix(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A whole model's state dict -> its encoder's: strip the ``...encoder.`` prefix that fits."""
    if any(key in expected for key in state):
        return state
    prefixes = {k[: k.index("encoder.") + len("encoder.")] for k in state if "encoder." in k}

    def fits(prefix: str) -> int:
        return sum(k[len(prefix) :] in expected for k in state if k.startswith(prefix))

    best = max(sorted(prefixes), key=fits, default=None)
    if best is None or not fits(best):
        return state
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


def _timm_model_state(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A timm model's own state dict -> its ``tu-`` encoder's (smp's ``TimmUniversalEncoder``).

    The encoder holds the timm model as ``model.`` and, built ``features_only``, without the
    classifier head (for EfficientNet ``conv_head``, ``bn2``, ``classifier``). So
    ``timm.create_model(NAME).state_dict()`` (a timm checkpoint file), or the deprecated smp
    ``timm-efficientnet-b4`` encoder's (``encoder=effnet_b4`` before it became
    ``tu-efficientnet_b4``), fits once ``model.`` is added and the head left out. smp renames
    keys this way only for its own deprecated names (regnet, res2net, ...), hence this. Only
    when every tensor of the encoder is in the file with its shape; otherwise ``state`` is
    returned as it is, for :func:`_misfit` to explain.
    """
    if not expected or not all(k.startswith("model.") for k in expected):
        return state
    if any(k.startswith("model.") for k in state):
        return state
    prefixed = {f"model.{k}": v for k, v in state.items()}
    if any(k not in prefixed or prefixed[k].shape != v.shape for k, v in expected.items()):
        return state
    head = sorted(k for k in prefixed if k not in expected)
    if head:
        log.info("Encoder weights: left out %d head tensor(s) (%s)", len(head), ", ".join(head))
    return {k: prefixed[k] for k in expected}


def _misfit(
    path: Path,
    encoder_name: str,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    err: BaseException,
) -> str:
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the encoder"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = [
        f"{len(keys)} {what} (e.g. {some(keys)})"
        for what, keys in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape mismatch(es)", shapes),
        )
        if keys
    ] or [_first_line(err)]
    name = encoder_name or "this encoder"
    return (
        f"Encoder weights {path} (encoder.weights) do not fit encoder {name!r}:"
        f" {'; '.join(problems)}. Use a state dict saved from the same encoder.name and"
        f" in_channels, e.g. torch.save(smp.Unet({name!r}, encoder_weights=None)"
        ".encoder.state_dict(), PATH)."
    )
