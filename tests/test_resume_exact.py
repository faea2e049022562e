"""Exact resume from a checkpoint taken in the middle of an epoch, for every registered method.

A run is "crashed" between two checkpoints (an exception after optimiser step 7, the last
checkpoint being step 6), then resumed with ``resume=last`` and the same config. In deterministic
mode it must end with the uninterrupted run's learned tensors (<= 1e-6) and test metrics, in the
same run folder, with the first attempt's CSV metrics kept. Parametrized over the method
registry: a new method is covered without editing this file.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from gcd_layouts import write_dictionary, write_gcd_image_folder
from lightning.pytorch.callbacks import Callback
from training_helpers import (
    CONFIG_DIR,
    gcd_overrides,
    prompt_method_files,
    prompt_overrides,
    tiny_dataset,
    write_class_dictionary,
)

from clipcore import runner
from clipcore.config import load_config
from clipcore.registry import list_methods
from clipcore.status import read_status
from clipdistill.app import register_methods

register_methods()
from kdpl.config import declared_objectives  # noqa: E402

GCD_METHODS = ("spectralgcd", "simgcd")
CRASH_AFTER_STEP = 7  # of 2 epochs x 4 steps; checkpoints every 3 steps (and at each epoch end)


def method_cells() -> list[str]:
    cells = []
    for method in list_methods():
        if method == "zeroshot":
            continue  # nothing is trained
        if method in GCD_METHODS:
            cells.append(method)
        else:
            cells += [f"{method}+{objective}" for objective in sorted(declared_objectives())]
    return cells


class CrashAfterStep(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {"coop": tiny_dataset(root / "coop", n_train=6), "gcd": write_gcd_image_folder(root / "gcd"),
            "class_dictionary": write_class_dictionary(root / "dict.csv"),
            "concepts": write_dictionary(root / "concepts.csv")}


def config_for(cell: str, inputs, out: Path):
    common = {"checkpoint__every_n_steps": 3, "trainer__max_epochs": 2, "trainer__limit_train_batches": 4}
    if cell in GCD_METHODS:
        files = [CONFIG_DIR / "method" / f"{cell}.yaml"]
        return load_config(files, gcd_overrides(out, inputs["gcd"], inputs["concepts"], method=cell, **common))
    learner, objective = cell.split("+")
    # UPL picks its own shots per predicted class: every image with its pseudo-label keeps the
    # epoch at least as long as 4 shots of every class.
    shots = "null" if objective == "upl" else 4
    return load_config(prompt_method_files(learner, objective),
                       prompt_overrides(inputs["coop"], out / "runs", inputs["class_dictionary"], out / "cache",
                                        learner, objective, data__num_shots=shots, **common))


def learned(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("cell", method_cells())
def test_mid_epoch_crash_then_resume_last_equals_the_uninterrupted_run(tmp_path, inputs, monkeypatch, cell):
    full = runner.train(config_for(cell, inputs, tmp_path / "full"))

    build = runner.build_trainer
    monkeypatch.setattr(runner, "build_trainer",
                        lambda *a, **k: _with_callback(build(*a, **k), CrashAfterStep(CRASH_AFTER_STEP)))
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.train(config_for(cell, inputs, tmp_path / "part"))
    monkeypatch.undo()
    (crashed,) = (tmp_path / "part").rglob("status.json")
    run_dir = crashed.parent
    status = read_status(run_dir)
    assert status["status"] == "failed" and status["step"] == 6  # the last checkpoint, mid-epoch 2

    cfg = config_for(cell, inputs, tmp_path / "part")
    cfg.resume = "last"
    assert runner.train(cfg) == run_dir
    a, b = learned(full), learned(run_dir)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    metrics = lambda run: json.loads((run / "eval" / "metrics.json").read_text())  # noqa: E731
    assert metrics(run_dir) == metrics(full)
    # The crashed attempt's metrics are kept beside the resumed attempt's.
    rows = list(csv.DictReader(open(run_dir / "metrics" / "0" / "metrics.csv")))
    assert max(int(r["step"]) for r in rows if r.get("train/loss")) >= 5
    assert (run_dir / "metrics" / "1" / "metrics.csv").is_file()
    assert [a["status"] for a in read_status(run_dir)["attempts"]] == ["failed", "finished"]


def _with_callback(trainer, callback):
    trainer.callbacks.append(callback)
    return trainer
