"""The LightningModule base every method derives from.

What it adds to Lightning:
- checkpoints hold only what is trained (parameters with ``requires_grad`` plus the buffers a
  method names in ``extra_state_keys``), never the frozen towers;
- checkpoints carry a fingerprint of every frozen backbone, and loading one onto a different
  backbone is refused;
- a uniform export hook (``export_state`` / ``from_export``) used by ``eval.py export``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch

FINGERPRINT_KEY = "backbone_fingerprints"


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was made with other frozen weights than the ones loaded now."""


class ClipMethodModule(L.LightningModule):
    method_name: ClassVar[str] = ""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        # Stored in every checkpoint and sent to the loggers: the resolved run config.
        self.save_hyperparameters({"config": config})
        # Checkpoints miss the frozen weights on purpose.
        self.strict_loading = False

    # -- hooks for subclasses -------------------------------------------------------------
    def backbones(self) -> dict[str, Any]:
        """Frozen towers whose fingerprints guard checkpoints, e.g. {"student": ..., "teacher": ...}."""
        return {}

    def extra_state_keys(self) -> set[str]:
        """State-dict keys kept in checkpoints although they are not trainable parameters."""
        return set()

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON metadata that rebuild the learned model; see ``clipcore.export``."""
        raise NotImplementedError(f"{type(self).__name__} does not support export")

    @classmethod
    def from_export(cls, tensors: dict[str, torch.Tensor], metadata: dict, config: dict) -> "ClipMethodModule":
        raise NotImplementedError(f"{cls.__name__} does not support import")

    # -- trainable-only checkpoints ---------------------------------------------------------
    def trainable_keys(self) -> set[str]:
        keys = {name for name, p in self.named_parameters() if p.requires_grad}
        return keys | self.extra_state_keys()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        keep = self.trainable_keys()
        return {k: v for k, v in self.state_dict().items() if k in keep}

    def fingerprints(self) -> dict[str, str]:
        return {role: backbone.fingerprint() for role, backbone in self.backbones().items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[FINGERPRINT_KEY] = self.fingerprints()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_fingerprints(checkpoint.get(FINGERPRINT_KEY, {}), self.fingerprints())
        missing = self.trainable_keys() - set(checkpoint.get("state_dict", {}))
        if missing:
            raise CheckpointMismatchError(
                f"checkpoint lacks trained tensors this {type(self).__name__} expects: {sorted(missing)[:8]}"
            )


def check_fingerprints(stored: dict[str, str], current: dict[str, str]) -> None:
    for role, fingerprint in stored.items():
        if role in current and current[role] != fingerprint:
            raise CheckpointMismatchError(
                f"the checkpoint was trained on a different {role} backbone (fingerprint {fingerprint}, "
                f"loaded backbone has {current[role]}). Load the same weights as the run that wrote it "
                f"(see its config.yaml, keys '{role}.name' and '{role}.pretrained')."
            )
