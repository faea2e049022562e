"""The ``clipdistill`` tool: subcommands, help texts, shipped configs by name, baked classifiers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from image_folders import write_image_folder
from training_helpers import REPO, TINY, overrides, prompt_method_files

from clipdistill import cli

COMMAND_MODULES = ["train", "eval", "export", "protocols", "filter", "assign", "demo", "assets", "list"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "clipdistill.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_subcommand_has_help_with_its_name(capsys):
    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(f"  {name}" in usage for name in COMMAND_MODULES)
    for name in COMMAND_MODULES:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: clipdistill {name}" in capsys.readouterr().out
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_every_shipped_config_in_the_help_texts_resolves(capsys):
    """The examples in the help texts name shipped configs that exist (`-c experiment/x.yaml`)."""
    from clipcore.config import find_config_file
    from clipdistill.app import register_config_sections

    register_config_sections()
    named = set()
    for name in COMMAND_MODULES:
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        named |= set(re.findall(r"-c\s+([A-Za-z0-9_/.-]+\.yaml)", capsys.readouterr().out))
    assert {"experiment/b2n_coop_kdpl_vit_b32_pets.yaml", "method/coop.yaml", "trainer/cpu.yaml"} <= named
    assert [n for n in named if find_config_file(n) is None] == []


def test_list_shows_templates_configs_and_methods(capsys):
    for what in ("templates", "configs", "methods", "datasets"):
        assert cli.main(["list", what]) == 0
    out = capsys.readouterr().out
    assert "imagenet80   80 templates" in out and "cifar18      18 templates" in out
    assert "trainer/cpu.yaml" in out and "experiment/spectralgcd_cub.yaml" in out
    assert "zeroshot" in out and "kdpl_ca" in out and "image_folder" in out


def test_shipped_configs_load_by_name_from_any_directory(tmp_path):
    """`-c trainer/cpu.yaml` from outside the checkout: the package data, not ./configs."""
    result = subprocess.run(
        [sys.executable, "-c", "from clipdistill.app import load_run_config; "
                               "cfg = load_run_config(['trainer/cpu.yaml', 'method/coop.yaml'], []); "
                               "print(cfg.method, cfg.trainer.accelerator)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["coop", "cpu"]
    missing = run_cli("train", "-c", "trainer/no-such.yaml", cwd=tmp_path)
    assert missing.returncode == 2
    assert "config file not found: trainer/no-such.yaml (looked for it as a path or among the shipped configs" \
        in missing.stderr and "Traceback" not in missing.stderr


def _snippet() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- snippet: baked-classifier -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def coop_run(tmp_path_factory):
    """CoOp trained 1 epoch on an image folder, with the student as a local-dir bundle (so plain
    open_clip can load it by name)."""
    from clipcore.backbone import load_backbone
    from clipcore.bundle import save_local_dir
    from clipdistill import train

    root = tmp_path_factory.mktemp("bake")
    bundle = save_local_dir(load_backbone("tiny", config=str(TINY)), None, root / "student-bundle")
    folder = write_image_folder(root / "photos")
    files = [str(f) for f in prompt_method_files("coop", "supervised")]
    args = overrides(folder, root / "runs", experiment="bake", data__name="image_folder", data__root=str(folder),
                     trainer__max_epochs=1, student__name=f"local-dir:{bundle}", student__config="null",
                     optim__lr=0.5)
    assert train.main(sum([["-c", f] for f in files], []) + args) == 0
    return next((root / "runs" / "bake").iterdir())


def test_the_readme_snippet_classifies_with_a_baked_classifier(coop_run, tmp_path, monkeypatch):
    from PIL import Image

    from clipcore import runner

    classes = ["red fox", "a zebra", "golden retriever"]  # not the training list
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    ckpt = coop_run / "checkpoints" / "last.ckpt"
    assert cli.main(["export", "--ckpt", str(ckpt), "--classes", str(tmp_path / "classes.txt"),
                     "--out", str(tmp_path / "clf")]) == 0
    info = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert info["classnames"] == classes and info["open_clip"]["model_name"].startswith("local-dir:")
    Image.open(next((coop_run.parent.parent.parent / "photos" / "test" / "red_fox").iterdir())).save(
        tmp_path / "photo.jpg")

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_snippet(), "README.md (baked-classifier)", "exec"), namespace)  # the lines as printed

    _, module, _ = runner.module_from_checkpoint(ckpt)
    module.learner.set_classnames(classes)
    module.eval()
    with torch.no_grad():
        expected = module.learner(namespace["image"]).logits.softmax(dim=-1)
    torch.testing.assert_close(namespace["probs"], expected, atol=1e-5, rtol=1e-4)
    # The same baked from the run's export.
    assert cli.main(["export", "--export", str(coop_run / "exports" / "final"), "--classes",
                     str(tmp_path / "classes.txt"), "--out", str(tmp_path / "clf2")]) == 0
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(tmp_path / "clf2" / "classifier.safetensors")["classifier"],
                               load_file(tmp_path / "clf" / "classifier.safetensors")["classifier"])


def test_baking_refuses_what_it_cannot_do(coop_run, tmp_path, capsys):
    from clipcore.config import ConfigError, load_config
    from clipdistill.app import register_config_sections
    from kdpl.classifier import bake_classifier

    register_config_sections()
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    ckpt = str(coop_run / "checkpoints" / "last.ckpt")
    assert cli.main(["export", "--ckpt", ckpt, "--classes", str(tmp_path / "classes.txt"),
                     "--out", str(coop_run)]) == 2
    assert "already exists; choose another path (nothing was written)" in capsys.readouterr().err
    (tmp_path / "twice.txt").write_text("cat\ncat\n")
    assert cli.main(["export", "--ckpt", ckpt, "--classes", str(tmp_path / "twice.txt"),
                     "--out", str(tmp_path / "x")]) == 2
    assert "lists 'cat' more than once" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'vpt' prompts the image tower.*text-only learners"):
        bake_classifier(load_config([], ["method=vpt"]), {}, {}, ["cat"])
    with pytest.raises(SystemExit):
        cli.main(["export", "--export", str(coop_run / "exports" / "final")])
    assert "pass --classes FILE" in capsys.readouterr().err
