"""Every prompt learner x every objective through the real entry points, on the tiny CLIPs.

Each cell composes the shipped ``configs/method`` and ``configs/objective`` files with test
overrides, trains two steps, resumes from ``last.ckpt`` for the second epoch, and checks that the
export reproduces the checkpoint's logits. Separate tests check the KDPL-specific promises:
labels are never read, KDPL-CA trains on the dictionary but evaluates on the dataset's classes,
eval-only runs never load the teacher, and teacher text features are cached on disk.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from training_helpers import (
    CLASSES,
    DICTIONARY,
    epochs_done,
    prompt_method_files,
    prompt_overrides,
    tiny_dataset,
    write_class_dictionary,
)

from clipcore import runner
from clipcore.config import load_config
from clipcore.data.datamodule import ClassificationDataModule
from clipdistill.app import register_methods

register_methods()

from kdpl import methods as kdpl_methods  # noqa: E402
from kdpl.config import declared_learners, declared_objectives  # noqa: E402
from kdpl.module import PromptLearningModule  # noqa: E402

# The registries, read from the learner and objective files: a new one is covered unedited.
LEARNERS = sorted(declared_learners())
OBJECTIVES = sorted(declared_objectives())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory) -> Path:
    return write_class_dictionary(tmp_path_factory.mktemp("dict") / "dictionary.csv")


def make_config(tmp_path, data, dictionary, learner="coop", objective="supervised", **extra):
    return load_config(prompt_method_files(learner, objective),
                       prompt_overrides(data, tmp_path / "runs", dictionary, tmp_path / "cache", learner, objective,
                                        **extra))


def last_ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("learner", LEARNERS)
def test_train_resume_export(tmp_path, data, dictionary, learner, objective):
    # Stopped after the first epoch (2 steps), as a pre-empted job would be.
    part = runner.train(make_config(tmp_path, data, dictionary, learner, objective, trainer__max_steps=2))
    assert epochs_done(last_ckpt(part)) == 1
    resumed = runner.train(make_config(tmp_path, data, dictionary, learner, objective,
                                       resume=str(part / "checkpoints" / "last.ckpt"),
                                       resume_allow="[trainer.max_steps]"))
    assert resumed == part
    ckpt = last_ckpt(part)
    assert ckpt["global_step"] == 4 and epochs_done(ckpt) == 2
    # The learner's tensors, and the objective's own when it has some (PromptKD's projector).
    assert ckpt["state_dict"] and all(k.startswith(("learner.", "objective_head.")) for k in ckpt["state_dict"])
    assert any(k.startswith("learner.") for k in ckpt["state_dict"])
    assert 0.0 <= json.loads((part / "eval" / "metrics.json").read_text())["test/acc"] <= 1.0

    _, trained, dm = runner.module_from_checkpoint(part / "checkpoints" / "last.ckpt")
    # The first attempt exported its 2-step model too; the resumed run wrote `final-2`.
    assert sorted(p.name for p in (part / "exports").iterdir()) == ["final", "final-2"]
    _, imported, _ = runner.module_from_export(part / "exports" / "final-2")
    assert trained.teacher is None and imported.teacher is None
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    trained.eval(), imported.eval()
    classes = trained.eval_classnames
    with torch.no_grad():
        expected = trained.objective.eval_logits(trained.learner, batch["image"], classes)
        torch.testing.assert_close(imported.objective.eval_logits(imported.learner, batch["image"], classes), expected)
    assert expected.shape == (len(batch["image"]), len(CLASSES))


class _NoLabels(Dataset):
    """The training items with every label replaced by -1."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {**self.dataset[i], "label": -1}


def _hide_labels(monkeypatch):
    original = ClassificationDataModule.train_dataloader

    def without_labels(self):
        loader = original(self)
        return DataLoader(_NoLabels(loader.dataset), batch_size=loader.batch_size, sampler=loader.sampler,
                          num_workers=0, drop_last=loader.drop_last)

    monkeypatch.setattr(ClassificationDataModule, "train_dataloader", without_labels)


