"""Image transforms: CLIP/CoOp style (Dassl) and GCD style (SimGCD), with named normalisations."""
from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from clipcore.config import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
# SimGCD resizes to size / 0.875 before cropping (256 for 224).
GCD_CROP_PCT = 0.875

Stats = Sequence[float] | str | None


def resolve_normalization(mean: Stats = "clip", std: Sequence[float] | None = None):
    """Return (mean, std) tuples; `mean` may be a name in NORMALIZATIONS (then `std` is ignored
    unless given) or explicit numbers, in which case `std` is required."""
    if mean is None:
        mean = "clip"
    if isinstance(mean, str):
        try:
            named_mean, named_std = NORMALIZATIONS[mean.lower()]
        except KeyError:
            raise ConfigError(f"unknown normalization {mean!r}; expected one of "
                             f"{sorted(NORMALIZATIONS)} or explicit mean/std") from None
        return named_mean, tuple(std) if std is not None else named_std
    if std is None:
        raise ValueError("explicit mean given without std")
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean/std must have 3 values, got {mean} / {std}")
    return mean, std


def build_train_transform(image_size: int = 224, mean: Stats = "clip", std=None,
                          min_crop_scale: float = 0.08) -> T.Compose:
    """Dassl/CoOp train transform: RandomResizedCrop(scale min_crop_scale-1, bicubic), flip, normalise.

    Dassl's 0.08 is the default; tiny images (the synthetic demo world) need a milder crop.
    """
    mean, std = resolve_normalization(mean, std)
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(min_crop_scale, 1.0), interpolation=InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def build_eval_transform(image_size: int = 224, mean: Stats = "clip", std=None) -> T.Compose:
    """Dassl/CoOp test transform: Resize(shorter side, bicubic), CenterCrop, normalise."""
    mean, std = resolve_normalization(mean, std)
    return T.Compose([
        T.Resize(image_size, interpolation=InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def build_gcd_transform(train: bool, image_size: int = 224, mean: Stats = "imagenet",
                        std=None) -> T.Compose:
    """SimGCD transforms: Resize(size/0.875, bicubic) then RandomCrop+flip (train) or
    CenterCrop (eval). SimGCD's `ColorJitter()` has zero strength, so it is left out."""
    mean, std = resolve_normalization(mean, std)
    resize = int(image_size / GCD_CROP_PCT)
    crop = [T.RandomCrop(image_size), T.RandomHorizontalFlip()] if train else [
        T.CenterCrop(image_size)]
    return T.Compose([
        T.Resize(resize, interpolation=InterpolationMode.BICUBIC),
        *crop,
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def build_transform(train: bool, image_size: int = 224, mean: Stats = None, std=None,
                    min_crop_scale: float = 0.08) -> T.Compose:
    """The Dassl/CoOp train or eval transform (CLIP statistics unless ``mean`` names others)."""
    if train:
        return build_train_transform(image_size, mean if mean is not None else "clip", std, min_crop_scale)
    return build_eval_transform(image_size, mean if mean is not None else "clip", std)
