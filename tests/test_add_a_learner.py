"""A new prompt learner is one file in kdpl/prompts/ plus one configs/method/<name>.yaml.

In a temporary copy of the project, add exactly those two files and nothing else; then the
registry lists the learner, ``train.py`` trains it, and the registry-parametrized contract tests
run on it (gradients, class selection, state round trips, train/resume/export under every
objective).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import overrides, tiny_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

LEARNER = '''"""A test learner: CoOp's shared context plus a learned per-class bias on the logits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdpl.prompts.base import PromptLearner, PromptOutput
from kdpl.prompts.config import ContextConfig
from kdpl.prompts.registry import register_prompt_learner


@dataclass
class BiasedCoOpConfig(ContextConfig):
    bias_scale: float = 1.0


@register_prompt_learner("biased_coop", config=BiasedCoOpConfig)
class BiasedCoOp(PromptLearner):
    def __init__(self, backbone, classnames: list[str], cfg: Any = None):
        super().__init__(backbone, classnames, cfg)
        ctx, self.prompt_prefix, self.n_ctx = self._init_context(self.cfg.n_ctx, self.cfg.ctx_init,
                                                                 backbone.text_width)
        self.ctx = nn.Parameter(ctx)
        self.bias = nn.Parameter(torch.full((1,), 0.01))
        self._finish_init(classnames)

    def _build_class_buffers(self) -> None:
        self._register_prompt_tokens(self.prompt_prefix, self.n_ctx)

    def encode_class_text(self, class_indices: Optional[Tensor]) -> Tensor:
        return self._encode_prompts(self._assemble(self.ctx, class_indices))

    def forward(self, images: Tensor, class_indices: Optional[Tensor] = None) -> PromptOutput:
        output = super().forward(images, class_indices)
        output.logits = output.logits + self.cfg.bias_scale * self.bias
        return output
'''
METHOD_CONFIG = """method: biased_coop
optim:
  lr: 0.002
data:
  batch_size: 32
trainer:
  max_epochs: 50
prompt:
  ctx_init: a photo of a
  bias_scale: 1.0
"""


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The project's files (as git sees them), plus the learner's file and its config: nothing else."""
    root = tmp_path_factory.mktemp("project")
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (REPO / name).is_symlink():  # ./configs -> clipdistill/configs
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(REPO / name), root / name)
        elif (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / "kdpl" / "prompts" / "biased_coop.py").write_text(LEARNER)
    (root / "configs" / "method" / "biased_coop.yaml").write_text(METHOD_CONFIG)
    return root


def run(copy: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    env.pop("CLIPCORE_RUN_DIR", None)
    return subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_registry_and_the_config_schema_find_the_new_learner(copy):
    probe = ("import kdpl, clipdistill.app as a; a.register_methods(); "
             "from kdpl.config import declared_learners; from clipcore.registry import list_methods; "
             "from clipcore.config import load_config; "
             "print(kdpl.__file__); print(sorted(declared_learners())); print(list_methods()); "
             "print(load_config(['configs/method/biased_coop.yaml']).prompt.bias_scale)")
    result = run(copy, "-c", probe)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(copy))  # the copy, not the checkout, was imported
    assert "biased_coop" in lines[1] and "biased_coop" in lines[2] and lines[3] == "1.0"


def test_train_py_trains_the_new_learner(copy, tmp_path):
    data = tiny_dataset(tmp_path / "data")
    args = [a for a in overrides(data, tmp_path / "runs", trainer__max_epochs=1) if not a.startswith("method=")]
    result = run(copy, "train.py", "-c", "configs/method/biased_coop.yaml", *args, "prompt.bias_scale=2.0")
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (tmp_path / "runs").rglob("last.ckpt")
    import torch

    assert set(torch.load(checkpoint, weights_only=True)["state_dict"]) == {"learner.ctx", "learner.bias"}


def test_the_contract_tests_cover_the_new_learner(copy):
    result = run(copy, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-W", "ignore", "-rA",
                 "tests/test_prompts.py", "tests/test_kdpl_methods.py", "-k", "biased_coop", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    passed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("PASSED ")}
    from kdpl.config import declared_objectives

    expected = {f"tests/test_prompts.py::{name}[biased_coop]" for name in (
        "test_gradients_reach_exactly_the_learned_parameters", "test_class_selection_equals_indexed_full_logits",
        "test_set_classnames_keeps_learned_state_and_transfers", "test_learned_state_round_trip_reproduces_logits")}
    expected |= {f"tests/test_kdpl_methods.py::test_train_resume_export[biased_coop-{objective}]"
                 for objective in declared_objectives()}
    expected.add("tests/test_kdpl_methods.py::test_ddp_on_two_cpu_processes[biased_coop]")
    assert expected <= passed, sorted(expected - passed)