@pytest.mark.parametrize("objective", ["kdpl", "kdpl_ca"])
def test_kdpl_never_reads_labels(tmp_path, data, dictionary, monkeypatch, objective):
    quick = {"trainer__max_epochs": 1}
    with_labels = runner.train(make_config(tmp_path / "a", data, dictionary, "coop", objective, **quick))
    _hide_labels(monkeypatch)
    without = runner.train(make_config(tmp_path / "b", data, dictionary, "coop", objective, **quick))
    a, b = last_ckpt(with_labels)["state_dict"], last_ckpt(without)["state_dict"]
    torch.testing.assert_close(a["learner.ctx"], b["learner.ctx"], rtol=0, atol=0)
    # The patch does hide the labels: cross-entropy cannot train on them.
    with pytest.raises(Exception, match="out of bounds|Target -1"):
        runner.train(make_config(tmp_path / "c", data, dictionary, "coop", "supervised", **quick))


def test_kdpl_ca_trains_on_dictionary_and_evaluates_on_dataset(tmp_path, data, dictionary, monkeypatch):
    seen = {"train": set(), "selected": set(), "eval": set()}
    from kdpl.objectives.kdpl_ca import KDPLCA

    train_step, test_step = PromptLearningModule.training_step, PromptLearningModule.test_step
    validation_step = PromptLearningModule.validation_step
    select = KDPLCA.select_classes

    def record_train(self, batch, batch_idx):
        seen["train"].add(tuple(self.learner.classnames))
        return train_step(self, batch, batch_idx)

    def record_select(self, teacher_logits, step):
        assert teacher_logits.shape[1] == len(DICTIONARY)
        chosen = select(self, teacher_logits, step)
        seen["selected"].add(chosen.numel())
        return chosen

    def recording(step):
        def record_eval(self, batch, batch_idx):
            seen["eval"].add(tuple(self.learner.classnames))
            return step(self, batch, batch_idx)
        return record_eval

    monkeypatch.setattr(PromptLearningModule, "training_step", record_train)
    monkeypatch.setattr(KDPLCA, "select_classes", record_select)
    monkeypatch.setattr(PromptLearningModule, "test_step", recording(test_step))
    monkeypatch.setattr(PromptLearningModule, "validation_step", recording(validation_step))
    run_dir = runner.train(make_config(tmp_path, data, dictionary, "coop", "kdpl_ca", trainer__max_epochs=1))
    assert seen["train"] == {tuple(DICTIONARY)}
    assert seen["selected"] == {5}
    assert seen["eval"] == {tuple(CLASSES)}
    rows = list(csv.DictReader(open(run_dir / "metrics" / "0" / "metrics.csv")))
    assert {float(r["train/selected_classes"]) for r in rows if r.get("train/selected_classes")} == {5.0}
    assert not any(r.get("train/acc") for r in rows)  # trained on the dictionary: no label accuracy


@pytest.mark.parametrize("objective", ["supervised", "kdpl"])
def test_train_accuracy_is_logged_on_the_training_batches(tmp_path, data, dictionary, objective, monkeypatch):
    batches = []
    step = PromptLearningModule.training_step

    def record(self, batch, batch_idx):
        with torch.no_grad():
            logits = self.learner(batch["image"]).logits
        batches.append((logits.argmax(-1) == batch["label"]).float().mean().item())
        return step(self, batch, batch_idx)

    monkeypatch.setattr(PromptLearningModule, "training_step", record)
    run_dir = runner.train(make_config(tmp_path, data, dictionary, "coop", objective, trainer__max_epochs=1))
    rows = list(csv.DictReader(open(run_dir / "metrics" / "0" / "metrics.csv")))
    logged = [float(r["train/acc"]) for r in rows if r.get("train/acc")]
    # The learner is deterministic (no dropout), so the forward above sees the step's own logits.
    assert logged == pytest.approx(batches[:len(logged)]) and len(logged) == len(batches)


