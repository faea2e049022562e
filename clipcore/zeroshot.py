"""Zero-shot classification: the reference point of every table.

``method: zeroshot`` evaluates the student (or, with ``zeroshot.model: teacher``, the teacher;
any open_clip model) with the prompt templates of ``zeroshot.templates`` and reports top-1,
top-5 and mean per-class recall (``clipcore.evaluation``), plus ``predictions.csv``.

Several templates are ensembled as in the CLIP paper and CLIP_benchmark: each template's text
features are L2-normalised, averaged over the templates, and the mean renormalised. With one
template the classifier is that template's normalised features (no second normalisation, so
the logits are bit-identical to the single-template classifier).

Logits are the model's own: ``exp(logit_scale) * cos`` plus ``logit_bias`` for models that
have one (SigLIP); a per-class constant, so the ranking and top-k are the same either way. The
prediction's score in ``predictions.csv`` follows the model's training loss: softmax over the
classes for CLIP-style models, a per-class sigmoid for SigLIP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipcore.build import encoder_from_config, uses_own_preprocessing
from clipcore.classnames import prompts_for
from clipcore.config import ConfigError, to_plain
from clipcore.data.from_config import classification_datamodule, dataset_template, read_splits
from clipcore.encoder import FrozenEncoder
from clipcore.evaluation import ClassificationScores, PredictionRecorder, classification_eval_step
from clipcore.module import ClipMethodModule
from clipcore.registry import register_method
from clipcore.teacher import encode_prompts
from clipcore.templates import resolve_templates


@torch.no_grad()
def ensembled_text_features(encoder: FrozenEncoder, templates: list[str], classnames: list[str]) -> torch.Tensor:
    """``[C, D]`` unit-norm class features: per template normalised, averaged, renormalised."""
    if len(templates) == 1:
        return F.normalize(encode_prompts(encoder, prompts_for(templates[0], classnames)), dim=-1)
    total = None
    for template in templates:
        feats = F.normalize(encode_prompts(encoder, prompts_for(template, classnames)), dim=-1)
        total = feats if total is None else total + feats
    return F.normalize(total / len(templates), dim=-1)


class ZeroShotModule(ClipMethodModule):
    method_name = "zeroshot"

    def __init__(self, config: dict, encoder: FrozenEncoder, templates: list[str], classnames: list[str]):
        super().__init__(config)
        self.encoder = encoder.freeze()
        self.templates = list(templates)
        self.classnames = list(classnames)
        # Computed on first use, on the module's device; never checkpointed.
        self.register_buffer("text_features", torch.empty(0), persistent=False)
        self.val_scores = ClassificationScores(len(classnames))
        self.test_scores = ClassificationScores(len(classnames))
        self.predictions = PredictionRecorder()

    def backbones(self):
        return {"model": self.encoder}

    def _text_features(self) -> torch.Tensor:
        if self.text_features.numel() == 0:
            self.text_features = ensembled_text_features(self.encoder, self.templates, self.classnames)
        return self.text_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            image = F.normalize(self.encoder.encode_image(images).float(), dim=-1)
            logits = self.encoder.logit_scale.exp().float() * image @ self._text_features().t()
            bias = self.encoder.logit_bias
            return logits if bias is None else logits + bias.float()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.encoder.logit_bias is not None else logits.softmax(dim=-1)

    def validation_step(self, batch, batch_idx):
        if batch is not None:  # None: every image of the batch was corrupt and skipped
            classification_eval_step(self, self.val_scores, self(batch["image"]), batch, "val")

    def on_test_epoch_start(self) -> None:
        self.predictions.clear()

    def test_step(self, batch, batch_idx):
        if batch is not None:
            logits = self(batch["image"])
            classification_eval_step(self, self.test_scores, logits, batch, "test", self.predictions,
                                     self.probabilities(logits))

    def configure_optimizers(self):
        return None


@register_method("zeroshot")
def build_zeroshot(cfg):
    if cfg.zeroshot.model not in ("student", "teacher"):
        raise ConfigError(f"zeroshot.model={cfg.zeroshot.model!r}: expected 'student' or 'teacher'")
    spec = cfg.zeroshot.templates
    templates = resolve_templates(list(spec) if not isinstance(spec, (str, type(None))) else spec,
                                  dataset_template(cfg), "zeroshot.templates")
    section = cfg[cfg.zeroshot.model]
    own = uses_own_preprocessing(section, cfg.zeroshot.model)
    splits = read_splits(cfg.data, cfg.seed)  # before the model: a wrong dataset fails at once
    encoder = encoder_from_config(section)
    stats = (encoder.image_mean, encoder.image_std) if own else None
    datamodule = classification_datamodule(cfg, encoder.image_size, stats, splits=splits)
    return ZeroShotModule(to_plain(cfg), encoder, templates, datamodule.classnames), datamodule
