"""One augmentation policy, declared once in backend-neutral terms.

Both backends (:mod:`nailseg.augment.albu` and :mod:`nailseg.augment.kornia_gpu`) build their
pipeline from the same :class:`AugPolicy` (``conf/aug/policy/*.yaml``, chosen with
``aug/policy=NAME`` independently of the backend ``aug=NAME``) and apply it in this order: flips,
affine, Gaussian noise, Gaussian blur, one colour op chosen from ``colour``, normalisation. Each
part is applied to a sample with its own probability ``p``; every random parameter is drawn
uniformly from the stated range, independently per sample, in both backends:

- ``hflip_p`` / ``vflip_p``: probability of a horizontal / vertical flip.
- ``affine``: rotation in ``[-degrees, degrees]``, one isotropic scale in ``scale``, a shift of
  up to ``translate`` times the side, drawn separately for each axis. The image is resampled with
  ``interpolation`` (``bilinear`` or ``nearest``), the mask always with nearest. Areas the
  transform uncovers are 0 (black) in the image and 0 (background) in the mask.
- ``noise``: per-pixel, per-channel Gaussian noise whose std is drawn from ``std`` (image units in
  [0, 1]); the result is clipped to [0, 1].
- ``blur``: Gaussian blur with a fixed odd ``kernel_size`` and sigma drawn from ``sigma``.
- ``colour``: with probability ``p``, one of the ops that are set, chosen uniformly:
  ``hsv`` adds a hue shift in ``[-hue, hue]`` (fraction of the full hue circle), a saturation
  shift in ``[-saturation, saturation]`` and a value shift in ``[-value, value]`` (both in
  [0, 1] units; grey pixels stay grey); ``brightness_contrast`` maps ``x -> x * (1 + c) + b``
  with ``c`` in ``[-contrast, contrast]`` and ``b`` in ``[-brightness, brightness]`` (this is what
  Albumentations' ``RandomBrightnessContrast(brightness_by_max=True)`` computes: its docstring
  mentions a mean, its code does not use one); ``clahe`` equalises the L channel of LAB with a
  clip limit drawn from ``clip_limit`` (OpenCV's units: a multiple of the mean histogram bin).
- ``mean`` / ``std``: normalisation of the [0, 1] image, channel by channel (RGB). ``null`` (the
  default) means the encoder's pretrained normalisation, which the builder reads from smp
  (:func:`nailseg.model.network.encoder_normalization`) and hands to the backend as
  ``normalization=``; without one, ImageNet's (:data:`IMAGENET_NORMALIZATION`, also what smp
  gives ``resnet18``). Set both to override the encoder's values. The values a backend uses are
  its ``normalization`` attribute.

Schema: the dataclasses below are the whole schema and hold every default; a policy file lists
only what differs from them (``conf/aug/policy/tutorial.yaml`` is empty: the defaults are the
seed tutorial's policy). :meth:`AugPolicy.from_config` merges the config into
``OmegaConf.structured(AugPolicy)``, so OmegaConf rejects unknown keys and values of the wrong
type, and then checks every range here; both kinds of error are a
:class:`~nailseg.errors.ConfigError` naming the key (``aug.policy.affine.degres``), the value and
the fix.

Output size: there is no size in the policy. The data layer resizes every sample to
``data.image_size`` before augmentation (both backends need equal sizes to batch, Kornia before
it can augment), and every op here keeps the size, so the output size is ``data.image_size``.
A second size here would be a second source of truth for the same number.

Remaining differences between the backends, none of them in a parameter's distribution:

- Albumentations works on 8-bit values until normalisation: after each op values are rounded or
  truncated to 1/255 (brightness/contrast truncates: -0.5/255 on average), hue shifts are
  truncated to OpenCV's 2-degree steps and saturation/value shifts to whole
  8-bit steps. Kornia works in float32 throughout.
- Bilinear resampling: OpenCV interpolates with 1/32-pixel fixed-point weights, Kornia
  (``grid_sample``) in float, so edge pixels of a rotated image differ by a grey level or two.
- Albumentations' ``Affine`` truncates shifts to whole pixels;
  :class:`nailseg.augment.albu.SubpixelAffine`
  (a one-method adapter) keeps them continuous, as the policy and Kornia define them.
- Randomness: both backends draw every parameter of a sample from that sample's seed alone
  (Albumentations with NumPy's and Python's generators, the device engine with a counter-based
  hash, :mod:`nailseg.augment.counter_rng`), so each is reproducible per sample from the run's
  seed; the same seed does not give the same draw in the two backends.
- CLAHE: OpenCV's and Kornia's implementations differ (tile phase, 8-bit rounding), not only in
  how the clip limit is drawn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, get_args, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from nailseg.errors import ConfigError, did_you_mean

INTERPOLATIONS = ("bilinear", "nearest")
# ImageNet's mean and std: the normalisation when neither the policy nor the encoder gives one.
IMAGENET_NORMALIZATION: Mapping[str, tuple[float, float, float]] = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


@dataclass(frozen=True)
class Affine:
    """Rotation, isotropic scale and shift, applied together with probability ``p``."""

    p: float = 0.5
    degrees: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.0625
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class Noise:
    """Additive Gaussian noise; ``std`` in [0, 1] image units."""

    p: float = 0.2
    std: tuple[float, float] = (0.02, 0.06)


@dataclass(frozen=True)
class Blur:
    """Gaussian blur with a fixed odd kernel and a random sigma."""

    p: float = 0.2
    sigma: tuple[float, float] = (0.3, 1.2)
    kernel_size: int = 5


@dataclass(frozen=True)
class HSV:
    """Shift limits: hue as a fraction of the circle, saturation and value in [0, 1] units."""

    hue: float = 0.05
    saturation: float = 0.15
    value: float = 0.1


@dataclass(frozen=True)
class BrightnessContrast:
    """``x -> x * (1 + c) + b`` with ``|c| <= contrast`` and ``|b| <= brightness``."""

    brightness: float = 0.2
    contrast: float = 0.2


@dataclass(frozen=True)
class Clahe:
    """CLAHE on the L channel; ``clip_limit`` in OpenCV's units, ``grid_size`` tiles a side."""

    clip_limit: tuple[float, float] = (1.0, 4.0)
    grid_size: int = 8


