"""The training augmentations split into a deterministic head and a random tail, with the tail's
random draws as explicit parameters that can be applied on any device.

Both families' train transforms (``clipcore.data.transforms``) are a deterministic head (nothing
for Dassl/CoOp; SimGCD's ``Resize(size / 0.875)``) followed by a random tail (a crop, a
horizontal flip, ``ToTensor`` and ``Normalize``). The ``cached`` and ``gpu`` input pipelines
(``clipcore.data.pipeline``) apply the head once, when the decoded images are cached, and the
tail per draw:

- on the CPU, by running torchvision's own tail on the cached pixels (:meth:`tail`): the same
  images as the ``cpu`` pipeline, bit for bit;
- on the training device, by drawing the tail's parameters exactly as torchvision does
  (:meth:`sample`: the same calls on the CPU generator, in the same order, so a draw seeded by
  its :class:`~clipcore.data.sampling.SampleKey` gets the very crop and flip it gets on the CPU)
  and applying them to a batch there (:meth:`apply`). A crop and a flip are pixel copies, so
  SimGCD's views equal the CPU ones exactly; Dassl's crop is resized with torch's antialiased
  bicubic, within a few grey levels of PIL's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from .transforms import GCD_CROP_PCT, resolve_normalization

# Views per draw: the key of each sampled parameter in a batch (leading dims [B, views]).
BOXES_KEY, FLIPS_KEY = "crop_boxes", "flips"


@dataclass(frozen=True)
class TrainAugmentation:
    """``views`` random crops of ``size`` (resized crops when ``scale`` is set), each flipped
    with probability 1/2, of an image that ``resize`` (shorter side, bicubic) was applied to."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Dassl's RandomResizedCrop: the crop's area range and aspect-ratio range; None: RandomCrop.
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    # SimGCD's deterministic Resize before the crop (the head); None: none.
    resize: int | None = None
    views: int = 1

    # -- the head, applied once per image when it is cached ----------------------------------
    def head(self, image: Image.Image) -> Image.Image:
        if self.resize is None:
            return image
        return F.resize(image, self.resize, interpolation=InterpolationMode.BICUBIC)

    def head_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the head's output for an input of that size (torchvision's rule)."""
        if self.resize is None:
            return width, height
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    # -- the tail on the CPU: torchvision's transforms on the cached pixels ---------------------
    def tail(self) -> T.Compose:
        crop = (T.RandomResizedCrop(self.size, scale=self.scale, ratio=self.ratio,
                                    interpolation=InterpolationMode.BICUBIC)
                if self.scale is not None else T.RandomCrop(self.size))
        return T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    # -- the tail anywhere: parameters drawn as torchvision draws them, applied per batch -------
    def sample(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop boxes ``[views, 4]`` (top, left, height, width) and flips ``[views]`` of an image of
        that size, drawn from torch's CPU generator with torchvision's calls in the tail's order."""
        shape = torch.empty((3, height, width), device="meta")
        boxes, flips = [], []
        for _ in range(self.views):
            if self.scale is not None:
                box = T.RandomResizedCrop.get_params(shape, list(self.scale), list(self.ratio))
            else:
                box = T.RandomCrop.get_params(shape, (self.size, self.size))
            boxes.append(box)
            flips.append(bool(torch.rand(1) < 0.5))  # RandomHorizontalFlip(p=0.5)'s test
        return torch.tensor(boxes, dtype=torch.long), torch.tensor(flips, dtype=torch.bool)

    def apply(self, images: Sequence[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Normalised float views ``[B, views, 3, size, size]`` of the uint8 ``[H, W, 3]``
        ``images`` (on the device the views are wanted on), given :meth:`sample`'s parameters
        stacked over the batch (``boxes [B, views, 4]``, ``flips [B, views]``)."""
        boxes, flips = boxes.tolist(), flips.tolist()
        views = []
        for image, image_boxes, image_flips in zip(images, boxes, flips):
            for (top, left, height, width), flip in zip(image_boxes, image_flips):
                view = image[top:top + height, left:left + width].permute(2, 0, 1)
                if self.scale is not None:
                    view = F.resize(view, [self.size, self.size], interpolation=InterpolationMode.BICUBIC,
                                    antialias=True)
                views.append(view.flip(-1) if flip else view)
        # ToTensor then Normalize, the same operations in the same order as on the CPU.
        batch = torch.stack(views).float().div(255)
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        batch = batch.sub_(mean).div_(std)
        return batch.view(len(images), self.views, *batch.shape[1:])


def dassl_augmentation(image_size: int, mean=None, std=None, min_crop_scale: float = 0.08) -> TrainAugmentation:
    """What ``build_train_transform`` does (CoOp's RandomResizedCrop + flip), as parameters."""
    mean, std = resolve_normalization(mean if mean is not None else "clip", std)
    return TrainAugmentation(int(image_size), mean, std, scale=(float(min_crop_scale), 1.0))


def gcd_augmentation(image_size: int, mean="imagenet", std=None, views: int = 2) -> TrainAugmentation:
    """What ``TwoViews(build_gcd_transform(True, ...))`` does (SimGCD), as parameters."""
    mean, std = resolve_normalization(mean, std)
    return TrainAugmentation(int(image_size), mean, std, resize=int(image_size / GCD_CROP_PCT), views=views)
