"""The prompt-learning LightningModule: any learner x {supervised, KDPL, KDPL-CA}.

Training (kdpl spec 2):
- supervised: cross-entropy of the student's logits;
- kdpl: symmetric KL between the student and a frozen teacher over the training classes,
  labels never used;
- kdpl_ca: the student's classes are a large dictionary; each step distils only the top-K
  classes of the teacher's batch-mean softmax (gathered over all ranks under DDP).
PromptSRC's self-regularisation is added by its learner. Evaluation always scores the
dataset's own classes with micro top-1 accuracy.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from clipcore.errors import NonFiniteLossError
from clipcore.module import ClipMethodModule
from clipcore.schedule import cosine_epoch_scheduler
from clipcore.teacher import cached_text_features
from kdpl.distill import mean_teacher_probs, symmetric_kl, topk_classes
from kdpl.prompts import build_prompt_learner
from kdpl.prompts.gpa import PromptAggregator

log = logging.getLogger(__name__)


class PromptLearningModule(ClipMethodModule):
    method_name = "prompt"

    def __init__(self, config: dict, student, classnames: list[str], *, train_classnames: Optional[list[str]] = None,
                 teacher_loader=None, teacher_prompts: Optional[list[str]] = None):
        """``classnames``: the dataset's classes (evaluation). ``train_classnames``: the classes the
        student is trained on (the dictionary for KDPL-CA; default ``classnames``).
        ``teacher_loader()`` builds the frozen teacher, called only when fitting."""
        super().__init__(config)
        self.method_name = config["method"]
        self.objective = config["kdpl"]["objective"]
        self.student = student.freeze()
        self.eval_classnames = list(classnames)
        self.train_classnames = list(train_classnames or classnames)
        self.learner = build_prompt_learner(self.method_name, self.student, self.eval_classnames, config["prompt"])
        self._active_classes = "eval"
        self._teacher_loader = teacher_loader
        self.teacher_prompts = teacher_prompts
        self.teacher = None
        self.register_buffer("teacher_text", torch.empty(0), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes=len(classnames), average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=len(classnames), average="micro")
        # The learner's config has its defaults filled in (PromptSRC: GPA 15/1 unless set).
        gpa = self.learner.cfg
        self.aggregator = (PromptAggregator(config["trainer"]["max_epochs"], gpa.gpa_mean, gpa.gpa_std)
                           if gpa.gpa_mean is not None else None)

    # -- set-up -------------------------------------------------------------------------------
    def backbones(self):
        roles = {"student": self.student}
        if self.teacher is not None:
            roles["teacher"] = self.teacher
        return roles

    def setup(self, stage: str) -> None:
        # The teacher exists only while fitting: evaluation never pays for loading it.
        if stage == "fit" and self.objective != "supervised" and self.teacher is None:
            self.teacher = self._teacher_loader().freeze()

    def _use_classes(self, which: str) -> None:
        if self._active_classes != which:
            self.learner.set_classnames(self.train_classnames if which == "train" else self.eval_classnames)
            self._active_classes = which

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Per batch, not per epoch: a run resumed mid-epoch gets no on_train_epoch_start, and
        # validation in between switched to the evaluation classes. A no-op when already set.
        self._use_classes("train")

    def on_validation_start(self) -> None:
        self._use_classes("eval")

    def on_test_start(self) -> None:
        self._use_classes("eval")

    def _teacher_text(self) -> torch.Tensor:
        if self.teacher_text.numel() == 0:
            cache = self.config["kdpl"]["text_cache_dir"]
            feats = cached_text_features(self.teacher, self.teacher_prompts, cache)
            self.teacher_text = F.normalize(feats.to(self.device), dim=-1)
        return self.teacher_text

    # -- training -----------------------------------------------------------------------------
    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = F.normalize(self.teacher.encode_image(images).float(), dim=-1)
            source = self.student if self.config["kdpl"]["teacher_logit_scale"] == "student" else self.teacher
            return source.logit_scale.exp().float() * features @ self._teacher_text().t()

    def _select(self, teacher_logits: torch.Tensor) -> Optional[torch.Tensor]:
        if self.objective != "kdpl_ca":
            return None
        probs = mean_teacher_probs(teacher_logits)
        if self.trainer.world_size > 1:
            # One selection for the global batch, as on a single device.
            probs = self.all_gather(probs).mean(dim=0)
        return topk_classes(probs, self.config["kdpl"]["k_max"])

    def training_step(self, batch, batch_idx):
        images, labels = batch["image"], batch["label"]
        logs = {}
        if self.objective == "supervised":
            output = self.learner(images)
            loss = F.cross_entropy(output.logits.float(), labels)
            logs["train/ce"] = loss.detach()
        else:
            teacher_logits = self._teacher_logits(images)
            selected = self._select(teacher_logits)
            if selected is not None:
                teacher_logits = teacher_logits[:, selected]
                logs["train/selected_classes"] = torch.tensor(float(selected.numel()))
            output = self.learner(images, class_indices=selected)
            loss, forward, reverse = symmetric_kl(output.logits, teacher_logits,
                                                  self.config["kdpl"]["alpha"], self.config["kdpl"]["beta"])
            agreement = (output.logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
            teacher_p = teacher_logits.softmax(-1)
            logs.update({"train/kl_forward": forward.detach(), "train/kl_reverse": reverse.detach(),
                         "train/teacher_agreement": agreement,
                         "train/teacher_entropy": -(teacher_p * teacher_p.clamp_min(1e-12).log()).sum(-1).mean()})
        reg, parts = self.learner.regularization_loss(output)
        loss = loss + reg
        logs.update({f"train/{k}": v.detach() for k, v in parts.items()})
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, "
                                     f"step {self.global_step}; last logged parts: {logs}")
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(images))
        self.log_dict(logs, batch_size=len(images))
        return loss

    def on_train_epoch_end(self) -> None:
        if self.aggregator is not None:
            self.aggregator.update(self.current_epoch + 1, self.learner.learned_state())

    def on_train_end(self) -> None:
        if self.aggregator is not None and self.aggregator.complete:
            like = self.learner.learned_state()
            self.learner.load_learned_state(self.aggregator.aggregate(like=like))
            log.info("loaded the Gaussian prompt aggregate over %d epochs", self.aggregator.epochs)

    def configure_optimizers(self):
        opt = self.config["optim"]
        params = [p for p in self.learner.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"])
        scheduler = cosine_epoch_scheduler(optimizer, self.config["trainer"]["max_epochs"], opt["warmup_epochs"],
                                           opt["warmup_lr"], opt["eta_min_ratio"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- evaluation -----------------------------------------------------------------------------
    def _eval_step(self, batch, metric, stage: str) -> None:
        if batch is None:  # every image of the batch was corrupt and skipped (data.skip_corrupt)
            return
        logits = self.learner(batch["image"]).logits
        metric(logits, batch["label"])
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_acc, "test")

    # -- checkpoints and export ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.aggregator is not None:
            checkpoint["gpa"] = self.aggregator.state_dict()
            if self.aggregator.complete:
                # The last epoch's checkpoint holds the model that is evaluated and exported (the
                # aggregate), so evaluating last.ckpt on other classes scores the same prompts.
                aggregate = self.aggregator.aggregate(like=self.learner.learned_state())
                checkpoint["state_dict"].update({f"learner.{k}": v for k, v in aggregate.items()})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.aggregator is not None and "gpa" in checkpoint:
            self.aggregator.load_state_dict(checkpoint["gpa"])

    def export_state(self):
        tensors = {f"learner.{k}": v for k, v in self.learner.learned_state().items()}
        metadata = {"learner": self.method_name, "prompt": self.config["prompt"],
                    "student": self.config["student"], "train_classnames": self.train_classnames}
        return tensors, metadata

    def load_export(self, tensors: dict, metadata: dict) -> None:
        prefix = "learner."
        self.learner.load_learned_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
