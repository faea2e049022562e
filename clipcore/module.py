"""The LightningModule base every method derives from.

What it adds to Lightning:
- checkpoints hold only what is trained (parameters with ``requires_grad`` plus the buffers a
  method names in ``extra_state_keys``), never the frozen towers;
- checkpoints carry a fingerprint of every frozen backbone, and loading one onto a different
  backbone is refused;
- a uniform export hook (``export_state`` / ``load_export``) used by ``eval.py export``;
- a non-finite training loss stops the run without a device read per step
  (``watch_loss``, see ``clipcore.finite_loss``);
- under mixed precision, the frozen towers' matmul weights are held in the compute dtype for
  the training step instead of being re-cast at every call (``clipcore.compute_dtype``).
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import lightning as L
import torch

from clipcore.compute_dtype import FrozenComputeCopies
from clipcore.errors import UserError
from clipcore.finite_loss import NonFiniteLossWatch

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "backbone_fingerprints"


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint was made with other frozen weights than the ones loaded now."""


MIXED_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class ClipMethodModule(L.LightningModule):
    method_name: ClassVar[str] = ""
    # Hold the frozen towers' matmul weights in the compute dtype during training steps under
    # mixed precision (the same numbers; False re-casts them at every call, as autocast does).
    frozen_compute_copies: ClassVar[bool] = True

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        # Stored in every checkpoint and sent to the loggers: the resolved run config.
        self.save_hyperparameters({"config": config})
        # Checkpoints miss the frozen weights on purpose.
        self.strict_loading = False
        self.loss_watch = NonFiniteLossWatch()
        self._compute_copies: FrozenComputeCopies | None = None

    # -- hooks for subclasses -------------------------------------------------------------
    def backbones(self) -> dict[str, Any]:
        """Frozen towers whose fingerprints guard checkpoints, e.g. {"student": ..., "teacher": ...}."""
        return {}

    def compile_blocks(self, backend: str) -> None:
        """``trainer.compile``: compile the residual blocks of every backbone (Backbone.compile_blocks)."""
        for role, backbone in self.backbones().items():
            log.info("trainer.compile: %d blocks of the %s (%s) compiled with %s",
                     backbone.compile_blocks(backend), role, backbone.name, backend)

    def extra_state_keys(self) -> set[str]:
        """State-dict keys kept in checkpoints although they are not trainable parameters."""
        return set()

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON metadata that rebuild the learned model; see ``clipcore.export``."""
        raise NotImplementedError(f"{type(self).__name__} does not support export")

    def load_export(self, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        """Load what ``export_state`` wrote into a module built from the export's config."""
        raise NotImplementedError(f"{type(self).__name__} does not support import")

    def on_train_start(self) -> None:
        # After a resume, Lightning restores the optimizer's stored rate, which belongs to the
        # schedule of the interrupted run. Recompute it from the restored epoch so the resumed
        # epoch runs at the rate the current schedule gives (the SpectralGCD reference does not).
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                for group, factor, base in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas,
                                               scheduler.base_lrs):
                    group["lr"] = base * factor(scheduler.last_epoch)

    # -- frozen weights in the compute dtype ------------------------------------------------
    def on_fit_start(self) -> None:
        """Build the compute-dtype copies of the frozen weights, once per fit: the towers are on
        their device by now and stay there (subclasses overriding this call it)."""
        self._compute_copies = None
        dtype = MIXED_PRECISION_DTYPES.get(str(self.trainer.precision))
        if dtype is None or not self.frozen_compute_copies:
            return
        for backbone in self.backbones().values():
            backbone.fingerprint()  # of the fp32 weights (it is cached)
        self._compute_copies = FrozenComputeCopies([b.model for b in self.backbones().values()], dtype)
        log.info("frozen matmul weights held in %s during training steps: %.1f MB of copies",
                 str(dtype).removeprefix("torch."), self._compute_copies.nbytes / 2**20)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        """Swap in the compute-dtype copies (subclasses that change the class list here call
        this last: class caches are computed with the fp32 weights)."""
        if self._compute_copies is not None:
            self._compute_copies.swap_in()

    def on_after_backward(self) -> None:
        self._swap_out_compute_copies()

    def _swap_out_compute_copies(self) -> None:
        if self._compute_copies is not None and self._compute_copies.active:
            self._compute_copies.swap_out()

    # -- non-finite losses -------------------------------------------------------------------
    def watch_loss(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """Record this step's loss (and the parts the error should show) for the next check."""
        self.loss_watch.record(loss, self.global_step, self.current_epoch, parts)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._swap_out_compute_copies()  # a step without backward (none of ours) still ends fp32
        # As often as metrics are logged: a log reads the device then anyway.
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.loss_watch.check()

    def on_train_epoch_end(self) -> None:
        self.loss_watch.check()

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
        self.loss_watch.check()  # never save weights updated from a non-finite loss
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
