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
- ``mean`` / ``std``: normalisation of the [0, 1] image, channel by channel (RGB).

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from nailseg.errors import ConfigError

INTERPOLATIONS = ("bilinear", "nearest")


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

    Examples:
        >>> policy = AugPolicy.from_config({"hflip_p": 0.5, "noise": None, "colour": None})
        >>> policy.affine.degrees, policy.noise
        (15.0, None)
    """

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
        """Build from a config mapping, rejecting unknown keys with the list of valid ones.

        Raises:
            ConfigError: for an unknown key or a value out of its range (the message names both).
        """
        if isinstance(config, AugPolicy):
            return config
        policy = _build(cls, dict(config or {}), "aug.policy")
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
        _check(len(self.mean) == 3, "mean", list(self.mean), "three values (RGB)")
        _check(
            len(self.std) == 3 and min(self.std) > 0,
            "std",
            list(self.std),
            "three positive values (RGB)",
        )

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
            f" Fix it in conf/aug/policy/ or override aug.policy.{name}=..."
        )


def _probability(name: str, value: Any) -> None:
    _check(
        isinstance(value, (int, float)) and 0 <= value <= 1, name, value, "a probability in [0, 1]"
    )


def _range(name: str, value: Any, low: float, high: float, example: str) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, (int, float)) for v in value)
        and low <= value[0] <= value[1] <= high
    )
    _check(
        ok,
        name,
        list(value) if isinstance(value, tuple) else value,
        f"[low, high] with {low} <= low <= high <= {high}, {example}",
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
        elif nested is not None and value is not None:
            raise ConfigError(
                f"{where}.{name}={value!r} must be a mapping of"
                f" {sorted(f.name for f in fields(nested))}, or null to switch it off."
            )
        elif isinstance(value, Sequence) and not isinstance(value, str):
            # Hydra hands over ListConfig: make ranges plain, hashable tuples.
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# The class of each nested part of the policy.
_NESTED = {
    "affine": Affine,
    "noise": Noise,
    "blur": Blur,
    "colour": Colour,
    "hsv": HSV,
    "clahe": Clahe,
    "brightness_contrast": BrightnessContrast,
}
