"""Zero-shot CLIP classification: the reference point of every table.

``method: zeroshot`` evaluates the student (or, with ``zeroshot.model: teacher``, the teacher)
with the dataset's template and reports micro top-1 accuracy.
"""
from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy

from clipcore.backbone import ClipBackbone
from clipcore.build import backbone_from_config
from clipcore.classnames import prompts_for
from clipcore.config import ConfigError, to_plain
from clipcore.data import get_dataset
from clipcore.data.from_config import classification_datamodule
from clipcore.module import ClipMethodModule
from clipcore.registry import register_method
from clipcore.teacher import encode_prompts


class ZeroShotModule(ClipMethodModule):
    method_name = "zeroshot"

    def __init__(self, config: dict, backbone: ClipBackbone, prompts: list[str]):
        super().__init__(config)
        self.backbone = backbone.freeze()
        self.prompts = prompts
        # Computed on first use, on the module's device; never checkpointed.
        self.register_buffer("text_features", torch.empty(0), persistent=False)
        self.accuracy = MulticlassAccuracy(num_classes=len(prompts), average="micro")

    def backbones(self):
        return {"model": self.backbone}

    def _text_features(self) -> torch.Tensor:
        if self.text_features.numel() == 0:
            feats = encode_prompts(self.backbone, self.prompts)
            self.text_features = torch.nn.functional.normalize(feats, dim=-1)
        return self.text_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            image = torch.nn.functional.normalize(self.backbone.encode_image(images).float(), dim=-1)
        return self.backbone.logit_scale.exp().float() * image @ self._text_features().t()

    def _eval_step(self, batch, stage: str) -> None:
        if batch is None:  # every image of the batch was corrupt and skipped (data.skip_corrupt)
            return
        self.accuracy(self(batch["image"]), batch["label"])
        self.log(f"{stage}/acc", self.accuracy, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        return None


@register_method("zeroshot")
def build_zeroshot(cfg):
    if cfg.zeroshot.model not in ("student", "teacher"):
        raise ConfigError(f"zeroshot.model={cfg.zeroshot.model!r}: expected 'student' or 'teacher'")
    backbone = backbone_from_config(cfg[cfg.zeroshot.model])
    datamodule = classification_datamodule(cfg, backbone.image_size)
    info = get_dataset(cfg.data.name)
    template = cfg.zeroshot.template or info.template
    prompts = prompts_for(template, datamodule.classnames)
    return ZeroShotModule(to_plain(cfg), backbone, prompts), datamodule