@dataclass(frozen=True)
class Colour:
    """Apply, with probability ``p``, one of the ops that are set (``null`` leaves one out)."""

    p: float = 0.5
    hsv: HSV | None = field(default_factory=HSV)
    clahe: Clahe | None = field(default_factory=Clahe)
    brightness_contrast: BrightnessContrast | None = field(default_factory=BrightnessContrast)

    def ops(self) -> list[str]:
        """Names of the ops that are set, in the order both backends list them."""
        return [f.name for f in fields(self) if f.name != "p" and getattr(self, f.name) is not None]


@dataclass(frozen=True)
class AugPolicy:
    """The whole policy. ``None`` (``null`` in YAML) for a part switches that part off.

    The defaults are the seed tutorial's policy (``aug/policy=tutorial``).

    Examples:
        >>> policy = AugPolicy.from_config({"hflip_p": 0.5, "noise": None, "colour": None})
        >>> policy.affine.degrees, policy.affine.scale, policy.noise, policy.mean
        (15.0, (0.9, 1.1), None, None)
        >>> AugPolicy.from_config({"affine": {"degres": 30}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        nailseg.errors.ConfigError: Unknown key aug.policy.affine.degres=30. ...affine.degrees? ...
    """

    hflip_p: float = 0.5
    vflip_p: float = 0.0
    affine: Affine | None = field(default_factory=Affine)
    noise: Noise | None = field(default_factory=Noise)
    blur: Blur | None = field(default_factory=Blur)
    colour: Colour | None = field(default_factory=Colour)
    # None: the encoder's normalisation (the backend's ``normalization=``), else ImageNet's.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | AugPolicy | None) -> AugPolicy:
        """Build from a config mapping: the dataclass defaults, overridden by ``config``.

        Raises:
            ConfigError: for an unknown key (with the closest valid ones), a value of the wrong
                type, or a value out of its range; the message names the key and the value.
        """
        if isinstance(config, AugPolicy):
            return config
        try:
            values = _plain(config or {})
        except OmegaConfBaseException as err:
            raise ConfigError(
                f"aug.policy cannot be resolved ({_first_line(err)}). Fix it in conf/aug/policy/."
            ) from err
        try:
            merged = OmegaConf.merge(_schema(cls), values)
            policy = _tuples(OmegaConf.to_object(merged))
        except OmegaConfBaseException as err:
            raise _schema_error(err, values, cls) from err
        policy.validate()
        return policy

    def validate(self) -> None:
        """Check every value; raise :class:`~nailseg.errors.ConfigError` naming the bad one."""
        _probability("hflip_p", self.hflip_p)
        _probability("vflip_p", self.vflip_p)
        if self.affine is not None:
            a = self.affine
            _probability("affine.p", a.p)
            _check(
                0 <= a.degrees <= 180, "affine.degrees", a.degrees, "a rotation limit in [0, 180]"
            )
            _range("affine.scale", a.scale, 1e-3, 10.0, "e.g. [0.9, 1.1]")
            _check(
                0 <= a.translate < 1,
                "affine.translate",
                a.translate,
                "a fraction of the side in [0, 1), e.g. 0.0625",
            )
            _check(
                a.interpolation in INTERPOLATIONS,
                "affine.interpolation",
                a.interpolation,
                f"one of {list(INTERPOLATIONS)}",
            )
        if self.noise is not None:
            _probability("noise.p", self.noise.p)
            _range("noise.std", self.noise.std, 0.0, 1.0, "[0, 1] image units, e.g. [0.02, 0.06]")
        if self.blur is not None:
            b = self.blur
            _probability("blur.p", b.p)
            _range("blur.sigma", b.sigma, 1e-3, 100.0, "a positive sigma range, e.g. [0.3, 1.2]")
            _check(
                isinstance(b.kernel_size, int) and b.kernel_size >= 3 and b.kernel_size % 2 == 1,
                "blur.kernel_size",
                b.kernel_size,
                "an odd integer of at least 3",
            )
        if self.colour is not None:
            self._validate_colour(self.colour)
        _check_normalization(self.mean, self.std, "aug.policy.")

    @staticmethod
    def _validate_colour(colour: Colour) -> None:
        _probability("colour.p", colour.p)
        if colour.hsv is not None:
            _check(
                0 <= colour.hsv.hue <= 0.5,
                "colour.hsv.hue",
                colour.hsv.hue,
                "a fraction of the hue circle in [0, 0.5]",
            )
            for name in ("saturation", "value"):
                value = getattr(colour.hsv, name)
                _check(0 <= value <= 1, f"colour.hsv.{name}", value, "a shift limit in [0, 1]")
        if colour.brightness_contrast is not None:
            for name in ("brightness", "contrast"):
                value = getattr(colour.brightness_contrast, name)
                _check(
                    0 <= value <= 1,
                    f"colour.brightness_contrast.{name}",
                    value,
                    "a limit in [0, 1]",
                )
        if colour.clahe is not None:
            _range(
                "colour.clahe.clip_limit", colour.clahe.clip_limit, 0.0, 1000.0, "e.g. [1.0, 4.0]"
            )
            _check(
                isinstance(colour.clahe.grid_size, int) and colour.clahe.grid_size >= 1,
                "colour.clahe.grid_size",
                colour.clahe.grid_size,
                "a positive integer, e.g. 8",
            )


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(
            f"aug.policy.{name}={value} is invalid: expected {expected}."
            f" Fix it in conf/aug/policy/ or override ++aug.policy.{name}=..."
        )


