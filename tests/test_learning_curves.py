"""Per-epoch learning curves read from a run folder's CSV logs (the demo's plot)."""
import csv

import pytest

from clipdistill.learning_curves import epoch_curves

FIELDS = ["epoch", "lr-SGD", "step", "train/acc", "train/loss", "val/acc"]


def write_attempt(run, attempt: int, rows: list[dict]) -> None:
    folder = run / "metrics" / str(attempt)
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def test_each_epoch_is_the_mean_of_its_logged_steps_and_a_resumed_attempt_replaces_its_epochs(tmp_path):
    write_attempt(tmp_path, 0, [
        {"lr-SGD": 0.01, "step": 0},  # learning-rate row: no epoch, ignored
        {"epoch": 0, "step": 4, "train/loss": 2.0, "train/acc": 0.25},
        {"epoch": 0, "step": 9, "train/loss": 1.0, "train/acc": 0.75},
        {"epoch": 0, "step": 11, "val/acc": 0.5},  # validation row: no training metric
        {"epoch": 1, "step": 14, "train/loss": 9.0, "train/acc": 0.0},  # cut short by a crash
    ])
    write_attempt(tmp_path, 1, [  # the resumed attempt repeats epoch 1
        {"epoch": 1, "step": 14, "train/loss": 0.5, "train/acc": 0.8},
        {"epoch": 2, "step": 19, "train/loss": 0.25, "train/acc": 0.9},
    ])
    curves = epoch_curves(tmp_path)
    assert curves["epoch"] == [0, 1, 2]
    assert curves["train/loss"] == pytest.approx([1.5, 0.5, 0.25])
    assert curves["train/acc"] == pytest.approx([0.5, 0.8, 0.9])


def test_a_metric_the_run_never_logged_is_left_out(tmp_path):
    # UPL trains on pseudo-labels and does not log train/acc.
    write_attempt(tmp_path, 0, [{"epoch": 0, "step": 4, "train/loss": 3.0},
                                {"epoch": 1, "step": 9, "train/loss": 2.0}])
    assert epoch_curves(tmp_path) == {"epoch": [0, 1], "train/loss": [3.0, 2.0]}
    assert epoch_curves(tmp_path / "no-such-run") == {"epoch": []}
