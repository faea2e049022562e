"""The training loop end to end: fit, checkpoints, resume, export/import, eval, DDP."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import epochs_done, overrides, tiny_dataset

from clipcore import runner
from clipcore.config import load_config
from clipcore.export import read_export
from clipcore.module import CheckpointMismatchError
from clipdistill.app import register_methods

register_methods()
REPO = Path(__file__).resolve().parents[1]


def run_train(tmp_path, **extra) -> Path:
    cfg = load_config([], overrides(tmp_path / "data", tmp_path / "runs", **extra))
    return runner.train(cfg)


@pytest.fixture
def data(tmp_path):
    return tiny_dataset(tmp_path / "data")


def learned(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_fit_writes_run_directory_with_trainable_only_checkpoint(tmp_path, data):
    run_dir = run_train(tmp_path)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "metrics" / "0" / "metrics.csv").is_file()
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # Only the learned context, never the frozen CLIP.
    assert set(ckpt["state_dict"]) == {"learner.ctx"}
    assert epochs_done(ckpt) == 2 and "optimizer_states" in ckpt and "backbone_fingerprints" in ckpt
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))  # atomic writes leave nothing behind
    # Every save asks for the full state: Lightning logs a line per save when it has to assume so.
    assert "weights_only" not in (run_dir / "train.log").read_text()
    tensors, meta = read_export(run_dir / "exports" / "final")
    assert set(tensors) == {"learner.ctx"} and meta["method"] == "coop"


def test_training_changes_only_learned_tensors(tmp_path, data):
    run_dir = run_train(tmp_path, trainer__max_epochs=1)
    ckpt = learned(run_dir / "checkpoints" / "last.ckpt")
    cfg = load_config([], overrides(tmp_path / "data", tmp_path / "runs"))
    module, _ = __import__("clipcore.registry", fromlist=["build_method"]).build_method(cfg)
    # The context moved away from its "a photo of a" initialisation.
    assert not torch.allclose(ckpt["learner.ctx"], module.learner.ctx.detach())


def test_resume_equals_uninterrupted_run(tmp_path, data):
    full = run_train(tmp_path / "a", data__root=str(data), trainer__max_epochs=2)
    # Interrupted after the first epoch (4 steps of 4 images), same schedule as the full run.
    part = run_train(tmp_path / "b", data__root=str(data), trainer__max_epochs=2, trainer__max_steps=4)
    assert epochs_done(torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)) == 1
    resumed = run_train(tmp_path / "b", data__root=str(data), trainer__max_epochs=2,
                        trainer__max_steps=-1, resume=str(part / "checkpoints" / "last.ckpt"),
                        resume_allow="[trainer.max_steps]")
    assert resumed == part  # the run continues in its own folder
    a, b = learned(full / "checkpoints" / "last.ckpt"), learned(resumed / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(a["learner.ctx"], b["learner.ctx"], rtol=0, atol=1e-6)
    ma = json.loads((full / "eval" / "metrics.json").read_text())
    mb = json.loads((resumed / "eval" / "metrics.json").read_text())
    assert ma == mb


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_a_step_budget_raised_on_resume_trains_on(tmp_path, data, interval):
    """Iteration-based runs (trainer.max_steps, CLIP-LoRA's budget): stopped at 4 steps, resumed
    with 8, they end as the uninterrupted 8-step run. Lightning alone replayed the finished
    epoch with no batches and stopped (clipcore.checkpointing.finish_saved_epoch)."""
    settings = dict(data__root=str(data), trainer__max_epochs=10, optim__interval=interval)
    full = run_train(tmp_path / "a", trainer__max_steps=8, **settings)
    part = run_train(tmp_path / "b", trainer__max_steps=4, **settings)
    resumed = run_train(tmp_path / "b", trainer__max_steps=8, resume=str(part / "checkpoints" / "last.ckpt"),
                        resume_allow="[trainer.max_steps]", **settings)
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 8 and epochs_done(ckpt) == 2
    if interval == "epoch":  # with a per-step cosine the schedules of the 4- and 8-step runs differ
        torch.testing.assert_close(learned(full / "checkpoints" / "last.ckpt")["learner.ctx"],
                                   ckpt["state_dict"]["learner.ctx"], rtol=0, atol=1e-6)


def test_resumed_epoch_runs_at_the_scheduled_rate(tmp_path, data):
    """Resuming with a longer schedule recomputes the rate of the restored epoch."""
    import csv

    part = run_train(tmp_path, trainer__max_epochs=1, optim__warmup_epochs=0)
    run_train(tmp_path, trainer__max_epochs=4, resume=str(part / "checkpoints" / "last.ckpt"),
              resume_allow="[trainer.max_epochs]")
    # The first attempt's metrics survive the resume, which logs into metrics/1/.
    first = list(csv.DictReader(open(part / "metrics" / "0" / "metrics.csv")))
    assert [float(r["lr-SGD"]) for r in first if r.get("lr-SGD")] == [0.05]
    rows = list(csv.DictReader(open(part / "metrics" / "1" / "metrics.csv")))
    lrs = [float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")]
    # The 4-epoch cosine from epoch 1 on (the optimizer's stored rate, from the end of the
    # 1-epoch schedule, would be 0).
    expected = [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3)]
    assert lrs == pytest.approx(expected, abs=1e-7)


def test_resume_last_finds_newest_run(tmp_path, data):
    first = run_train(tmp_path, trainer__max_epochs=1)
    again = run_train(tmp_path, trainer__max_epochs=2, resume="last", resume_allow="[trainer.max_epochs]")
    assert again == first
    # The resumed run trained on to epoch 2 in the same folder.
    assert epochs_done(torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)) == 2


def test_resume_onto_another_backbone_is_refused(tmp_path, data):
    run_dir = run_train(tmp_path, trainer__max_epochs=1)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointMismatchError, match="different student backbone"):
        # Same architecture, other weights (another seed of the random init).
        runner.module_from_checkpoint(ckpt, [], ["student.name=tiny-other"])


def test_export_import_reproduces_logits(tmp_path, data):
    run_dir = run_train(tmp_path, trainer__max_epochs=1)
    _, trained, dm = runner.module_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    _, imported, _ = runner.module_from_export(run_dir / "exports" / "final")
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    trained.eval(), imported.eval()
    with torch.no_grad():
        torch.testing.assert_close(imported.learner(batch["image"]).logits, trained.learner(batch["image"]).logits)


def test_eval_cli_on_checkpoint_writes_json_and_table(tmp_path, data):
    run_dir = run_train(tmp_path, trainer__max_epochs=1)
    out = tmp_path / "evalout"
    import eval as eval_entry

    assert eval_entry.main(["--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"test/acc", "test/acc_top5", "test/mean_class_acc"}
    assert "| test/acc |" in (out / "metrics.md").read_text()
    # predictions.csv: one row per test image; the metrics recomputed from it agree.
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    _, _, dm = runner.module_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert [r["path"] for r in rows] == [d.path for d in dm.splits.test]
    assert all(r["label"] == d.classname for r, d in zip(rows, dm.splits.test))
    top1 = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    top5 = sum(r["label"] in r["top5"].split("|") for r in rows) / len(rows)
    recalls = [sum(r["prediction"] == c for r in rows if r["label"] == c) / sum(r["label"] == c for r in rows)
               for c in {r["label"] for r in rows}]
    assert metrics["test/acc"] == pytest.approx(top1)
    assert metrics["test/acc_top5"] == pytest.approx(top5)
    assert metrics["test/mean_class_acc"] == pytest.approx(sum(recalls) / len(recalls))
    assert all(r["top5"].split("|")[0] == r["prediction"] and 0 < float(r["score"]) <= 1 for r in rows)


def test_fast_dev_run(tmp_path, data):
    run_dir = run_train(tmp_path, trainer__fast_dev_run=True)
    # One training batch, one test batch, and no export.
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["test/acc"] >= 0
    assert not (run_dir / "exports").exists()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert not ckpt.exists() or torch.load(ckpt, weights_only=True)["global_step"] == 1


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, data):
    args = overrides(data, tmp_path / "runs", trainer__max_epochs=1)
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("CLIPCORE_RUN_DIR", None)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "-c", str(REPO / "configs/trainer/ddp_cpu.yaml"),
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = list((tmp_path / "runs" / "test").iterdir())
    assert len(run_dirs) == 1, "both ranks must write into one run folder"
    assert (run_dirs[0] / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dirs[0] / "eval" / "metrics.json").read_text())["test/acc"] >= 0
    # Only the launching rank records the attempt.
    status = json.loads((run_dirs[0] / "status.json").read_text())
    assert status["status"] == "finished" and len(status["attempts"]) == 1


def test_best_checkpoint_by_monitored_metric(tmp_path, data):
    run_dir = run_train(tmp_path, checkpoint__monitor="val/acc", checkpoint__mode="max")
    best = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and (run_dir / "checkpoints" / "last.ckpt").is_file()
    stored = torch.load(best[0], weights_only=True)
    assert set(stored["state_dict"]) == {"learner.ctx"}
    callback = next(v for k, v in stored["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert callback["monitor"] == "val/acc"


@pytest.mark.parametrize("check_every,save_every", [(4, None), (50, 1)], ids=["at-the-log-step", "at-a-checkpoint"])
def test_a_non_finite_loss_stops_the_run_naming_its_step_and_no_checkpoint_holds_it(
        tmp_path, data, monkeypatch, check_every, save_every):
    """The loss is checked without a device read per step: as often as metrics are logged and
    before every checkpoint. A NaN batch at step 3 stops the run with the step named, whichever
    comes first, and the checkpoint on disk holds the finite weights of before it."""
    from kdpl.module import PromptLearningModule

    step = PromptLearningModule.training_step

    def poisoned(self, batch, batch_idx):
        if self.global_step == 3:
            batch = {**batch, "image": torch.full_like(batch["image"], float("nan"))}
        return step(self, batch, batch_idx)

    monkeypatch.setattr(PromptLearningModule, "training_step", poisoned)
    extra = {"trainer__log_every_n_steps": check_every}
    if save_every:
        extra["checkpoint__every_n_steps"] = save_every
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at epoch 0, step 3"):
        run_train(tmp_path, **extra)
    status_file, = (tmp_path / "runs").glob("*/*/status.json")
    run_dir = status_file.parent
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "step 3" in status["attempts"][-1]["exit_reason"]
    if save_every:
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 3
        assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