def _probability(name: str, value: Any) -> None:
    _check(
        isinstance(value, (int, float)) and 0 <= value <= 1, name, value, "a probability in [0, 1]"
    )


def _range(name: str, value: Any, low: float, high: float, example: str) -> None:
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int | float) for v in value)
        and low <= value[0] <= value[1] <= high
    )
    _check(
        ok,
        name,
        list(value) if isinstance(value, tuple | list) else value,
        f"[low, high] with {low} <= low <= high <= {high}, {example}",
    )


def _check_normalization(mean: Any, std: Any, prefix: str) -> None:
    """Three numbers for ``mean`` and three positive ones for ``std`` (either may be ``None``)."""

    def numbers(value: Any) -> bool:
        return (
            isinstance(value, tuple | list)
            and len(value) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        )

    for name, value, ok, expected in (
        ("mean", mean, numbers(mean), "three numbers (RGB)"),
        ("std", std, numbers(std) and min(std) > 0, "three positive numbers (RGB)"),
    ):
        if value is not None and not ok:
            shown = list(value) if isinstance(value, tuple | list) else value
            fix = (
                f", or null for the encoder's normalisation. Fix it in conf/aug/policy/ or"
                f" override ++aug.policy.{name}=..."
                if prefix == "aug.policy."
                else "."
            )
            raise ConfigError(f"{prefix}{name}={shown} is invalid: expected {expected}{fix}")


