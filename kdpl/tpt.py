"""Test-time prompt tuning (Shu et al., NeurIPS 2022; azshue/TPT, ``tpt_classification.py``).

Per test image: the original view (the evaluation transform: resize + centre crop) and
``views - 1`` augmented ones (``data/datautils.py::AugMixAugmenter``: a random resized crop and
flip of the raw image, mixed with AugMix chains of ``data/augmix_ops.py`` where the reference
uses AugMix); the ``selection`` fraction of views with the lowest prediction entropy is kept
(``select_confident_samples``), the entropy of their averaged prediction (``avg_entropy``) is
minimised for ``steps`` AdamW steps on the learner's tensors, the original view is predicted,
and the learner's tensors (and a fresh optimiser) are restored before the next image.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms

# ImageNet and its variants: the reference's single-letter test sets (I, A, R, V, K), which it
# tunes without AugMix (``augmix=len(set_id) > 1``); every other dataset gets AugMix.
IMAGENET_FAMILY = ("imagenet", "imagenet_a", "imagenet_r", "imagenet_sketch", "imagenet_v2")


def uses_augmix(setting, dataset: str) -> bool:
    """``tpt.augmix``: True/False, or None for the reference's choice for ``dataset``."""
    return dataset not in IMAGENET_FAMILY if setting is None else bool(setting)


# -- selection and loss (tpt_classification.py) -------------------------------------------------
def select_confident_samples(logits: torch.Tensor, top: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``int(n * top)`` views of lowest softmax entropy, most confident first."""
    batch_entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    idx = torch.argsort(batch_entropy, descending=False)[:int(batch_entropy.size()[0] * top)]
    return logits[idx], idx


def avg_entropy(outputs: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean of the views' softmax, computed in log space."""
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - math.log(logits.shape[0])
    avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def tune_and_predict(learner, views: torch.Tensor, *, steps: int, lr: float, selection: float) -> torch.Tensor:
    """TPT for one image (``views[0]`` the original): the logits ``[1, C]`` of the original view
    after tuning; the learner's tensors are back at their values on return."""
    saved = {k: v.detach().clone() for k, v in learner.learned_state().items()}
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr)  # fresh per image, as the reference's reloaded state
    selected = None
    try:
        with torch.enable_grad():
            for _ in range(steps):
                output = learner(views).logits.float()
                if selected is None:
                    output, selected = select_confident_samples(output, selection)
                else:
                    output = output[selected]
                loss = avg_entropy(output)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            return learner(views[:1]).logits.float()
    finally:
        learner.load_learned_state(saved)


# -- views (data/datautils.py, data/augmix_ops.py) ---------------------------------------------
class TPTViews:
    """PIL image -> ``[views, 3, H, W]``: the evaluation transform's view, then augmented ones.

    Random draws come from torch's generator (seeded per image by the test sampler), also for
    the AugMix choices, which the reference draws from numpy's global generator."""

    def __init__(self, original: Callable, size: int, mean: Sequence[float], std: Sequence[float],
                 views: int, augmix: bool):
        if views < 2:
            raise ValueError(f"tpt.views={views}: expected at least 2 (the original and one augmented view)")
        self.original = original
        self.size = int(size)
        self.count = int(views) - 1
        self.augmix = augmix
        self.preaugment = transforms.Compose([transforms.RandomResizedCrop(self.size),
                                              transforms.RandomHorizontalFlip()])
        self.preprocess = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.original(image), *(self._view(image) for _ in range(self.count))])

    def _view(self, image: Image.Image) -> torch.Tensor:
        x_orig = self.preaugment(image)
        x_processed = self.preprocess(x_orig)
        if not self.augmix:
            return x_processed
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))
        w = np.float32(rng.dirichlet([1.0, 1.0, 1.0]))
        m = np.float32(rng.beta(1.0, 1.0))
        mix = torch.zeros_like(x_processed)
        for i in range(3):
            x_aug = x_orig.copy()
            for _ in range(rng.integers(1, 4)):
                x_aug = AUGMENTATIONS[rng.integers(len(AUGMENTATIONS))](x_aug, 1, rng, self.size)
            mix += w[i] * self.preprocess(x_aug)
        return m * x_processed + (1 - m) * mix


def _int_parameter(level, maxval):
    return int(level * maxval / 10)


def _float_parameter(level, maxval):
    return float(level) * maxval / 10.0


def _sample_level(n, rng):
    return rng.uniform(low=0.1, high=n)


def _sign(rng) -> int:
    return -1 if rng.uniform() > 0.5 else 1


def _autocontrast(img, _, rng, size):
    return ImageOps.autocontrast(img)


def _equalize(img, _, rng, size):
    return ImageOps.equalize(img)


def _posterize(img, level, rng, size):
    return ImageOps.posterize(img, 4 - _int_parameter(_sample_level(level, rng), 4))


def _rotate(img, level, rng, size):
    degrees = _int_parameter(_sample_level(level, rng), 30)
    return img.rotate(_sign(rng) * degrees, resample=Image.BILINEAR)


def _solarize(img, level, rng, size):
    return ImageOps.solarize(img, 256 - _int_parameter(_sample_level(level, rng), 256))


def _affine(coefficients):
    def op(img, level, rng, size):
        amount = coefficients(level, rng, size)
        return img.transform((size, size), Image.AFFINE, amount, resample=Image.BILINEAR)
    return op


_shear_x = _affine(lambda lv, rng, s: (1, _float_parameter(_sample_level(lv, rng), 0.3) * _sign(rng), 0, 0, 1, 0))
_shear_y = _affine(lambda lv, rng, s: (1, 0, 0, _float_parameter(_sample_level(lv, rng), 0.3) * _sign(rng), 1, 0))
_translate_x = _affine(lambda lv, rng, s: (1, 0, _int_parameter(_sample_level(lv, rng), s / 3) * _sign(rng), 0, 1, 0))
_translate_y = _affine(lambda lv, rng, s: (1, 0, 0, 0, 1, _int_parameter(_sample_level(lv, rng), s / 3) * _sign(rng)))

# augmix_ops.augmentations (the list without the ImageNet-C overlapping colour operations).
AUGMENTATIONS = (_autocontrast, _equalize, _posterize, _rotate, _solarize, _shear_x, _shear_y,
                 _translate_x, _translate_y)
