"""Re-express a batch prepared for one model's input in another model's input.

KDPL shows the teacher the student's augmented batch. A teacher with other input statistics or
size (``teacher.preprocess: model``, e.g. SigLIP's mean/std 0.5 at 256 px) gets the same view:
the batch is un-normalised with the student's statistics, normalised with the teacher's and
resized (bicubic, antialiased) to the teacher's size. When both agree it is the identity, so
the reference setting is untouched.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ImageAdapter(nn.Module):
    def __init__(self, source_size: int, source_mean: Sequence[float], source_std: Sequence[float],
                 target_size: int, target_mean: Sequence[float], target_std: Sequence[float]):
        super().__init__()
        self.target_size = int(target_size)
        self.resize = int(source_size) != self.target_size
        self.renormalize = tuple(source_mean) != tuple(target_mean) or tuple(source_std) != tuple(target_std)
        stats = [torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)
                 for v in (source_mean, source_std, target_mean, target_std)]
        for name, value in zip(("source_mean", "source_std", "target_mean", "target_std"), stats):
            self.register_buffer(name, value, persistent=False)

    @property
    def is_identity(self) -> bool:
        return not (self.resize or self.renormalize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return images
        x = images.float()
        if self.renormalize:
            x = (x * self.source_std + self.source_mean - self.target_mean) / self.target_std
        if self.resize:
            x = F.interpolate(x, size=(self.target_size, self.target_size), mode="bicubic",
                              align_corners=False, antialias=True)
        return x.to(images.dtype)