def resolve_normalization(
    policy: AugPolicy, normalization: Mapping[str, Any] | None = None
) -> dict[str, list[float]]:
    """The ``mean`` and ``std`` a backend normalises with, as plain lists of floats.

    Each is the policy's where it sets one, else ``normalization``'s (the encoder's, from
    :func:`nailseg.model.network.encoder_normalization`; other keys such as ``source`` are
    ignored), else ImageNet's (:data:`IMAGENET_NORMALIZATION`).

    Examples:
        >>> resolve_normalization(AugPolicy(), {"mean": [0.5] * 3, "std": [0.5] * 3})
        {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]}
        >>> resolve_normalization(AugPolicy(mean=(0.4, 0.4, 0.4)))["mean"]
        [0.4, 0.4, 0.4]
    """
    given = _plain(normalization) if normalization is not None else {}
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"normalization={given!r} is invalid: expected a mapping with mean and std, or null."
        )
    _check_normalization(given.get("mean"), given.get("std"), "normalization ")  # the encoder's
    out = {}
    for name in ("mean", "std"):
        value = getattr(policy, name)
        if value is None:
            value = given.get(name)
        if value is None:
            value = IMAGENET_NORMALIZATION[name]
        out[name] = [float(v) for v in value]
    return out


# --- the OmegaConf schema -------------------------------------------------------------------


def policy_defaults() -> dict[str, Any]:
    """The default policy (the seed tutorial's) as plain values, for Hydra's ConfigStore
    (:func:`nailseg.config.register_schemas`).

    Examples:
        >>> policy_defaults()["affine"]["degrees"], policy_defaults()["mean"]
        (15.0, None)
    """
    return OmegaConf.to_container(OmegaConf.structured(AugPolicy))


def _schema(cls: type) -> DictConfig:
    """``OmegaConf.structured(cls)``, writable.

    OmegaConf makes the node of a frozen dataclass read-only, so nothing could be merged into it;
    the dataclasses stay frozen for the backends, and only this copy of the schema is unlocked.
    """
    schema = OmegaConf.structured(cls)
    _unlock(schema)
    return schema


def _unlock(node: DictConfig | ListConfig) -> None:
    OmegaConf.set_readonly(node, False)
    children = node.values() if isinstance(node, DictConfig) else node
    for child in children:
        if isinstance(child, DictConfig | ListConfig):
            _unlock(child)


