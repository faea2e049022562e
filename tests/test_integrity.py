"""Damaged, foreign and incomplete inputs: each named in one clear message, nothing lost.

Checkpoint files (truncated, bit-flipped, text, safetensors, a folder), a corrupt last.ckpt with
an intact previous one, empty class folders, corrupt images (stop, or skip and count), caches
whose bytes changed, class lists that differ, SLURM's requeue path, and a wrong dataset, which
is reported before any model loads.
"""
from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from gcd_layouts import write_gcd_image_folder
from lightning.pytorch.callbacks import Callback
from safetensors.torch import save_file
from training_helpers import overrides, tiny_dataset

from clipcore import runner
from clipcore.checkpoint_file import verify_checkpoint
from clipcore.config import load_config
from clipcore.errors import CheckpointError, list_difference
from clipcore.status import PREEMPTED, end_attempt, read_status
from clipcore.teacher import load_or_compute
from clipdistill import evaluate, train
from clipdistill.app import register_methods

register_methods()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data) -> Path:
    """A 2-epoch CoOp run: last.ckpt (epoch 2) and last-previous.ckpt (epoch 1)."""
    out = tmp_path_factory.mktemp("finished")
    return runner.train(load_config([], overrides(data, out / "runs")))


# -- checkpoint files ------------------------------------------------------------------------
def _data_offset(ckpt: Path) -> int:
    """Where the bytes of the archive's largest member start (torch pads members to 64 bytes with
    an extra field, which the CRC does not cover, so flip a byte of the data itself)."""
    import struct
    import zipfile

    with zipfile.ZipFile(ckpt) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    raw = ckpt.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def damaged_copies(ckpt: Path, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    raw = ckpt.read_bytes()
    flipped = bytearray(raw)
    flipped[_data_offset(ckpt)] ^= 0xFF
    files = {"truncated": raw[: len(raw) // 2], "bit flip": bytes(flipped), "empty": b"",
             "text": b"hello, I am not a checkpoint\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name.replace(' ', '_')}.ckpt"
        paths[name].write_bytes(content)
    paths["safetensors"] = folder / "weights.safetensors"
    save_file({"x": torch.zeros(3)}, str(paths["safetensors"]))
    return paths


EXPECTED_WORDS = {"truncated": "truncated or corrupt", "bit flip": "corrupt", "empty": "is empty",
                  "text": "is a text file", "safetensors": "is a safetensors file"}


def test_every_damaged_or_foreign_checkpoint_is_named_with_what_is_wrong(tmp_path, finished_run, capsys):
    verify_checkpoint(finished_run / "checkpoints" / "last.ckpt")  # the intact one passes
    for kind, path in damaged_copies(finished_run / "checkpoints" / "last.ckpt", tmp_path).items():
        with pytest.raises(CheckpointError) as error:
            verify_checkpoint(path)
        assert str(path) in str(error.value) and EXPECTED_WORDS[kind] in str(error.value), kind
        # The same through eval.py: exit 2, one line, no traceback.
        assert evaluate.main(["--ckpt", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and "Traceback" not in err, kind
    with pytest.raises(CheckpointError, match="is a folder.*--export"):
        verify_checkpoint(finished_run / "exports" / "final")


def test_resume_last_falls_back_to_the_previous_checkpoint_and_names_the_corrupt_one(
        tmp_path, data, caplog):
    out = tmp_path / "runs"
    run_dir = runner.train(load_config([], overrides(data, out)))
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "last-previous.ckpt").is_file()
    end_attempt(run_dir, PREEMPTED, "SIGTERM", 143)  # as if pre-empted after the last epoch
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    (checkpoints / ".last.ckpt.tmp-424242").write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.WARNING):
        assert train.main([*overrides(data, out), "resume=last"]) == 0
    assert f"skipping a corrupt checkpoint: checkpoint {last} is truncated or corrupt" in caplog.text
    assert "left by a process that died while writing" in caplog.text
    assert not (checkpoints / ".last.ckpt.tmp-424242").exists()
    attempts = read_status(run_dir)["attempts"]
    assert attempts[-1]["status"] == "finished"
    assert attempts[-1]["resumed_from"] == str(checkpoints / "last-previous.ckpt")
    verify_checkpoint(last)  # rewritten by the resumed attempt

    # With no intact checkpoint left, resume=last is refused, naming what it looked for.
    end_attempt(run_dir, PREEMPTED, "SIGTERM", 143)
    for name in ("last.ckpt", "last-previous.ckpt"):
        (checkpoints / name).write_text("garbage")
    assert train.main([*overrides(data, out), "resume=last"]) == 2


# -- data -------------------------------------------------------------------------------------
def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    from clipcore.data import DataError
    from gcd.datasets import gcd_image_folder

    root = write_gcd_image_folder(tmp_path / "gcd")
    (root / "train" / "zz empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*zz empty holds no images"):
        gcd_image_folder(root)


def corrupt_one_image(data_root: Path) -> Path:
    image = sorted((data_root / "oxford_pets" / "images").rglob("train_*.png"))[0]
    image.write_bytes(b"\x89PNG broken")
    return image


def test_a_corrupt_image_stops_the_run_naming_the_file(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    image = corrupt_one_image(data)
    # A loader worker process decodes it: the message still reaches the user without its traceback.
    code = train.main(overrides(data, tmp_path / "runs", data__num_workers=1, data__num_shots=0,
                                trainer__max_epochs=1))
    err = capsys.readouterr().err
    assert code == 2 and f"error: could not decode image {image}" in err
    assert "data.skip_corrupt=true" in err and "Traceback" not in err and "worker process" not in err


def test_skip_corrupt_skips_logs_and_counts_then_fails_past_the_allowed_fraction(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    image = corrupt_one_image(data)
    args = overrides(data, tmp_path / "runs", data__num_shots=0, trainer__max_epochs=1,
                     data__skip_corrupt="true", data__max_corrupt_fraction=0.2)
    assert train.main(args) == 0
    (status,) = (tmp_path / "runs").rglob("status.json")
    log_text = (status.parent / "train.log").read_text()
    assert log_text.count(f"skipped corrupt image {image}") == 1  # logged once, seen every epoch
    assert "1 of 24 train images skipped" in log_text

    assert train.main([*args, "data.max_corrupt_fraction=0.0", "experiment=strict"]) == 2
    err = capsys.readouterr().err
    assert "1 of 24 train images are corrupt, more than data.max_corrupt_fraction=0.0" in err


# -- caches and class lists -----------------------------------------------------------------
def test_a_cache_whose_bytes_changed_is_recomputed_with_a_warning(tmp_path, caplog):
    calls = []

    def compute():
        calls.append(1)
        return {"features": torch.arange(64, dtype=torch.float32).reshape(8, 8)}

    first = load_or_compute("unit", {"a": 1}, compute, tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-4:] = b"\x00\x00\xc0\x7f"  # the last float becomes NaN; the header is untouched
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        again = load_or_compute("unit", {"a": 1}, compute, tmp_path)
    assert len(calls) == 2 and "fails its checksum" in caplog.text
    torch.testing.assert_close(again["features"], first["features"])
    assert load_or_compute("unit", {"a": 1}, compute, tmp_path) and len(calls) == 2  # repaired


def test_class_list_differences_show_what_differs():
    same_first_five = ["a", "b", "c", "d", "e", "f", "g"]
    assert list_difference(same_first_five, ["a", "b", "c", "d", "e", "g", "f"]) == (
        "7 expected vs 7 given; first difference at index 5: 'f' vs 'g'")
    message = list_difference(["cat", "dog", "owl"], ["cat", "dog", "emu", "owl"])
    assert "missing" not in message and "extra ['emu']" in message and "index 2: 'owl' vs 'emu'" in message
    assert list_difference(["a", "b"], ["a"]) == (
        "2 expected vs 1 given; missing ['b']; first difference at index 1: 'b' vs '<end>'")


# -- SLURM -------------------------------------------------------------------------------------
class SignalSelfAtStep(Callback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_slurm_sigusr1_checkpoints_requeues_and_the_requeued_job_resumes_its_folder(
        tmp_path, data, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol-calls.txt"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "kdpl", "SLURM_NTASKS": "1",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    args = overrides(data, tmp_path / "runs", trainer__max_epochs=3)
    build = runner.build_trainer

    def with_signal(*a, **k):
        trainer = build(*a, **k)
        trainer.callbacks.append(SignalSelfAtStep(6, signal.SIGUSR1))
        return trainer

    monkeypatch.setattr(runner, "build_trainer", with_signal)
    assert train.main(args) == 128 + signal.SIGUSR1
    (run_dir,) = (tmp_path / "runs" / "test").iterdir()
    assert run_dir.name.startswith("slurm-4242-")
    status = read_status(run_dir)
    # The signal came after step 6's checkpoint decision: the run stops after the next step.
    assert status["status"] == "preempted" and status["step"] == 7
    assert status["attempts"][0]["exit_reason"] == "SIGUSR1" and status["attempts"][0]["slurm_job_id"] == "4242"
    assert calls.read_text().split() == ["requeue", "4242"]

    # SLURM starts the job again with the same command: it finds and resumes its own folder.
    monkeypatch.setattr(runner, "build_trainer", build)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert train.main(args) == 0
    assert list((tmp_path / "runs" / "test").iterdir()) == [run_dir]
    attempts = read_status(run_dir)["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "finished"] and attempts[1]["start_step"] == 7
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["test/acc"] >= 0


def test_time_based_checkpoints_are_due_after_the_interval(monkeypatch):
    from types import SimpleNamespace

    from clipcore import checkpointing
    from clipcore.signals import StopRequest

    clock = [1000.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: clock[0])
    callback = checkpointing.RunCheckpoint(Path("run"), StopRequest(), every_n_minutes=2)
    trainer = SimpleNamespace(global_step=5, strategy=SimpleNamespace(broadcast=lambda value, src: value))
    clock[0] += 119
    assert not callback._due(trainer)
    clock[0] += 2
    assert callback._due(trainer)
    steps = checkpointing.RunCheckpoint(Path("run"), StopRequest(), every_n_steps=5)
    assert steps._due(trainer) and not steps._due(SimpleNamespace(global_step=6, strategy=None))


# -- the data before the models -------------------------------------------------------------------
@pytest.mark.parametrize("method, data", [
    ("zeroshot", ["data.name=dtd"]), ("coop", ["data.name=dtd"]), ("coop", ["data.name=petz"]),
    ("spectralgcd", ["data.name=image_folder", "gcd.concepts_csv=unused.csv"])],
    ids=["zeroshot-missing-folder", "coop-missing-folder", "coop-unknown-name", "spectralgcd-missing-folder"])
def test_a_wrong_dataset_is_reported_before_any_model_loads(method, data, tmp_path, monkeypatch):
    """A model may be a multi-GB download (or minutes of retries offline): a misspelt dataset name
    or a missing folder is reported first."""
    import clipcore.zeroshot
    import gcd.methods
    import kdpl.methods
    from clipcore.errors import UserError

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the dataset was read")

    for module in (clipcore.zeroshot, gcd.methods, kdpl.methods):
        for name in ("backbone_from_config", "encoder_from_config"):
            monkeypatch.setattr(module, name, no_model, raising=False)
    cfg = load_config([], [f"method={method}", *data, f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(UserError, match="petz" if "data.name=petz" in data else "nowhere"):
        runner.build_method(cfg)
