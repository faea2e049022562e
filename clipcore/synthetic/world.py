"""ShapeWorld: a procedural image world whose classes are colour x shape compositions.

Within a class, size, position, rotation, texture, shape-colour jitter, background grey level and
background noise vary. Everything is a pure function of (world seed, class id, instance seed), so
the same call returns the same pixels on any machine (numpy's PCG64 and PIL's rasteriser are
platform independent).

Instance seeds live in disjoint ranges per use (see ``INSTANCE_OFFSETS``) so that the pretraining
images of the small CLIPs never reappear in the train/val/test splits written to disk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Bump when rendering or captions change: it is part of every cache key built on this world.
RENDER_VERSION = 2

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (35, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 30),
    "purple": (145, 45, 185),
    "orange": (250, 135, 20),
    "white": (248, 248, 248),
    "black": (12, 12, 12),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted")
BACKGROUNDS = ("plain", "noisy")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")

# "calibration": held-out images a pretrained model's logit scale may be fitted on (never written
# to disk, so no method trains or is tested on them).
INSTANCE_OFFSETS = {"pretrain": 0, "train": 1_000_000, "val": 2_000_000, "test": 3_000_000,
                    "calibration": 4_000_000}

_SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges without extra libraries

_CAPTION_TEMPLATES = (
    "a photo of a {name}.",
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {texture} {colour} {shape}",
    "a photo of a {size} {colour} {shape} on a {background} background",
    "a {size} {texture} {colour} {shape} {position}",
    "a drawing of a {colour} {shape} {position}",
    "a {colour} {shape} on a {background} background",
    "an image of a {size} {colour} {shape}, {texture}",
    "{colour} {shape}",
)


@dataclass(frozen=True)
class Instance:
    """The attributes that one rendered image was drawn with (its ground truth)."""

    class_id: int
    colour: str
    shape: str
    size: str
    texture: str
    background: str
    position: str
    centre: tuple[float, float]
    radius: float
    angle: float
    background_level: float
    colour_jitter: tuple[int, int, int]


def _polygon(shape: str, angle: float, n_circle: int = 48) -> list[np.ndarray]:
    """Unit-radius outlines (list of (K,2) arrays; later ones are holes) rotated by ``angle``."""
    if shape in ("circle", "ring"):
        t = np.linspace(0, 2 * math.pi, n_circle, endpoint=False)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        parts = [outer] if shape == "circle" else [outer, 0.55 * outer]
    elif shape == "square":
        t = math.pi / 4 + np.arange(4) * math.pi / 2
        parts = [1.15 * np.stack([np.cos(t), np.sin(t)], 1)]
    elif shape == "triangle":
        t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        parts = [1.2 * np.stack([np.cos(t), np.sin(t)], 1)]
    elif shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.25, 0.5)
        parts = [np.stack([r * np.cos(t), r * np.sin(t)], 1)]
    elif shape == "cross":
        a, b = 0.36, 1.1
        parts = [np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
                           (-a, a), (-b, a), (-b, -a), (-a, -a)])]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return [p @ rot.T for p in parts]


class ShapeWorld:
    """Classes ``colour x shape`` (48 by default), rendered at ``image_size`` pixels."""

    def __init__(self, seed: int = 0, image_size: int = 32, max_rotation_deg: float = 15.0):
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        # Bounded rotation: tiny ViTs trained for minutes on CPU learn upright-ish shapes far
        # faster than rotation-invariant ones (a supervised 6-way shape probe of the student's
        # ViT after 400 steps: 66% at 0 deg, 61% at 15 deg, 49% at 30 deg).
        self.max_rotation_deg = float(max_rotation_deg)
        self.classes: list[tuple[str, str]] = [(c, s) for c in COLOURS for s in SHAPES]
        self.classnames: list[str] = [f"{c} {s}" for c, s in self.classes]
        big = self.image_size * _SUPERSAMPLE
        self._grid = np.mgrid[0:big, 0:big].astype(np.float32)  # read-only pixel coordinates

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def params(self) -> dict:
        """Everything that determines this world's pixels and captions (for cache keys)."""
        return {"seed": self.seed, "image_size": self.image_size, "render_version": RENDER_VERSION,
                "max_rotation_deg": self.max_rotation_deg, "classnames": self.classnames}

    def _rng(self, class_id: int, instance_seed: int, stream: int) -> np.random.Generator:
        if not 0 <= class_id < self.num_classes:
            raise IndexError(f"class_id {class_id} out of range 0..{self.num_classes - 1}")
        return np.random.default_rng([self.seed, class_id, int(instance_seed), stream])

    def instance(self, class_id: int, instance_seed: int) -> Instance:
        rng = self._rng(class_id, instance_seed, 0)
        colour, shape = self.classes[class_id]
        size = SIZES[rng.integers(2)]
        unit = self.image_size / 32.0
        radius = unit * (rng.uniform(5.5, 7.0) if size == "small" else rng.uniform(9.0, 11.5))
        margin = 1.3 * radius + 1.0
        cx, cy = (rng.uniform(margin, self.image_size - margin) for _ in range(2))
        d = (np.array([cx, cy]) - self.image_size / 2) / (self.image_size / 2)
        if np.abs(d).max() < 0.2:
            position = "in the middle"
        elif abs(d[0]) >= abs(d[1]):
            position = "on the left" if d[0] < 0 else "on the right"
        else:
            position = "at the top" if d[1] < 0 else "at the bottom"
        return Instance(
            class_id=class_id, colour=colour, shape=shape, size=size,
            texture=TEXTURES[rng.integers(3)], background=BACKGROUNDS[rng.integers(2)],
            position=position, centre=(float(cx), float(cy)), radius=float(radius),
            angle=float(rng.uniform(-1, 1) * math.radians(self.max_rotation_deg)),
            background_level=float(rng.uniform(80, 175)),
            colour_jitter=tuple(int(v) for v in rng.integers(-12, 13, size=3)),
        )

    def render(self, class_id: int, instance_seed: int) -> Image.Image:
        """RGB PIL image of one instance of ``class_id``."""
        inst = self.instance(class_id, instance_seed)
        noise_rng = self._rng(class_id, instance_seed, 1)
        big = self.image_size * _SUPERSAMPLE
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        centre = np.array(inst.centre) * _SUPERSAMPLE
        for i, part in enumerate(_polygon(inst.shape, inst.angle)):
            pts = part * inst.radius * _SUPERSAMPLE + centre
            draw.polygon([tuple(p) for p in pts], fill=255 if i == 0 else 0)
        fill = Image.fromarray(self._texture(inst, big), "RGB")
        level = int(round(inst.background_level))
        img = Image.composite(fill, Image.new("RGB", (big, big), (level,) * 3), mask)
        img = np.asarray(img.reduce(_SUPERSAMPLE), dtype=np.float32)
        shape_alpha = np.asarray(mask.reduce(_SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0
        sigma = 4.0 if inst.background == "plain" else 28.0
        noise = noise_rng.normal(0.0, sigma, size=img.shape[:2] + (1,))
        img = img + noise * (1 - shape_alpha)  # noise lives in the background only
        return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")

    def _texture(self, inst: Instance, big: int) -> np.ndarray:
        base = np.clip(np.array(COLOURS[inst.colour]) + np.array(inst.colour_jitter), 0, 255)
        # Contrast colour for stripes/dots: darker for bright colours, lighter for dark ones.
        alt = np.rint(base * 0.6 if base.mean() > 60 else base + 75.0).astype(np.uint8)
        fill = np.empty((big, big, 3), dtype=np.uint8)
        fill[:] = base.astype(np.uint8)
        if inst.texture == "solid":
            return fill
        yy, xx = self._grid
        period = 4.0 * _SUPERSAMPLE * self.image_size / 32.0
        if inst.texture == "striped":
            u = xx * math.cos(inst.angle) + yy * math.sin(inst.angle)
            on = (u / period) % 1.0 < 0.3  # thin stripes keep the class colour dominant
        else:  # dotted
            fx, fy = (xx / period) % 1.0 - 0.5, (yy / period) % 1.0 - 0.5
            on = fx * fx + fy * fy < 0.06
        fill[on] = alt
        return fill

    def attribute_values(self, inst: Instance) -> dict[str, str]:
        return {"name": f"{inst.colour} {inst.shape}", "colour": inst.colour,
                "shape": inst.shape, "size": inst.size, "texture": inst.texture,
                "background": inst.background, "position": inst.position}

    def captions(self, class_id: int, instance_seed: int) -> list[str]:
        """Every caption template filled with this instance's attributes."""
        values = self.attribute_values(self.instance(class_id, instance_seed))
        return [t.format(**values) for t in _CAPTION_TEMPLATES]

    def caption(self, class_id: int, instance_seed: int) -> str:
        """One natural caption for the instance, chosen deterministically among the templates."""
        options = self.captions(class_id, instance_seed)
        return options[int(self._rng(class_id, instance_seed, 2).integers(len(options)))]

    def instance_seeds(self, split: str, n: int) -> range:
        """The ``n`` instance seeds of ``split`` (one of ``INSTANCE_OFFSETS``), same for every class."""
        if split not in INSTANCE_OFFSETS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(INSTANCE_OFFSETS)}")
        return range(INSTANCE_OFFSETS[split], INSTANCE_OFFSETS[split] + n)

    def render_array(self, split: str, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W, 3) and int64 labels (N,) of ``split``, class-major order."""
        seeds = self.instance_seeds(split, n_per_class)
        images = np.stack([np.asarray(self.render(c, s)) for c in range(self.num_classes)
                           for s in seeds])
        labels = np.repeat(np.arange(self.num_classes), n_per_class)
        return images, labels
