"""The GCD LightningModule: SpectralGCD (concept representations + teacher distillation) and
SimGCD-style training of a CLIP student's last vision blocks (spectralgcd spec §3-§5, §7).

spectralgcd: f = student image feature; s = norm(f)·norm(T_s)ᵀ/τ over the K concepts (T_s: the
student's own text features of the concept prompts, fixed); u = ln_t(s); (p, ℓ) = head(u).
simgcd: u = f directly. Losses: ``gcd.losses.gcd_total_loss`` (+ forward/reverse KL between s
and the cached teacher representations for spectralgcd). Evaluation: argmax of ℓ, v2/v1
Hungarian accuracy on [unlabelled train (transductive), test (inductive)].
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.utilities.data import dim_zero_cat

from clipcore.errors import list_difference
from clipcore.export import ExportError
from clipcore.module import ClipMethodModule
from clipcore.schedule import optimizer_with_schedule
from clipcore.teacher import cached_text_features
from gcd.datamodule import LABELLED_INDEX_KEY
from gcd.heads import ConceptProjection, DINOHead
from gcd.losses import GCDLoss
from gcd.metrics import GCDAccuracy, confusion_matrix, matched_predictions, plot_confusion

log = logging.getLogger(__name__)

EVAL_SPLITS = ("transductive", "inductive")  # = gcd.data.VAL_LOADER_NAMES (unlabelled, test)


class GCDModule(ClipMethodModule):
    method_name = "gcd"

    def __init__(self, config: dict, student, *, method: str, settings, loss: GCDLoss, optim, max_epochs: int,
                 classnames: list[str], n_old: int, concepts: Optional[list[str]] = None,
                 prompts: Optional[list[str]] = None, normalization: str = "imagenet",
                 teacher_representations: Optional[Callable[[], torch.Tensor]] = None):
        """``config``: the resolved run config (stored in checkpoints, not read here);
        ``settings``: the ``gcd`` section (model and evaluation settings); ``loss``: the objective
        built from ``gcd.loss``; ``optim``: the ``optim`` section. ``concepts``/``prompts``: the
        concept list and its filled prompts (spectralgcd; None for simgcd).
        ``teacher_representations()`` returns the cached ``[N_train, K]`` teacher tensor; it is
        called once, when fitting (None: no distillation)."""
        super().__init__(config)
        self.method_name = method
        self.settings = settings
        self.loss = loss
        self.optim = optim
        self.max_epochs = int(max_epochs)
        self.normalization = normalization
        self.student = student.freeze().unfreeze_last_vision_blocks(settings.trainable_blocks)
        # Fingerprint of the pretrained weights, taken before any training step changes them:
        # a resume or an export import rebuilds the same student and must match it.
        self.student.fingerprint()
        self.grad_from_block = self.student.n_vision_blocks - settings.trainable_blocks
        self.classnames, self.n_old = list(classnames), int(n_old)
        self.concepts = list(concepts) if concepts is not None else None
        self.prompts = list(prompts) if prompts is not None else None
        self.spectral = self.concepts is not None
        if self.spectral:
            if len(self.prompts) != len(self.concepts) or not self.concepts:
                raise ValueError(f"{len(self.concepts)} concepts but {len(self.prompts)} prompts")
            self.ln_t = ConceptProjection(len(self.concepts), settings.feature_dim)
            head_dim = settings.feature_dim
        else:
            self.ln_t = None
            head_dim = self.student.embed_dim
        self.head = DINOHead(head_dim, len(self.classnames), hidden_dim=settings.head_hidden_dim,
                             bottleneck_dim=settings.head_bottleneck_dim)
        self._teacher_representations = teacher_representations
        self.distill = self.spectral and teacher_representations is not None
        # Derived tensors, rebuilt on demand and moved with the module; never checkpointed and
        # not broadcast by DDP at every step (each rank holds the same values).
        self.register_buffer("concept_text", torch.empty(0), persistent=False)
        self.register_buffer("teacher_reps", torch.empty(0), persistent=False)
        self._ddp_params_and_buffers_to_ignore = ["concept_text", "teacher_reps"]
        self.val_metrics = nn.ModuleList([GCDAccuracy() for _ in EVAL_SPLITS])
        self.test_metrics = nn.ModuleList([GCDAccuracy() for _ in EVAL_SPLITS])

    def backbones(self):
        return {"student": self.student}

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or not self.distill or self.teacher_reps.numel():
            return
        trainer = self._trainer
        distributed = trainer is not None and trainer.world_size > 1
        # Rank 0 fills the cache first; the other ranks then read it.
        if distributed and not trainer.is_global_zero:
            trainer.strategy.barrier("gcd_teacher_cache")
        # Loading the teacher and a cache miss draw from the global generator (weight init,
        # loader seeds); forking keeps the training draws the same with or without a cache hit.
        with torch.random.fork_rng(devices=[]):
            reps = self._teacher_representations()
        if distributed and trainer.is_global_zero:
            trainer.strategy.barrier("gcd_teacher_cache")
        if reps.shape[1] != len(self.concepts):
            raise ValueError(f"teacher representations have {reps.shape[1]} concepts, "
                             f"the student {len(self.concepts)}")
        self.teacher_reps = reps.to(self.device)

    @torch.no_grad()
    def concept_text_features(self) -> torch.Tensor:
        """Normalised fp32 student text features of the concept prompts ``[K, D]`` (fixed:
        the text tower is frozen), computed once on the module's device."""
        if self.concept_text.numel() == 0:
            with torch.autocast(self.device.type, enabled=False):
                feats = cached_text_features(self.student, self.prompts, self._text_cache_dir())
            self.concept_text = F.normalize(feats.float(), dim=-1).to(self.device)
        return self.concept_text

    def _text_cache_dir(self) -> Optional[Path]:
        root = self.settings.teacher_cache_dir
        return Path(root) / "text_features" if root else None

    # -- forward ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``rep`` (s, spectralgcd only), ``proj`` (p) and ``logits`` (ℓ, cosines) per image."""
        features = self.student.encode_image_blocks(images, grad_from_block=self.grad_from_block)
        out = {}
        if self.spectral:
            text = self.concept_text_features()
            # Cosines scaled by 1/τ = 100: kept in fp32 even under mixed precision.
            with torch.autocast(features.device.type, enabled=False):
                rep = F.normalize(features.float(), dim=-1) @ text.t() / self.settings.tau
            out["rep"] = rep
            features = self.ln_t(rep)
        out["proj"], out["logits"] = self.head(features)
        return out

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["images"]
        views = images.shape[1]
        out = self(torch.cat(images.unbind(1)))  # [view1; view2]
        teacher = None
        if self.distill:
            teacher = self.teacher_reps[batch["index"].to(self.teacher_reps.device)].float()
            teacher = teacher.repeat(views, 1)  # the centre-crop representation for every view
        return self.loss(out["proj"], out["logits"], batch["label"], batch["is_labelled"],
                         self.current_epoch, student_rep=out.get("rep") if self.distill else None,
                         teacher_rep=teacher, labelled_index=batch.get(LABELLED_INDEX_KEY))

    def training_step(self, batch, batch_idx):
        terms = self.compute_losses(batch)
        loss = terms["loss"]
        self.watch_loss(loss, {k: v for k, v in terms.items() if k != "loss"})
        n = batch["label"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, batch_size=n)
        self.log("train/labelled_fraction", batch["is_labelled"].float().mean(), batch_size=n)
        return loss

    def configure_optimizers(self):
        # Weight decay on every trainable tensor, biases and norms included (spec §5).
        groups = {"backbone": list(self.student.parameters()), "head": list(self.head.parameters())}
        if self.ln_t is not None:
            groups["ln_t"] = list(self.ln_t.parameters())
        return optimizer_with_schedule(groups, self.optim, self.max_epochs, self.trainer.max_steps)

    # -- evaluation -----------------------------------------------------------------------------
    def _eval_step(self, batch, metrics: nn.ModuleList, dataloader_idx: int) -> None:
        if batch is None:  # every image of the batch was corrupt and skipped (data.skip_corrupt)
            return
        logits = self(batch["image"])["logits"]
        metrics[dataloader_idx].update(logits.argmax(dim=1), batch["label"], batch["is_old"])

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(batch, self.val_metrics, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(batch, self.test_metrics, dataloader_idx)

    def _log_eval(self, metrics: nn.ModuleList, stage: str, plot: bool) -> None:
        for split, metric in zip(EVAL_SPLITS, metrics):
            if metric.update_count == 0:
                continue
            values = metric.compute()
            # Already computed over every rank's predictions: the values agree across ranks, and
            # sync_dist only averages identical numbers (it silences Lightning's warning).
            self.log_dict({f"{stage}/{split}/{k}": v for k, v in values.items()}, sync_dist=True)
            if plot and self.settings.confusion_plots:
                self._plot_confusion(metric, f"{stage}_{split}")
            metric.reset()

    def _plot_confusion(self, metric: GCDAccuracy, tag: str) -> None:
        with metric.sync_context(should_sync=True, should_unsync=True):  # collective: every rank
            preds, targets = dim_zero_cat(metric.preds), dim_zero_cat(metric.targets)
        if not self.trainer.is_global_zero:
            return
        matched = matched_predictions(targets, preds)
        cm = confusion_matrix(targets, matched, num_classes=len(self.classnames))
        path = Path(self.trainer.default_root_dir) / "eval" / f"confusion_{tag}.png"
        plot_confusion(cm, path, num_old=self.n_old, class_names=self.classnames,
                       title=f"{self.method_name} {tag} (Hungarian-matched)")

    def on_validation_epoch_end(self) -> None:
        last = self.current_epoch + 1 >= self.trainer.max_epochs and not self.trainer.sanity_checking
        self._log_eval(self.val_metrics, "val", plot=last)

    def on_test_epoch_end(self) -> None:
        self._log_eval(self.test_metrics, "test", plot=True)

    # -- export ---------------------------------------------------------------------------------
    def export_state(self):
        """The student's full visual tower (trained blocks merged in, open_clip state-dict names
        under ``student.visual.``), ``ln_t``, ``head`` and the concept text features."""
        tensors = {f"student.visual.{k}": v for k, v in self.student.model.visual.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        if self.spectral:
            tensors.update({f"ln_t.{k}": v for k, v in self.ln_t.state_dict().items()})
            tensors["concept_text"] = self.concept_text_features()
        metadata = {"concepts": self.concepts, "prompts": self.prompts, "classnames": self.classnames,
                    "n_old": self.n_old, "student": self.config["student"], "tau": self.settings.tau,
                    "feature_dim": self.settings.feature_dim, "normalization": self.normalization}
        return tensors, metadata

    def load_export(self, tensors: dict, metadata: dict) -> None:
        if metadata.get("concepts") != self.concepts:
            raise ExportError("the export was trained on another concept list than this configuration builds "
                              "(gcd.concepts_csv / gcd.dictionary; its list is in export.json): "
                              + list_difference(metadata.get("concepts") or [], self.concepts or []))
        exported = list(metadata.get("classnames", self.classnames))
        if exported != self.classnames:
            raise ExportError("the export's classes differ from this dataset's (export.json 'classnames' "
                              "vs data.name / data.root): " + list_difference(exported, self.classnames))

        def part(prefix: str) -> dict:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.student.model.visual.load_state_dict(part("student.visual."))
        self.head.load_state_dict(part("head."))
        if self.spectral:
            self.ln_t.load_state_dict(part("ln_t."))
            self.concept_text = tensors["concept_text"].float().to(self.device)