def _plain(value: Any) -> Any:
    """Plain dicts and lists, interpolations resolved (Hydra hands over ``DictConfig`` nodes)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: _plain(child) for key, child in value.items()}
    return value


def _tuples(obj: Any) -> Any:
    """``OmegaConf.to_object``'s lists as tuples, as the frozen dataclasses declare them."""
    if is_dataclass(obj):
        return replace(obj, **{f.name: _tuples(getattr(obj, f.name)) for f in fields(obj)})
    return tuple(obj) if isinstance(obj, list) else obj


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


_MISSING = object()


def _lookup(values: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(values, Mapping) or key not in values:
            return _MISSING
        values = values[key]
    return values


def _part_type(cls: type, name: str) -> type | None:
    """The dataclass of field ``name`` of ``cls`` (``Affine`` for ``affine: Affine | None``)."""
    hint = get_type_hints(cls).get(name)
    return next(
        (a for a in (*get_args(hint), hint) if isinstance(a, type) and is_dataclass(a)), None
    )


def _part(cls: type, path: list[str]) -> type | None:
    """The dataclass at ``path`` below ``cls`` (``["colour", "hsv"]`` -> :class:`HSV`)."""
    for key in path:
        cls = _part_type(cls, key)
        if cls is None:
            return None
    return cls


def _misplaced(values: Any, cls: type, path: list[str]) -> list[str] | None:
    """The path of the first part (``affine``, ``colour.hsv``...) given as neither a mapping nor
    null, which OmegaConf's merge reports without a key."""
    if not isinstance(values, Mapping):
        return None
    for f in fields(cls):
        part = _part_type(cls, f.name)
        if part is None or f.name not in values:
            continue
        value = values[f.name]
        if value is not None and not isinstance(value, Mapping):
            return [*path, f.name]
        found = _misplaced(value, part, [*path, f.name])
        if found:
            return found
    return None


def _schema_error(err: OmegaConfBaseException, values: Any, cls: type) -> ConfigError:
    """OmegaConf's error as ours: the key path under ``aug.policy``, the value and the fix."""
    # full_key is "affine.degres", "affine.scale[0]", or "" for a merge error with no key.
    path = [k for k in re.sub(r"\[\d+\]", "", err.full_key or "").split(".") if k]
    if isinstance(err, ConfigKeyError) and path:
        *parent, key = path
        where = ".".join(["aug.policy", *parent])
        part = _part(cls, parent)
        valid = sorted(f.name for f in fields(part)) if part else []
        return ConfigError(
            f"Unknown key {where}.{key}={_show(_lookup(values, path))}."
            f"{did_you_mean(key, valid, f'{where}.')} Valid keys of {where}:"
            f" {', '.join(valid)}. Fix the name in conf/aug/policy/ or remove it."
        )
    if not path:
        path = _misplaced(values, cls, []) or []
    part = _part(cls, path) if path else None
    name = ".".join(["aug.policy", *path])
    shown = _show(_lookup(values, path)) if path else ""
    if part is not None:
        return ConfigError(
            f"{name}={shown} is invalid: expected a mapping of"
            f" {sorted(f.name for f in fields(part))}, or null to switch it off."
            f" Fix it in conf/aug/policy/ or override ++{name}=..."
        )
    if path and _lookup(values, path) is None:
        reason = "only a whole part (affine, noise, blur, colour or a colour op) can be null"
    else:
        reason = _first_line(err).rstrip(".")
    return ConfigError(
        f"{name}{'=' + shown if path else ''} is invalid: {reason}."
        f" Fix it in conf/aug/policy/ or override ++{name}=..."
    )


def _show(value: Any) -> str:
    return (
        "<missing>" if value is _MISSING else repr(value) if isinstance(value, str) else str(value)
    )
