"""One augmentation policy, declared once in backend-neutral terms.

Both backends (:mod:`nailseg.augment.albu` and :mod:`nailseg.augment.kornia_gpu`) build their
pipeline from the same :class:`AugPolicy`, applied in this order: flips, affine, Gaussian noise,
Gaussian blur, one colour op chosen from ``colour``, normalisation. Every random parameter is
sampled uniformly from the stated range in both backends:

- ``affine``: rotation in ``[-degrees, degrees]``, one isotropic scale in ``scale``, a shift of up
  to ``translate`` times the side on each axis; padding is 0 in the image and background in the mask.
- ``noise``: per-pixel, per-channel Gaussian noise whose std is drawn from ``std`` (image in [0, 1]).
- ``blur``: Gaussian blur with a fixed odd ``kernel_size`` and sigma drawn from ``sigma``.
- ``colour`` (one of, with probability ``p``):
  ``hsv`` adds a hue shift (fraction of the full hue circle), a saturation shift and a value
  shift (both in [0, 1] units); ``brightness_contrast`` maps ``x -> x * (1 + c) + b``;
  ``clahe`` equalises with a clip limit drawn from ``clip_limit``.

Remaining differences between backends: Albumentations computes HSV and CLAHE on 8-bit values
(CLAHE on the L channel of LAB), Kornia in float (CLAHE on each RGB channel), so pixel values
differ slightly for the same parameters; the parameter distributions are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from nailseg.errors import ConfigError


@dataclass(frozen=True)
class Affine:
    p: float = 0.5
    degrees: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.0625


@dataclass(frozen=True)
class Noise:
    p: float = 0.2
    std: tuple[float, float] = (0.02, 0.06)


@dataclass(frozen=True)
class Blur:
    p: float = 0.2
    sigma: tuple[float, float] = (0.3, 1.2)
    kernel_size: int = 5


@dataclass(frozen=True)
class HSV:
    hue: float = 0.05
    saturation: float = 0.15
    value: float = 0.1


@dataclass(frozen=True)
class BrightnessContrast:
    brightness: float = 0.2
    contrast: float = 0.2


@dataclass(frozen=True)
class Clahe:
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
        return [f.name for f in fields(self) if f.name != "p" and getattr(self, f.name) is not None]


@dataclass(frozen=True)
class AugPolicy:
    """The whole policy. ``None`` for a part switches that part off."""

    hflip_p: float = 0.5
    vflip_p: float = 0.0
    affine: Affine | None = field(default_factory=Affine)
    noise: Noise | None = field(default_factory=Noise)
    blur: Blur | None = field(default_factory=Blur)
    colour: Colour | None = field(default_factory=Colour)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | AugPolicy | None) -> AugPolicy:
        """Build from a config mapping, rejecting unknown keys with the list of valid ones."""
        if isinstance(config, AugPolicy):
            return config
        policy = _build(cls, dict(config or {}), "aug.policy")
        policy.validate()
        return policy

    def validate(self) -> None:
        probabilities = {"hflip_p": self.hflip_p, "vflip_p": self.vflip_p}
        for part in ("affine", "noise", "blur", "colour"):
            if getattr(self, part) is not None:
                probabilities[f"{part}.p"] = getattr(self, part).p
        for name, value in probabilities.items():
            if not 0 <= value <= 1:
                raise ConfigError(f"aug.policy.{name}={value} is not a probability; use a value in [0, 1].")
        if self.blur is not None and (self.blur.kernel_size < 3 or self.blur.kernel_size % 2 == 0):
            raise ConfigError(
                f"aug.policy.blur.kernel_size={self.blur.kernel_size} must be odd and at least 3."
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(
                f"aug.policy.mean={list(self.mean)} / std={list(self.std)} need three values each"
                " and a positive std."
            )


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {where}. Valid keys: {sorted(known)}.")
    kwargs = {}
    for name, value in values.items():
        nested = _NESTED.get(name)
        if nested is not None and isinstance(value, Mapping):
            kwargs[name] = _build(nested, dict(value), f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# The class of each nested part of the policy.
_NESTED = {
    "affine": Affine, "noise": Noise, "blur": Blur, "colour": Colour,
    "hsv": HSV, "clahe": Clahe, "brightness_contrast": BrightnessContrast,
}
