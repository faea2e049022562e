"""UPL (Huang, Chu, Wei, "Unsupervised Prompt Learning for Vision-Language Models";
tonyhuang2022/UPL): prompt learning with cross-entropy on zero-shot pseudo-labels.

Before training, the labelling models (the frozen student by default, as the reference's
``PSEUDO_LABEL_MODELS: ['RN50']`` with an RN50 student; several for UPL*) score every training
image zero-shot with the dataset's template; each class keeps its ``data.num_shots`` most
confident images (``kdpl.pseudo_labels``: the reference's ``NUM_SHOTS``, 16) and the learner
trains on them with their pseudo-labels. The true labels are read only to report the
pseudo-labels' accuracy (logged and written to ``pseudo_labels.csv``), never for training.
The pseudo-labels are cached keyed by every labeller's weights fingerprint and input, the
templates, the class names and the image list.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from clipcore.data.corrupt import collate_for
from clipcore.data.dataset import ImageDataset
from clipcore.teacher import load_or_compute
from clipcore.templates import resolve_templates
from clipcore.zeroshot import ensembled_text_features
from kdpl.objectives.base import FitContext
from kdpl.objectives.registry import register_objective
from kdpl.objectives.supervised import Supervised
from kdpl.pseudo_labels import PseudoLabels, average_probabilities, select_top_k_per_class, zero_shot_probabilities

log = logging.getLogger(__name__)

PSEUDO_LABELS_FILE = "pseudo_labels.csv"


@dataclass
class UPLConfig:
    name: str = "upl"
    # Zero-shot models whose softmax probabilities are averaged: "student", "teacher" or a model
    # section ({name, pretrained, config, preprocess}); several = the paper's UPL*.
    labellers: list = field(default_factory=list)
    # The labellers' templates: null = the dataset's (the reference's CUSTOM_TEMPLATES), a
    # template, a list, or a set name (imagenet80 ...), ensembled as zero-shot does.
    templates: Optional[Any] = None
    # Folder of cached pseudo-labels (default: <cache root>/upl_pseudo_labels).
    cache_dir: Optional[str] = None


@register_objective("upl", config=UPLConfig)
class UPL(Supervised):
    samples_training_shots = False
    batch_labels_are_true = False

    def __init__(self, settings, classnames: list[str], dataset_template: str):
        super().__init__(settings, classnames, dataset_template)
        spec = self.settings.templates
        spec = list(spec) if not isinstance(spec, (str, type(None))) else spec
        self.templates = resolve_templates(spec, dataset_template, "objective.templates")
        self.labellers = list(self.settings.labellers) or ["student"]
        self.pseudo_labels: Optional[PseudoLabels] = None

    def training_loss(self, step):
        result = super().training_loss(step)
        result.logs["train/pseudo_label_fit"] = (result.output.logits.detach().argmax(-1) == step.labels).float().mean()
        return result

    # -- pseudo-labelling ------------------------------------------------------------------
    def prepare_fit(self, context: FitContext) -> None:
        datamodule = context.datamodule
        candidates = list(datamodule.splits.train)
        confidence, predicted = self._scores(context, candidates)
        k = -1 if context.num_shots is None else int(context.num_shots)
        selected = select_top_k_per_class(confidence, predicted, k)
        true_labels = torch.tensor([d.label for d in candidates])
        self._report(context, candidates, selected, true_labels, k)
        names = self.train_classnames()
        pseudo = [dataclasses.replace(candidates[p], label=int(c), classname=names[int(c)])
                  for p, c in zip(selected.positions.tolist(), selected.labels.tolist())]
        datamodule.splits = dataclasses.replace(datamodule.splits, train=pseudo)
        self.pseudo_labels = selected

    def _scores(self, context: FitContext, candidates: list) -> tuple[torch.Tensor, torch.Tensor]:
        datamodule = context.datamodule
        encoders = {}

        def encoder(spec):
            key = spec if isinstance(spec, str) else repr(sorted(dict(spec).items()))
            if key not in encoders:
                encoders[key] = context.student if spec == "student" else context.load_encoder(spec).freeze()
                encoders[key].to(context.device)
            return encoders[key]

        def preprocess(spec) -> str:
            return "data" if isinstance(spec, str) else str(dict(spec).get("preprocess", "data"))

        parts = {"labellers": [{"fingerprint": encoder(s).fingerprint(), "preprocess": preprocess(s)}
                               for s in self.labellers],
                 "templates": self.templates, "classnames": self.train_classnames(),
                 "images": hashlib.sha256("\n".join(d.path for d in candidates).encode()).hexdigest(),
                 "count": len(candidates), "transform": repr(datamodule.eval_transform)}

        def compute() -> dict[str, torch.Tensor]:
            items = [dataclasses.replace(d, index=i) for i, d in enumerate(candidates)]
            loader = DataLoader(ImageDataset(items, datamodule.eval_transform, skip_corrupt=datamodule.skip_corrupt),
                                batch_size=datamodule.eval_batch_size, num_workers=datamodule.num_workers,
                                collate_fn=collate_for("train", datamodule.skip_corrupt))
            probabilities = []
            for spec in self.labellers:
                model = encoder(spec)
                text = ensembled_text_features(model, self.templates, self.train_classnames())
                log.info("UPL: zero-shot pseudo-labelling %d images with %s", len(items), model.name)
                probabilities.append(zero_shot_probabilities(model, text, loader, len(items),
                                                             context.input_view(model, preprocess(spec))))
            confidence, predicted = average_probabilities(probabilities)
            return {"confidence": confidence, "predicted": predicted}

        cached = load_or_compute("upl_pseudo_labels", parts, compute, self.settings.cache_dir)
        return cached["confidence"], cached["predicted"]

    def _report(self, context: FitContext, candidates: list, selected: PseudoLabels, true_labels: torch.Tensor,
                k: int) -> None:
        names = self.train_classnames()
        counts = selected.per_class_counts(len(names))
        short = [names[i] for i in range(len(names)) if k >= 0 and counts[i] < k]
        accuracy = selected.accuracy(true_labels)
        log.info("UPL: %d pseudo-labelled training images (%s per class), pseudo-label accuracy %.2f%%",
                 len(selected.positions), "all" if k < 0 else k, 100 * accuracy)
        if short:
            log.warning("UPL: %d classes have fewer than %d pseudo-labelled images (the reference keeps what "
                        "there is): %s", len(short), k, ", ".join(short[:20]) + (" ..." if len(short) > 20 else ""))
        context.log_metrics({"train/pseudo_label_acc": accuracy,
                             "train/pseudo_labelled_images": len(selected.positions),
                             "train/pseudo_label_classes_short": len(short)})
        if context.is_main_process and context.run_dir is not None:
            with open(context.run_dir / PSEUDO_LABELS_FILE, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "pseudo_label", "confidence", "true_label"])
                for p, c, conf in zip(selected.positions.tolist(), selected.labels.tolist(),
                                      selected.confidence.tolist()):
                    writer.writerow([candidates[p].path, names[c], f"{conf:.6f}", candidates[p].classname])

