"""The prompt-learning LightningModule: any learner x any objective.

The module trains a learner (``kdpl.prompts``) with an objective (``kdpl.objectives``): the
objective says which classes the learner trains on and whether a frozen teacher is needed, and
computes each step's loss; the learner adds its own regularisation (PromptSRC's L_SCL).
An objective may prepare the fit (UPL's pseudo-labels), own learned tensors (PromptKD's
projector, ``objective_head``) and score the evaluation itself. The module loads the teacher
only when fitting, caches the teacher's text features, runs the optimiser and the schedule, and
evaluates the dataset's own classes (top-1, top-5 and mean per-class recall,
``clipcore.evaluation``), optionally with test-time prompt tuning (``kdpl.tpt``) or as an
ensemble of checkpoints (``add_ensemble_member``).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import torch

from clipcore.errors import UserError
from clipcore.evaluation import ClassificationScores, PredictionRecorder, classification_eval_step
from clipcore.module import ClipMethodModule
from clipcore.schedule import optimizer_with_schedule
from clipcore.teacher import cached_text_features
from kdpl.distill import teacher_logits
from kdpl.objectives.base import Objective, TrainingStep
from kdpl.prompts.base import PromptLearner
from kdpl.prompts.gpa import PromptAggregator
from kdpl.tpt import tune_and_predict

log = logging.getLogger(__name__)


class PromptLearningModule(ClipMethodModule):
    method_name = "prompt"

    def __init__(self, config: dict, student, learner, objective: Objective, *, classnames: list[str],
                 optim, max_epochs: int, teacher_loader: Optional[Callable] = None,
                 teacher_view: Optional[Callable] = None, fit_context: Optional[Callable] = None,
                 tpt=None):
        """``config``: the resolved run config (stored in checkpoints, not read here);
        ``learner``: built on ``student`` for ``classnames`` (the dataset's classes, evaluated);
        ``optim``: the ``optim`` section; ``teacher_loader()`` builds the frozen teacher, called
        only when fitting and only when the objective uses one; ``teacher_view(teacher)`` returns
        the module that turns the student's batch into the teacher's input (None: the same batch);
        ``fit_context(module)`` returns the objective's :class:`FitContext` (``prepare_fit``);
        ``tpt``: the ``tpt`` section when test-time prompt tuning is on (the test batches then hold
        the views of each image, ``kdpl.tpt.TPTViews``)."""
        super().__init__(config)
        self.method_name = learner.name
        self.student = student.freeze()
        self.learner = learner
        self.objective = objective
        self.optim = optim
        self.max_epochs = int(max_epochs)
        self.eval_classnames = list(classnames)
        self.train_classnames = list(objective.train_classnames())
        self._active_classes = "eval"
        self._teacher_loader = teacher_loader
        self._teacher_view = teacher_view
        self._fit_context = fit_context
        self.tpt = tpt
        # TPT takes gradient steps while testing: the Trainer must not run in inference mode.
        self.needs_grad_at_test = tpt is not None
        self._tpt_seconds, self._tpt_images, self._tpt_changed = 0.0, 0, 0
        self.teacher = None
        self.teacher_view = None
        self.register_buffer("teacher_text", torch.empty(0), persistent=False)
        self.val_scores = ClassificationScores(len(classnames))
        self.test_scores = ClassificationScores(len(classnames))
        self.predictions = PredictionRecorder()
        gpa = learner.prompt_aggregation() if objective.keeps_learner_regularization else None
        self.aggregator = PromptAggregator(self.max_epochs, *gpa) if gpa is not None else None

    # -- set-up -------------------------------------------------------------------------------
    def backbones(self):
        roles = {"student": self.student}
        if self.teacher is not None:
            roles["teacher"] = self.teacher
        return roles

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._fit_context is not None:
            # Before the optimiser is built: an objective's own learned tensors exist by then.
            self.objective.setup_fit(self._fit_context(self))
            self._attach_objective_head()
        # The teacher exists only while fitting: evaluation never pays for loading it.
        if stage == "fit" and self.objective.uses_teacher and self.teacher is None:
            self.teacher = self._teacher_loader().freeze()
            if self._teacher_view is not None:
                self.teacher_view = self._teacher_view(self.teacher)

    def _attach_objective_head(self) -> None:
        """Register the objective's learned tensors as ``objective_head`` (trained, checkpointed, exported)."""
        head = self.objective.head
        if head is not None and getattr(self, "objective_head", None) is not head:
            self.objective_head = head

    def extra_state_keys(self) -> set[str]:
        # The head's buffers (BatchNorm statistics, stored teacher features) are part of the model.
        return {f"objective_head.{k}" for k, _ in self.objective_head.named_buffers()} if self._has_head() else set()

    def _has_head(self) -> bool:
        return getattr(self, "objective_head", None) is not None

    def _active_classnames(self) -> list[str]:
        return self.train_classnames if self._active_classes == "train" else self.eval_classnames

    def add_ensemble_member(self, other: "PromptLearningModule", source) -> None:
        """Average ``other``'s evaluation logits with this module's (UPL's test-time ensemble of
        prompts trained with different seeds; the reference averages the raw logits)."""
        if not isinstance(other, PromptLearningModule):
            raise UserError(f"{source}: --ensemble takes checkpoints of prompt learners")
        if other.student.fingerprint() != self.student.fingerprint():
            raise UserError(f"{source}: trained on another student than the first checkpoint; an ensemble of "
                            "prompts shares one student")
        if self.tpt is not None:
            raise UserError("--ensemble with tpt.enabled=true: TPT tunes one learner's prompts")
        other.learner.set_classnames(self.eval_classnames)
        other._active_classes = "eval"
        if not hasattr(self, "ensemble"):
            self.ensemble = torch.nn.ModuleList()
            self._ensemble_objectives = []
        self.ensemble.append(other.learner)
        self._ensemble_objectives.append(other.objective)
        if other._has_head():
            self.ensemble.append(other.objective_head)  # moved to the device with the module

    def _eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        classnames = self._active_classnames()
        logits = self.objective.eval_logits(self.learner, images, classnames)
        if not hasattr(self, "ensemble"):
            return logits
        learners = [m for m in self.ensemble if isinstance(m, PromptLearner)]
        members = [objective.eval_logits(learner, images, classnames)
                   for learner, objective in zip(learners, self._ensemble_objectives)]
        return torch.stack([logits, *members]).mean(dim=0)

    def on_fit_start(self) -> None:
        # After the model is on its device, before the training loader is built (UPL replaces
        # the training images by its pseudo-labelled ones here, on a resumed fit too).
        if self._fit_context is not None:
            self.objective.prepare_fit(self._fit_context(self))
        super().on_fit_start()

    def _use_classes(self, which: str) -> None:
        if self._active_classes != which:
            self.learner.set_classnames(self.train_classnames if which == "train" else self.eval_classnames)
            self._active_classes = which

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Per batch, not per epoch: a run resumed mid-epoch gets no on_train_epoch_start, and
        # validation in between switched to the evaluation classes. A no-op when already set.
        self._use_classes("train")
        if self.teacher is not None:
            self._teacher_text()  # built once, with the fp32 weights, before the step's copies
        super().on_train_batch_start(batch, batch_idx)

    def on_validation_start(self) -> None:
        self._use_classes("eval")

    def on_test_start(self) -> None:
        self._use_classes("eval")

    def _teacher_text(self) -> torch.Tensor:
        """The teacher's text features of the objective's prompts (raw; normalised at use)."""
        if self.teacher_text.numel() == 0:
            cache = getattr(self.objective.settings, "text_cache_dir", None)
            feats = cached_text_features(self.teacher, self.objective.teacher_prompts(), cache)
            self.teacher_text = feats.to(self.device)
        return self.teacher_text

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits over the objective's classes (the teacher is frozen: no graph)."""
        scale = self.student if self.objective.teacher_logit_scale == "student" else self.teacher
        with torch.no_grad():
            if self.teacher_view is not None:
                images = self.teacher_view(images)
            return teacher_logits(self.teacher.encode_image(images), self._teacher_text(), scale.logit_scale)

    def mean_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1:
            return self.all_gather(tensor).mean(dim=0)
        return tensor

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        images, labels = batch["image"], batch["label"]
        step = TrainingStep(self.learner, images, labels,
                            self.teacher_logits if self.teacher is not None else None, self.mean_over_ranks)
        result = self.objective.training_loss(step)
        reg, parts = (self.learner.regularization_loss(result.output) if self.objective.keeps_learner_regularization
                      else (0.0, {}))
        loss = result.loss + reg
        logs = {**result.logs, **{f"train/{k}": v.detach() for k, v in parts.items()}}
        self.watch_loss(loss, logs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(images))
        same_classes = self.train_classnames == self.eval_classnames
        scores_eval_classes = result.output.logits.shape[-1] == len(self.eval_classnames)
        if same_classes and scores_eval_classes and self.objective.batch_labels_are_true:
            # Accuracy on the training batch (a metric only: KDPL's loss never reads the labels).
            # Objectives that train on other classes (KDPL-CA's dictionary) have none to report.
            logs["train/acc"] = (result.output.logits.detach().argmax(-1) == labels).float().mean()
        self.log_dict(logs, batch_size=len(images))
        return loss

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.aggregator is not None:
            self.aggregator.update(self.current_epoch + 1, self.learner.learned_state())

    def on_train_end(self) -> None:
        if self.aggregator is not None and self.aggregator.complete:
            like = self.learner.learned_state()
            self.learner.load_learned_state(self.aggregator.aggregate(like=like))
            log.info("loaded the Gaussian prompt aggregate over %d epochs", self.aggregator.epochs)

    def configure_optimizers(self):
        params = list(self.learner.parameters())
        if self._has_head():
            params += list(self.objective_head.parameters())
        return optimizer_with_schedule({"prompt": params}, self.optim, self.max_epochs, self.trainer.max_steps)

    # -- evaluation -----------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        if batch is not None:  # None: every image of the batch was corrupt and skipped
            classification_eval_step(self, self.val_scores, self._eval_logits(batch["image"]), batch, "val")

    def on_test_epoch_start(self) -> None:
        self.predictions.clear()
        self._tpt_seconds, self._tpt_images, self._tpt_changed = 0.0, 0, 0

    def test_step(self, batch, batch_idx):
        if batch is None:
            return
        images = batch["image"]
        logits = self._tpt_logits(images) if self.tpt is not None else self._eval_logits(images)
        classification_eval_step(self, self.test_scores, logits, batch, "test", self.predictions)

    def _tpt_logits(self, views: torch.Tensor) -> torch.Tensor:
        """``views``: ``[B, V, 3, H, W]``, each image's original view first; tuned per image."""
        rows = []
        for image_views in views:
            started = time.perf_counter()
            with torch.no_grad():
                before = self.learner(image_views[:1]).logits.argmax(-1)
            tuned = tune_and_predict(self.learner, image_views, steps=self.tpt.steps, lr=self.tpt.lr,
                                     selection=self.tpt.selection)
            self._tpt_seconds += time.perf_counter() - started
            self._tpt_images += 1
            self._tpt_changed += int((tuned.argmax(-1) != before).item())
            rows.append(tuned)
        return torch.cat(rows)

    def on_test_epoch_end(self) -> None:
        if self.tpt is not None and self._tpt_images:
            # Summed over ranks: the images are split across them.
            totals = torch.tensor([self._tpt_seconds, self._tpt_images, self._tpt_changed], dtype=torch.float64,
                                  device=self.device)
            if self.trainer.world_size > 1:
                totals = self.all_gather(totals).sum(dim=0)
            seconds, images, changed = totals.tolist()
            self.log("test/tpt_seconds_per_image", seconds / images, sync_dist=False)
            self.log("test/tpt_changed_predictions", changed / images, sync_dist=False)

    # -- checkpoints and export ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["objective_state"] = self.objective.extra_state()
        if self.aggregator is not None:
            checkpoint["gpa"] = self.aggregator.state_dict()
            if self.aggregator.complete:
                # The last epoch's checkpoint holds the model that is evaluated and exported (the
                # aggregate), so evaluating last.ckpt on other classes scores the same prompts.
                aggregate = self.aggregator.aggregate(like=self.learner.learned_state())
                checkpoint["state_dict"].update({f"learner.{k}": v for k, v in aggregate.items()})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if any(k.startswith("objective_head.") for k in checkpoint.get("state_dict", {})):
            self.objective.restore_head(checkpoint["state_dict"], checkpoint.get("objective_state", {}))
            self._attach_objective_head()
        super().on_load_checkpoint(checkpoint)
        if self.aggregator is not None and "gpa" in checkpoint:
            self.aggregator.load_state_dict(checkpoint["gpa"])

    def export_state(self):
        tensors = {f"learner.{k}": v for k, v in self.learner.learned_state().items()}
        if self._has_head():
            head = self.objective_head.state_dict()
            tensors.update({f"objective_head.{k}": v.detach().clone() for k, v in head.items()})
        metadata = {"learner": self.method_name, "prompt": self.config["prompt"],
                    "student": self.config["student"], "train_classnames": self.train_classnames,
                    "objective_state": self.objective.extra_state()}
        return tensors, metadata

    def load_export(self, tensors: dict, metadata: dict) -> None:
        prefix = "learner."
        self.learner.load_learned_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        head = "objective_head."
        if any(k.startswith(head) for k in tensors):
            self.objective.restore_head(tensors, metadata.get("objective_state", {}))
            self._attach_objective_head()
            self.objective_head.load_state_dict({k[len(head):]: v for k, v in tensors.items() if k.startswith(head)})