def test_teacher_loaded_for_training_only_and_text_features_cached(tmp_path, data, dictionary, monkeypatch):
    import clipcore.teacher

    loads, encodes = [], []
    build, build_teacher = kdpl_methods.backbone_from_config, kdpl_methods.encoder_from_config
    encode = clipcore.teacher.encode_prompts
    monkeypatch.setattr(kdpl_methods, "backbone_from_config", lambda s: loads.append(s.name) or build(s))
    monkeypatch.setattr(kdpl_methods, "encoder_from_config", lambda s: loads.append(s.name) or build_teacher(s))
    monkeypatch.setattr(clipcore.teacher, "encode_prompts", lambda b, p, *a: encodes.append(len(p)) or encode(b, p, *a))
    cfg = make_config(tmp_path, data, dictionary, "coop", "kdpl", trainer__max_epochs=1)
    first = runner.train(cfg)
    assert loads == ["tiny", "tiny-teacher"] and encodes == [len(CLASSES)]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    # Evaluation of the KDPL checkpoint, on the novel classes too: the student only.
    loads.clear()
    eval_cfg, module, dm = runner.module_from_checkpoint(first / "checkpoints" / "last.ckpt", [],
                                                         ["data.subsample_classes=new"])
    metrics = runner.evaluate(eval_cfg, module, dm, tmp_path / "eval")
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert loads == ["tiny"] and module.teacher is None

    # A second training run with the same teacher and prompts reads the features from disk.
    loads.clear()
    second = runner.train(make_config(tmp_path, data, dictionary, "coop", "kdpl", trainer__max_epochs=1,
                                      experiment="again"))
    assert second != first and loads == ["tiny", "tiny-teacher"]
    assert encodes == [len(CLASSES)], "the cached teacher text features must be reused"


@pytest.mark.slow
@pytest.mark.parametrize("learner", LEARNERS)
def test_ddp_on_two_cpu_processes(tmp_path, data, dictionary, learner):
    """Every learner under DDP (gloo, 2 processes) with KDPL-CA, whose class selection is made
    once for the global batch: one run folder, one attempt, a checkpoint and test metrics."""
    import os
    import subprocess
    import sys

    args = prompt_overrides(data, tmp_path / "runs", dictionary, tmp_path / "cache", learner, "kdpl_ca",
                            trainer__max_epochs=1)
    files = [x for f in prompt_method_files(learner, "kdpl_ca") for x in ("-c", str(f))]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("CLIPCORE_RUN_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "clipdistill.train", *files,
                           "-c", str(Path(__file__).resolve().parents[1] / "configs" / "trainer" / "ddp_cpu.yaml"),
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "test").iterdir()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and len(status["attempts"]) == 1
    assert last_ckpt(run_dir)["state_dict"]
    assert 0.0 <= json.loads((run_dir / "eval" / "metrics.json").read_text())["test/acc"] <= 1.0


@pytest.mark.parametrize("learner", ["coop", "promptsrc"])
def test_frozen_weights_held_in_the_compute_dtype_train_exactly_as_recast_ones(tmp_path, data, dictionary,
                                                                               learner, monkeypatch):
    """Under bf16-mixed (here on the CPU) the frozen towers' matmul weights are bf16 copies during
    each training step instead of being cast by autocast at every call: the run learns bit for
    bit the same tensors, the weights are fp32 outside the step (PromptSRC rebuilds fp32 class
    caches there), and the checkpoint's fingerprints are those of the fp32 weights."""
    from clipcore.module import ClipMethodModule

    step = PromptLearningModule.training_step
    seen, built = [], []

    def probing(self, batch, batch_idx):
        seen.append((self.student.model.visual.conv1.weight.dtype, self.teacher.model.visual.conv1.weight.dtype,
                     self.student.model.ln_final.weight.dtype))
        built.append(self._compute_copies)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(PromptLearningModule, "training_step", probing)
    ckpts = {}
    for copies in (True, False):
        monkeypatch.setattr(ClipMethodModule, "frozen_compute_copies", copies)
        seen.clear(), built.clear()
        cfg = make_config(tmp_path / f"copies-{copies}", data, dictionary, learner, "kdpl",
                          trainer__precision="bf16-mixed")
        ckpts[copies] = last_ckpt(runner.train(cfg))
        expected = (torch.bfloat16, torch.bfloat16, torch.float32) if copies else (torch.float32,) * 3
        assert seen and set(seen) == {expected}
        # Built once per fit, not per step.
        assert len({id(c) for c in built}) == 1 and (built[0] is not None) == copies
    held, recast = ckpts[True], ckpts[False]
    assert held["backbone_fingerprints"] == recast["backbone_fingerprints"]
    assert held["state_dict"].keys() == recast["state_dict"].keys()
    for key, tensor in recast["state_dict"].items():
        assert torch.equal(held["state_dict"][key], tensor), key
