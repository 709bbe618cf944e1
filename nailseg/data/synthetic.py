"""The embedded default data set: procedurally drawn fingers and nails.

There is no network at run time, so the default data set is generated. It is written in the seed
tutorial's layout, ``Images/<group>/<name>.png`` and ``Masks/<group>/<name>.png``, with four groups:

1. one close-up finger with a large nail
2. two or three fingers side by side
3. a whole hand (palm, four fingers and a thumb)
4. small or far nails (a small hand, or scattered small fingers)

Each sample varies skin tone, background, finger pose, nail shape and size, polish, lighting, blur
and noise. Sample ``i`` is drawn from its own generator seeded by ``(seed, i)``, so the set is
deterministic and any sample can be redrawn alone. The set is cached under a folder named after
its parameters and regenerated only when those change.

Masks come in one of two schemes, chosen by ``classes`` (:data:`CLASS_NAMES`):

- ``classes=2`` (the default): binary masks, 0 = background and 255 = nail.
- ``classes=3``: class-index masks, 0 = background, 1 = skin (finger, palm and wrist wherever
  visible, the nail fold included) and 2 = nail. Nail wins over skin where they overlap, and a
  finger drawn over a nail hides it (its skin shows there), exactly as in the binary masks: the
  nail pixels (2) are the binary set's foreground, and the images are the same for the same seed.

This module draws the set; :class:`~nailseg.data.sources.synthetic.SyntheticSource`
(``data=synthetic``) reads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from numbers import Integral
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from nailseg.classes import SYNTHETIC_CLASSES
from nailseg.errors import ConfigError

log = logging.getLogger(__name__)

# Bump when the drawing code changes, so cached sets made by older code are not reused.
GENERATOR_VERSION = 2
GROUPS = ("1", "2", "3", "4")

# The mask schemes the set can be drawn in: number of classes -> class names (index = mask value).
# ``None`` for 2: binary masks (0 = background, 255 = nail), read as the usual background/nail.
CLASS_NAMES = SYNTHETIC_CLASSES  # the one list, in the base layer (config resolvers read it)

# Base skin tones (RGB), from light to dark; each sample jitters one of them.
SKIN_TONES = np.array(
    [
        [255, 224, 196],
        [241, 194, 160],
        [224, 172, 135],
        [198, 134, 96],
        [161, 102, 70],
        [120, 75, 50],
        [87, 55, 38],
    ],
    dtype=np.float32,
)
POLISH_COLOURS = np.array(
    [
        [200, 20, 40],
        [230, 60, 120],
        [120, 20, 90],
        [30, 20, 30],
        [240, 150, 170],
        [40, 70, 170],
        [230, 200, 60],
        [250, 250, 245],
        [150, 40, 20],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SyntheticParams:
    """Everything the generated set depends on; the cache folder is named after it."""

    count: int
    image_size: int
    seed: int
    version: int = GENERATOR_VERSION
    classes: int = 2

    def folder_name(self) -> str:
        # Binary sets keep the name (and stamp) they had before ``classes`` existed, so sets
        # already cached are reused.
        name = f"v{self.version}-n{self.count}-s{self.image_size}-seed{self.seed}"
        return name if self.classes == 2 else f"{name}-c{self.classes}"

    def stamp(self) -> dict[str, int]:
        """What ``params.json`` holds: the fields, less ``classes`` when it is 2."""
        fields = asdict(self)
        if self.classes == 2:
            del fields["classes"]
        return fields


def check_classes(classes: object) -> int:
    """Return ``classes`` if the set can be drawn with that many classes, else raise
    :class:`~nailseg.errors.ConfigError`."""
    if not isinstance(classes, Integral) or isinstance(classes, bool) or classes not in CLASS_NAMES:
        choices = " or ".join(
            f"{n} ({', '.join(names or ('background', 'nail'))})"
            for n, names in CLASS_NAMES.items()
        )
        raise ConfigError(
            f"data.source.classes={classes!r} is invalid: the synthetic set draws {choices}"
            " classes."
        )
    return int(classes)


def generate_dataset(
    root: Path | str, count: int, image_size: int, seed: int, classes: int = 2
) -> Path:
    """Generate (or reuse) the synthetic set and return its folder.

    Safe for concurrent runs: one process draws the set into a temporary sibling and renames it
    into place while holding a lock next to it; the others wait for the lock and then reuse the
    finished set. A complete set is never deleted or replaced, so a run that is already reading
    it keeps every file.

    Args:
        root: parent folder; the set goes into ``root/<folder named after the parameters>``.
        count: number of image/mask pairs, spread evenly over the four groups.
        image_size: side of the square images in pixels.
        seed: base seed; the same seed always gives the same pixels.
        classes: 2 for binary masks (0/255), 3 for class-index masks (0 background, 1 skin,
            2 nail); the images are the same either way. Anything else raises
            :class:`~nailseg.errors.ConfigError`.
    """
    params = SyntheticParams(
        count=int(count),
        image_size=int(image_size),
        seed=int(seed),
        classes=check_classes(classes),
    )
    target = Path(root) / params.folder_name()
    if _is_complete(target, params):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{target.name}.lock", target):
        # Another run may have finished the set while this one waited for the lock.
        if _is_complete(target, params):
            return target
        # Whoever holds the lock is the only writer: any staging folder of this set is left
        # over from a run that was killed while drawing it.
        for stale in target.parent.glob(f".{target.name}.staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
        try:
            _draw_into(staging, params, target.name)
            if target.exists():  # incomplete (no or other params.json): never returned, unread
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("Synthetic data set ready: %s", target)
    return target


def _is_complete(target: Path, params: SyntheticParams) -> bool:
    """Whether ``target`` holds a finished set of ``params`` (its stamp is written last)."""
    try:
        return json.loads((target / "params.json").read_text()) == params.stamp()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _exclusive_lock(path: Path, target: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed; never deleted, so two runs
    can never lock two different files of the same name)."""
    with open(path, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another run that is generating %s", target)
            fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _draw_into(folder: Path, params: SyntheticParams, name: str) -> None:
    """Draw every sample into ``folder``; its ``params.json`` stamp last."""
    # Closed on a stop too, so the bar ends its line before the "interrupted:" message.
    with tqdm(range(params.count), desc=f"generating synthetic nails ({name})") as indices:
        for index in indices:
            _draw_one(folder, params, index)
    (folder / "params.json").write_text(json.dumps(params.stamp(), indent=2))


def _draw_one(folder: Path, params: SyntheticParams, index: int) -> None:
    """Draw sample ``index`` and write its image and mask into ``folder``."""
    group = GROUPS[index % len(GROUPS)]
    image, mask = draw_sample(params.seed, index, params.image_size, group, params.classes)
    file_name = f"{index:05d}.png"
    for sub, array in (
        ("Images", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)),
        # Binary masks are written 0/255; class-index masks hold the class values themselves.
        ("Masks", mask * 255 if params.classes == 2 else mask),
    ):
        sub_folder = folder / sub / group
        sub_folder.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(sub_folder / file_name), array):
            raise OSError(f"Cannot write {sub_folder / file_name}.")


