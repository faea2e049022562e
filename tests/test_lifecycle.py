"""The run lifecycle as users live it: ``train.py`` as a real process, killed, pre-empted, resumed.

These tests run the shipped entry point in a subprocess with the *default* logger settings:
no ``WANDB_MODE``, no API key, so ``logger.wandb.mode: auto`` logs offline with the real wandb
package. The uninterrupted reference of each comparison is trained in-process (W&B off: logging
does not change a number).
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from gcd_layouts import write_dictionary, write_gcd_image_folder
from training_helpers import (
    CONFIG_DIR,
    REPO,
    gcd_overrides,
    prompt_method_files,
    prompt_overrides,
    tiny_dataset,
    write_class_dictionary,
)

from clipcore import runner
from clipcore.config import load_config
from clipcore.status import read_status
from clipdistill.app import register_methods

register_methods()
pytestmark = pytest.mark.slow


def user_env(tmp_path: Path) -> dict:
    """A user's shell: no W&B settings or key (HOME is empty), no GPU, offline hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB", "CLIPCORE_RUN", "CLIPCORE_RESUME"))}
    env.update(HOME=str(tmp_path / "home"), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def default_logging(args: list[str]) -> list[str]:
    """The test overrides without ``logger.wandb.mode``: the shipped default (auto) applies."""
    return [a for a in args if not a.startswith("logger.wandb.mode=")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {"coop": tiny_dataset(root / "coop", n_train=8), "gcd": write_gcd_image_folder(root / "gcd"),
            "class_dictionary": write_class_dictionary(root / "dict.csv"),
            "concepts": write_dictionary(root / "concepts.csv")}


EPOCHS = 3  # of 4 steps each


def cell_args(cell: str, inputs, out: Path, **extra) -> tuple[list[Path], list[str]]:
    common = {"trainer__max_epochs": EPOCHS, **extra}
    if cell == "spectralgcd":
        return [CONFIG_DIR / "method" / "spectralgcd.yaml"], gcd_overrides(
            out, inputs["gcd"], inputs["concepts"], **common)
    learner, objective = cell.split("+")
    return prompt_method_files(learner, objective), prompt_overrides(
        inputs["coop"], out / "runs", inputs["class_dictionary"], out / "cache", learner, objective,
        data__num_shots=4, trainer__limit_train_batches="null", **common)


def reference_run(cell: str, inputs, out: Path) -> Path:
    files, args = cell_args(cell, inputs, out)
    return runner.train(load_config(files, args))


def train_command(files: list[Path], args: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *[x for f in files for x in ("-c", str(f))], *args]


def only_run_dir(out: Path) -> Path:
    (status,) = out.rglob("status.json")
    return status.parent


def wait_for(process: subprocess.Popen, ready, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"train.py ended (status {process.returncode}) before the test could "
                                 f"interrupt it:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("train.py did not reach the interruption point in time")
        time.sleep(0.005)


def status_step(out: Path) -> int:
    found = list(out.rglob("status.json"))
    try:
        return json.loads(found[0].read_text()).get("step", 0) if found else 0
    except (OSError, ValueError):
        return 0  # read while being replaced: try again


def logged_steps(out: Path) -> int:
    found = list(out.rglob("metrics/0/metrics.csv"))
    if not found:
        return 0
    with open(found[0]) as handle:
        return sum(1 for row in csv.DictReader(handle) if row.get("train/loss"))


def learned(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_result(run_dir: Path, reference: Path) -> None:
    a, b = learned(reference), learned(run_dir)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    metrics = [json.loads((r / "eval" / "metrics.json").read_text()) for r in (run_dir, reference)]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("cell, workers", [("coop+kdpl", 2), ("spectralgcd", 0)])
def test_sigkill_mid_epoch_then_resume_last_ends_as_the_uninterrupted_run(tmp_path, inputs, cell, workers):
    reference = reference_run(cell, inputs, tmp_path / "reference")  # no loader workers
    out, env = tmp_path / "killed", user_env(tmp_path)
    # Every image's augmentations are seeded per draw: worker processes change no number.
    files, args = cell_args(cell, inputs, out, checkpoint__every_n_steps=1, data__num_workers=workers)
    args = default_logging(args)
    process = subprocess.Popen(train_command(files, args), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(process, lambda: status_step(out) >= 5)  # in the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = only_run_dir(out)
    killed_at = read_status(run_dir)["step"]
    assert 5 <= killed_at < 4 * EPOCHS and read_status(run_dir)["status"] == "running"

    resumed = subprocess.run(train_command(files, [*args, "resume=last"]), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run_dir(out) == run_dir  # the same folder, nothing new
    assert_same_result(run_dir, reference)
    attempts = read_status(run_dir)["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "finished"]
    assert "without recording its exit" in attempts[0]["exit_reason"]
    assert attempts[1]["start_step"] == killed_at
    # The killed attempt's metrics are kept (rows are flushed every step; the step the kill
    # interrupted may not have been logged yet).
    rows = list(csv.DictReader(open(run_dir / "metrics" / "0" / "metrics.csv")))
    assert sum(1 for r in rows if r.get("train/loss")) >= killed_at - 1

    # W&B, as users get it by default: offline, one W&B run for both attempts, syncable.
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline)
    assert all((p / f"run-{run_id}.wandb").stat().st_size > 0 for p in offline)
    sync = subprocess.run([str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", *map(str, offline)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert sync.returncode == 0, sync.stderr
    assert "Would sync" in sync.stdout + sync.stderr and run_id in sync.stdout + sync.stderr
    # Nothing a user cannot act on: wandb's note on the anonymous setting Lightning always passes,
    # torch's deprecation of the LeafSpec Lightning builds.
    console = resumed.stdout + resumed.stderr
    assert "wandb" in console and "anonymous setting" not in console and "LeafSpec" not in console
    # Lightning's own lines once each (it gives its logger a console handler beside ours), and
    # in train.log too; its tip advertising a cloud logger not at all.
    assert console.count("Seed set to") == 1 and console.count("GPU available:") == 1
    assert "💡 Tip" not in console and "`Trainer.fit` stopped" in (run_dir / "train.log").read_text()


def test_sigterm_saves_exits_143_and_the_resume_ends_as_the_uninterrupted_run(tmp_path, inputs):
    cell = "coop+supervised"
    reference = reference_run(cell, inputs, tmp_path / "reference")
    out, env = tmp_path / "terminated", user_env(tmp_path)
    files, args = cell_args(cell, inputs, out)  # no step checkpoints: the signal writes one
    args = default_logging(args)
    process = subprocess.Popen(train_command(files, args), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(process, lambda: logged_steps(out) >= 2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 128 + signal.SIGTERM == 143
    run_dir = only_run_dir(out)
    status = read_status(run_dir)
    assert status["status"] == "preempted" and status["attempts"][0]["exit_reason"] == "SIGTERM"
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= stopped_at < 4 * EPOCHS and status["step"] == stopped_at
    line = [x for x in (run_dir / "train.log").read_text().splitlines() if "received SIGTERM" in x]
    assert len(line) == 1 and f"step {stopped_at}" in line[0] and "last.ckpt" in line[0]
    assert "received SIGTERM" in stderr and "Traceback" not in stderr

    resumed = subprocess.run(train_command(files, [*args, "resume=last"]), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_result(run_dir, reference)
    assert [a["status"] for a in read_status(run_dir)["attempts"]] == ["preempted", "finished"]


def test_a_changed_config_is_refused_naming_every_key_before_torch_loads(tmp_path, inputs):
    files, args = cell_args("coop+supervised", inputs, tmp_path, trainer__max_epochs=1)
    run_dir = runner.train(load_config(files, args))
    before = (run_dir / "status.json").read_text()
    probe = ("import sys\nfrom clipdistill.train import main\ncode = main(sys.argv[1:])\n"
             "print('torch imported:', 'torch' in sys.modules)\nsys.exit(code)\n")
    changed = [*[x for f in files for x in ("-c", str(f))], *args, "seed=8", "optim.lr=0.5", "resume=last"]
    refused = subprocess.run([sys.executable, "-c", probe, *changed], env=user_env(tmp_path),
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "seed: 7 -> 8" in refused.stderr and "optim.lr: 0.05 -> 0.5" in refused.stderr
    assert "resume_allow=[optim.lr,seed]" in refused.stderr and "Traceback" not in refused.stderr
    assert "torch imported: False" in refused.stdout
    assert (run_dir / "status.json").read_text() == before  # nothing written

    # The same config: the run is finished, nothing is retrained.
    same = subprocess.run([sys.executable, "-c", probe, *changed[:-3], "resume=last"], env=user_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and "already finished" in same.stdout
    assert "torch imported: False" in same.stdout
    assert (run_dir / "status.json").read_text() == before


def test_a_config_typo_is_reported_before_torch_loads(tmp_path):
    probe = ("import sys, time\nstart = time.perf_counter()\nfrom clipdistill.train import main\n"
             "code = main(['trainer.max_epoch=5'])\n"
             "print('torch imported:', 'torch' in sys.modules, 'seconds:', round(time.perf_counter() - start, 2))\n"
             "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", probe], env=user_env(tmp_path), capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown config key 'trainer.max_epoch'" in result.stderr and "max_epochs" in result.stderr
    assert "Traceback" not in result.stderr
    assert "torch imported: False" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_a_missing_data_folder_ends_with_one_message_and_leaves_no_run_folder(tmp_path, inputs):
    files, args = cell_args("coop+supervised", inputs, tmp_path)
    args = [a for a in args if not a.startswith("data.root=")] + [f"data.root={tmp_path / 'nowhere'}"]
    result = subprocess.run(train_command(files, args), env=user_env(tmp_path), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 2
    assert (f"error: oxford_pets dataset folder: expected a directory at {tmp_path / 'nowhere' / 'oxford_pets'}"
            in result.stderr)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_unknown_method_and_a_bad_value_end_with_one_message_and_no_run_folder(tmp_path, inputs, capsys):
    from clipdistill import train

    files, args = cell_args("coop+supervised", inputs, tmp_path)
    config = [x for f in files for x in ("-c", str(f))]
    assert train.main([*config, *args, "method=coopp"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown method 'coopp' (config key 'method'). Known methods: " in err
    known = err.split("Known methods: ", 1)[1].strip().split(", ")
    assert {"coop", "cocoop", "spectralgcd", "zeroshot"} <= set(known) and known == sorted(known)
    assert train.main([*config, *args, "objective.name=kdpll"]) == 2
    err = capsys.readouterr().err
    assert "error: objective.name='kdpll': expected one of " in err
    assert {"kdpl", "kdpl_ca", "supervised"} <= set(err.split("expected one of ", 1)[1].strip().split(", "))
    assert not (tmp_path / "runs").exists()
