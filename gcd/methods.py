"""Registers ``method: spectralgcd`` and ``method: simgcd``, and the helpers the GCD commands share
(datamodule and concept list from a config)."""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from clipcore.assets import load_dictionary, merge_concepts, sha256_of
from clipcore.build import backbone_from_config, encoder_from_config, uses_own_preprocessing
from clipcore.config import ConfigError, to_plain
from clipcore.data import DataError
from clipcore.registry import register_method
from gcd.config import GCD_METHODS, concept_prompts, memax_weight, prompt_template
from gcd.data import GCDDataModule, GCDSplits, read_gcd_splits
from gcd.losses import GCDLoss
from gcd.module import GCDModule
from gcd.teacher_cache import teacher_representations

log = logging.getLogger(__name__)


def gcd_splits(cfg) -> GCDSplits:
    d = cfg.data
    return read_gcd_splits(d.name, d.root, prop_train_labels=d.prop_train_labels, seed=cfg.seed,
                           split_follows_seed=d.split_follows_seed)


def gcd_datamodule(cfg, image_size: int, splits: GCDSplits | None = None) -> GCDDataModule:
    """``splits``: already read (:func:`build_gcd` reads them before loading a model)."""
    d = cfg.data
    return GCDDataModule(
        splits if splits is not None else gcd_splits(cfg), seed=cfg.seed, image_size=image_size,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size, num_workers=d.num_workers, normalization=d.normalization,
        pin_memory=torch.cuda.is_available(), persistent_workers=d.num_workers > 0,
        skip_corrupt=d.skip_corrupt, max_corrupt_fraction=d.max_corrupt_fraction,
        pipeline=d.pipeline, cache_memory_fraction=d.cache_memory_fraction)


def read_concepts(name_or_path: str, key: str) -> list[str]:
    """A ``ClassName`` CSV from a path, else from the asset store (e.g. the Tags dictionary)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        _warn_if_edited_since_filtering(path)
    elif key == "gcd.concepts_csv":
        raise DataError(f"gcd.concepts_csv={name_or_path}: no such file; write it with `python -m gcd.filter` "
                        f"(same config), or leave gcd.concepts_csv unset to train on gcd.dictionary")
    return load_dictionary(name_or_path, key)


def _warn_if_edited_since_filtering(csv_path: Path) -> None:
    """``gcd.filter`` records the sha256 of the concept CSV it wrote in ``filter.json`` beside it."""
    summary_path = csv_path.parent / "filter.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return
    expected = summary.get("concepts_sha256") if summary.get("concepts_csv") == str(csv_path) else None
    if expected and expected != sha256_of(csv_path):
        log.warning("%s differs from the list gcd.filter wrote (%s records another sha256): it was edited "
                    "or damaged since; training on it as it is now", csv_path, summary_path)


def training_concepts(section, old_classnames: list[str]) -> list[str]:
    """The filtered list (or the whole dictionary), de-duplicated case-insensitively, with the
    known class names appended when missing (spec §2: always in the training dictionary)."""
    if section.concepts_csv:
        return merge_concepts(read_concepts(section.concepts_csv, "gcd.concepts_csv"), old_classnames)
    return merge_concepts(read_concepts(section.dictionary, "gcd.dictionary"), old_classnames)


def teacher_normalization(cfg, teacher) -> dict:
    """GCDDataModule arguments of the teacher's statistics: data.normalization (the reference),
    or with ``teacher.preprocess: model`` the teacher's own mean and std."""
    if uses_own_preprocessing(cfg.teacher, "teacher"):
        return {"normalization": tuple(teacher.image_mean), "std": tuple(teacher.image_std)}
    return {"normalization": cfg.data.normalization}


def device_for_teacher(cfg) -> torch.device:
    wants_gpu = cfg.trainer.accelerator in ("gpu", "cuda", "auto")
    return torch.device("cuda") if wants_gpu and torch.cuda.is_available() else torch.device("cpu")


def teacher_representation_loader(cfg, datamodule: GCDDataModule, prompts: list[str]):
    """A function that loads the teacher, returns the cached representations, and frees it."""

    def load() -> torch.Tensor:
        teacher = encoder_from_config(cfg.teacher).freeze()
        # The teacher sees the test transform at its own input size.
        teacher_dm = GCDDataModule(datamodule.splits, image_size=teacher.image_size,
                                   eval_batch_size=cfg.data.eval_batch_size,
                                   num_workers=cfg.data.num_workers, **teacher_normalization(cfg, teacher),
                                   pin_memory=torch.cuda.is_available(), skip_corrupt=cfg.data.skip_corrupt,
                                   max_corrupt_fraction=cfg.data.max_corrupt_fraction)
        teacher_dm.setup("fit")
        try:
            return teacher_representations(
                teacher, prompts, teacher_dm.train_eval_dataloader(), datamodule.splits.train,
                tau=cfg.gcd.tau, dataset=cfg.data.name, image_source=datamodule.splits.image_source,
                cache_dir=cfg.gcd.teacher_cache_dir, dtype=cfg.gcd.teacher_cache_dtype,
                device=device_for_teacher(cfg),
                skipped=teacher_dm.corrupt.record if teacher_dm.corrupt is not None else None)
        finally:
            del teacher
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    return load


def gcd_loss(cfg) -> GCDLoss:
    """The objective of the ``gcd.loss`` section (memax weight: the reference's per dataset)."""
    settings = OmegaConf.to_object(cfg.gcd.loss)
    return GCDLoss(dataclasses.replace(settings, memax_weight=memax_weight(settings, cfg.data.name)))


def gcd_module(cfg, student, classnames: list[str], n_old: int, **kwargs) -> GCDModule:
    return GCDModule(to_plain(cfg), student, method=cfg.method, settings=cfg.gcd, loss=gcd_loss(cfg),
                     optim=cfg.optim, max_epochs=cfg.trainer.max_epochs, classnames=classnames,
                     n_old=n_old, normalization=cfg.data.normalization, **kwargs)


def build_gcd(cfg):
    splits = gcd_splits(cfg)  # the data first: a wrong dataset fails before a model loads (or downloads)
    student = backbone_from_config(cfg.student)
    if not 0 <= cfg.gcd.trainable_blocks <= (student.n_vision_blocks or 0):
        raise ConfigError(f"gcd.trainable_blocks={cfg.gcd.trainable_blocks}: expected 0 to the student's "
                          f"{student.n_vision_blocks} vision blocks")
    datamodule = gcd_datamodule(cfg, cfg.data.image_size or student.image_size, splits)
    kwargs = {}
    if cfg.method == "spectralgcd":
        concepts = training_concepts(cfg.gcd, datamodule.splits.old_classnames)
        prompts = concept_prompts(prompt_template(cfg.gcd, cfg.data.name), concepts)
        kwargs = {"concepts": concepts, "prompts": prompts}
        if cfg.gcd.distill:
            kwargs["teacher_representations"] = teacher_representation_loader(cfg, datamodule, prompts)
    return gcd_module(cfg, student, datamodule.classnames, datamodule.n_old, **kwargs), datamodule


for _name in GCD_METHODS:
    register_method(_name)(build_gcd)