def draw_sample(
    seed: int, index: int, size: int, group: str, classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one RGB ``uint8`` image and its ``uint8`` mask for ``group``.

    The mask is ``{0, 1}`` (background, nail) for ``classes=2`` and ``{0, 1, 2}`` (background,
    skin, nail) for ``classes=3``; the image does not depend on ``classes``.
    """
    classes = check_classes(classes)
    rng = np.random.default_rng([seed, index])
    canvas = _Canvas(size, rng)
    skin = _jitter(SKIN_TONES[rng.integers(len(SKIN_TONES))], rng, 12)
    if group == "1":
        width = size * rng.uniform(0.28, 0.45)
        canvas.finger(
            _random_point(rng, size, 0.35, 0.65),
            rng.uniform(0, 2 * np.pi),
            width * rng.uniform(2.2, 3.5),
            width,
            skin,
        )
    elif group == "2":
        angle = rng.uniform(0, 2 * np.pi)
        width = size * rng.uniform(0.12, 0.2)
        count = int(rng.integers(2, 4))
        normal = np.array([-np.sin(angle), np.cos(angle)])
        centre = _random_point(rng, size, 0.4, 0.6)
        for k in range(count):
            offset = (k - (count - 1) / 2) * width * rng.uniform(1.05, 1.3)
            tip = centre + normal * offset + _direction(angle) * size * rng.uniform(-0.08, 0.08)
            canvas.finger(
                tip, angle + rng.normal(0, 0.12), size * rng.uniform(0.5, 0.8), width, skin
            )
    elif group == "3":
        canvas.hand(
            _random_point(rng, size, 0.45, 0.55),
            rng.uniform(0, 2 * np.pi),
            size * rng.uniform(0.28, 0.4),
            skin,
        )
    else:
        if rng.random() < 0.5:
            canvas.hand(
                _random_point(rng, size, 0.3, 0.7),
                rng.uniform(0, 2 * np.pi),
                size * rng.uniform(0.12, 0.18),
                skin,
            )
        else:
            for _ in range(int(rng.integers(3, 7))):
                width = size * rng.uniform(0.04, 0.07)
                canvas.finger(
                    _random_point(rng, size, 0.1, 0.9),
                    rng.uniform(0, 2 * np.pi),
                    width * rng.uniform(3, 6),
                    width,
                    skin,
                )
    return canvas.finish(classes)


def _direction(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _random_point(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    return rng.uniform(low * size, high * size, 2)


def _jitter(colour: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(colour + rng.normal(0, amount, 3), 0, 255)


def _pt(point: np.ndarray) -> tuple[int, int]:
    # cv2 drawing with shift=4 takes fixed-point coordinates: sub-pixel placement, smoother shapes.
    return int(round(point[0] * 16)), int(round(point[1] * 16))


class _Canvas:
    """An RGB float image, its nail mask and its skin mask; later strokes occlude earlier nails
    in all three. The skin mask never draws from ``rng``, so the image does not depend on it."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.image = self._background()
        self.mask = np.zeros((size, size), np.uint8)
        self.skin = np.zeros((size, size), np.uint8)

    def _background(self) -> np.ndarray:
        rng, size = self.rng, self.size
        base = rng.uniform(20, 235, 3)
        other = np.clip(base + rng.normal(0, 45, 3), 0, 255)
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        mix = np.clip(
            0.5 + (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]) / 2, 0, 1
        )
        image = base * (1 - mix[..., None]) + other * mix[..., None]
        # Low-frequency texture: cloth, wood, a table top.
        cells = int(rng.integers(3, 12))
        texture = cv2.resize(
            rng.normal(0, rng.uniform(4, 22), (cells, cells, 3)).astype(np.float32),
            (size, size),
            interpolation=cv2.INTER_CUBIC,
        )
        image = image + texture
        for _ in range(int(rng.integers(0, 3))):  # objects in the scene
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            p0, p1 = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
            cv2.rectangle(image, _pt(p0), _pt(p1), colour, -1, cv2.LINE_AA, shift=4)
        return np.clip(image, 0, 255).astype(np.float32)

    def finger(
        self, tip: np.ndarray, angle: float, length: float, width: float, skin: np.ndarray
    ) -> None:
        """A finger whose tip is at ``tip``, pointing along ``angle``, with its nail."""
        rng = self.rng
        direction, normal = _direction(angle), _direction(angle + np.pi / 2)
        base = tip - direction * length
        skin = _jitter(skin, rng, 6)
        # Occlude whatever lies under the finger, nails included.
        body = np.zeros_like(self.mask)
        cv2.line(body, _pt(base), _pt(tip - direction * width / 2), 1, max(1, int(width)), shift=4)
        cv2.circle(body, _pt(tip - direction * width / 2), int(width / 2 * 16), 1, -1, shift=4)
        self.mask[body > 0] = 0
        self.skin[body > 0] = 1
        shade = (skin * rng.uniform(0.75, 0.9)).tolist()
        cv2.line(
            self.image,
            _pt(base),
            _pt(tip - direction * width / 2),
            shade,
            max(1, int(width)),
            cv2.LINE_AA,
            shift=4,
        )
        cv2.circle(
            self.image,
            _pt(tip - direction * width / 2),
            int(width / 2 * 16),
            shade,
            -1,
            cv2.LINE_AA,
            shift=4,
        )
        # A lighter core gives the finger some volume.
        cv2.line(
            self.image,
            _pt(base),
            _pt(tip - direction * width * 0.55),
            skin.tolist(),
            max(1, int(width * 0.6)),
            cv2.LINE_AA,
            shift=4,
        )
        knuckle = (skin * 0.7).tolist()
        for fraction in (0.45, 0.75):
            centre = tip - direction * length * fraction
            half = normal * width * 0.3
            cv2.line(
                self.image,
                _pt(centre - half),
                _pt(centre + half),
                knuckle,
                max(1, int(width * 0.04)),
                cv2.LINE_AA,
                shift=4,
            )
        self._nail(tip, direction, width, skin)

    def _nail(
        self, tip: np.ndarray, direction: np.ndarray, finger_width: float, skin: np.ndarray
    ) -> None:
        rng = self.rng
        nail_width = finger_width * rng.uniform(0.55, 0.8)
        nail_length = finger_width * rng.uniform(0.7, 1.25)
        centre = tip - direction * (nail_length / 2 + finger_width * rng.uniform(0.05, 0.15))
        axes = (int(nail_length / 2 * 16), int(nail_width / 2 * 16))
        angle_deg = float(np.degrees(np.arctan2(direction[1], direction[0])))
        if rng.random() < 0.5:
            colour = _jitter(POLISH_COLOURS[rng.integers(len(POLISH_COLOURS))], rng, 15)
        else:  # natural nail: the skin tone blended towards a pale pink
            blend = rng.uniform(0.35, 0.6)
            colour = np.clip(skin * (1 - blend) + np.array([250, 195, 200]) * blend, 0, 255)
        nail_mask = np.zeros_like(self.mask)
        # The nail fold: a thin shadow around the plate.
        fold = (
            axes[0] + 16 * max(1, int(finger_width * 0.05)),
            axes[1] + 16 * max(1, int(finger_width * 0.05)),
        )
        cv2.ellipse(
            self.image,
            _pt(centre),
            fold,
            angle_deg,
            0,
            360,
            (skin * 0.6).tolist(),
            -1,
            cv2.LINE_AA,
            shift=4,
        )
        cv2.ellipse(self.skin, _pt(centre), fold, angle_deg, 0, 360, 1, -1, shift=4)
        # Squarer or more oval nails: an ellipse, optionally cut flat at the cuticle.
        cv2.ellipse(nail_mask, (_pt(centre)), axes, angle_deg, 0, 360, 1, -1, shift=4)
        cv2.ellipse(
            self.image,
            (_pt(centre)),
            axes,
            angle_deg,
            0,
            360,
            colour.tolist(),
            -1,
            cv2.LINE_AA,
            shift=4,
        )
        if colour.mean() < 200 and rng.random() < 0.6:  # free edge or French tip, part of the nail
            edge = centre + direction * nail_length * 0.38
            edge_axes = (int(nail_length * 0.14 * 16), int(nail_width * 0.42 * 16))
            cv2.ellipse(
                self.image,
                _pt(edge),
                edge_axes,
                angle_deg,
                -90,
                90,
                _jitter(np.array([245, 240, 235]), rng, 8).tolist(),
                -1,
                cv2.LINE_AA,
                shift=4,
            )
        highlight = (
            centre
            + _direction(np.arctan2(direction[1], direction[0]) + np.pi / 2) * nail_width * 0.15
        )
        cv2.ellipse(
            self.image,
            _pt(highlight),
            (axes[0] // 3, max(16, axes[1] // 6)),
            angle_deg,
            0,
            360,
            np.clip(colour + 60, 0, 255).tolist(),
            -1,
            cv2.LINE_AA,
            shift=4,
        )
        self.mask[nail_mask > 0] = 1

    def hand(self, centre: np.ndarray, angle: float, palm: float, skin: np.ndarray) -> None:
        """A palm with four fingers fanning out along ``angle`` and a thumb to one side."""
        rng = self.rng
        direction, normal = _direction(angle), _direction(angle + np.pi / 2)
        axes = (int(palm * 0.55 * 16), int(palm * 0.5 * 16))
        shade = (skin * 0.85).tolist()
        cv2.ellipse(
            self.image,
            _pt(centre - direction * palm * 0.3),
            axes,
            float(np.degrees(angle)),
            0,
            360,
            shade,
            -1,
            cv2.LINE_AA,
            shift=4,
        )
        cv2.ellipse(
            self.skin,
            _pt(centre - direction * palm * 0.3),
            axes,
            float(np.degrees(angle)),
            0,
            360,
            1,
            -1,
            shift=4,
        )
        wrist = centre - direction * palm * 1.4
        cv2.line(
            self.image,
            _pt(centre - direction * palm * 0.3),
            _pt(wrist),
            shade,
            int(palm * 0.75),
            cv2.LINE_AA,
            shift=4,
        )
        cv2.line(
            self.skin,
            _pt(centre - direction * palm * 0.3),
            _pt(wrist),
            1,
            int(palm * 0.75),
            shift=4,
        )
        side = 1 if rng.random() < 0.5 else -1
        width = palm * rng.uniform(0.2, 0.26)
        for k, fraction in enumerate((-0.36, -0.12, 0.12, 0.36)):
            spread = angle + fraction * rng.uniform(0.4, 0.9)
            root = centre + direction * palm * 0.15 + normal * fraction * palm * 1.1
            length = palm * (0.95 if k in (1, 2) else 0.8) * rng.uniform(0.85, 1.1)
            curl = rng.uniform(0.6, 1.0) if rng.random() < 0.2 else 1.0
            self.finger(
                root + _direction(spread) * length * curl, spread, length * curl, width, skin
            )
        thumb_angle = angle + side * rng.uniform(0.7, 1.3)
        root = centre - direction * palm * 0.35 + normal * side * palm * 0.45
        length = palm * rng.uniform(0.6, 0.8)
        self.finger(
            root + _direction(thumb_angle) * length, thumb_angle, length, width * 1.15, skin
        )

    def finish(self, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Apply lighting, blur and noise to the image (never the mask) and quantise.

        The mask is the nail mask (``{0, 1}``) for ``classes=2``; for ``classes=3`` it is the
        skin mask with the nails on top (0 background, 1 skin, 2 nail).
        """
        rng, size = self.rng, self.size
        image = self.image
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        light_angle = rng.uniform(0, 2 * np.pi)
        gain = 1 + rng.uniform(0.1, 0.45) * (
            (xx - 0.5) * np.cos(light_angle) + (yy - 0.5) * np.sin(light_angle)
        )
        image = image * gain[..., None] * rng.uniform(0.7, 1.2)
        image = image * _jitter(np.ones(3) * 255, rng, 12) / 255  # colour temperature
        if rng.random() < 0.5:
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.6))
        image = image + rng.normal(0, rng.uniform(0, 7), image.shape)
        image = np.clip(image, 0, 255).astype(np.uint8)
        if classes == 2:
            return image, self.mask.copy()
        labels = self.skin.copy()
        labels[self.mask > 0] = 2
        return image, labels
