"""The built wheel, installed non-editable into a fresh venv, trains and evaluates from a
directory outside the checkout (the shipped configs come from the package data)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from image_folders import write_image_folder
from training_helpers import REPO, TINY

pytestmark = pytest.mark.slow


def run(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_trains_and_evaluates_outside_the_checkout(tmp_path):
    # Built from a copy of the project's files, so setuptools' build/ folder lands there.
    source = tmp_path / "source"
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(REPO / name), source / name)
        elif (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source,
        cwd=tmp_path)
    wheel = next(dist.glob("clipdistill-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "clipdistill/configs/trainer/cpu.yaml" in names and "clipdistill/cli.py" in names
    assert not any(n.startswith("tests/") for n in names)

    # A fresh venv: the wheel is its only copy of the project; the heavy dependencies (torch,
    # open_clip ...) are reused from this interpreter's site-packages through a .pth line
    # (a path added that way is not a site dir, so the checkout's editable hook is not loaded).
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                .stdout.strip())
    (site / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    work = tmp_path / "work"
    write_image_folder(work / "photos", counts={"train": 4, "test": 2})
    (work / "tiny.json").write_text(TINY.read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(WANDB_MODE="disabled", CLIPCORE_CACHE_DIR=str(tmp_path / "cache"))
    where = run(python, "-c", "import clipdistill; print(clipdistill.__file__)", cwd=work, env=env).stdout
    assert where.startswith(str(site)), where  # the installed wheel, not the checkout

    tool = venv / "bin" / "clipdistill"
    settings = ["student.name=tiny", "student.config=tiny.json", "student.pretrained=null",
                "data.name=image_folder", "data.root=photos", "data.num_shots=2", "data.batch_size=4",
                "data.num_workers=0", "trainer.max_epochs=1", "experiment=wheel"]
    run(tool, "train", "-c", "trainer/cpu.yaml", "-c", "method/coop.yaml", "-c", "objective/supervised.yaml",
        *settings, cwd=work, env=env)
    run_dir = next((work / "runs" / "wheel").iterdir())
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    run(tool, "eval", "--ckpt", run_dir / "checkpoints" / "last.ckpt", "data.subsample_classes=new",
        "--out", work / "eval-new", cwd=work, env=env)
    metrics = json.loads((work / "eval-new" / "metrics.json").read_text())
    assert set(metrics) == {"test/acc", "test/acc_top5", "test/mean_class_acc"}
    assert (work / "eval-new" / "predictions.csv").is_file()
