"""Small runs of the real entry points on the tiny model and a generated CoOp-layout dataset."""
from __future__ import annotations

import json
from pathlib import Path

from coop_layouts import write_coop_dataset

TESTS_DIR = Path(__file__).resolve().parent
TINY = TESTS_DIR / "assets" / "tiny-clip.json"
TINY_TEACHER = TESTS_DIR / "assets" / "tiny-teacher.json"
CLASSES = ["cat", "dog", "bird", "fish"]


def tiny_dataset(root: Path, name: str = "oxford_pets", classes=CLASSES, n_train: int = 6) -> Path:
    write_coop_dataset(root, name, list(classes), {"train": n_train, "val": 2, "test": 3})
    return root


def overrides(data_root: Path, out: Path, **extra) -> list[str]:
    """Config overrides for a quick CPU run; keyword arguments use ``__`` for dots."""
    base = {
        "method": "coop",
        "experiment": "test",
        "output_dir": str(out),
        "seed": 7,
        "student.name": "tiny",
        "student.config": str(TINY),
        "teacher.name": "tiny-teacher",
        "teacher.config": str(TINY_TEACHER),
        "data.name": "oxford_pets",
        "data.root": str(data_root),
        "data.num_shots": 4,
        "data.batch_size": 4,
        "data.eval_batch_size": 8,
        "data.num_workers": 0,
        "trainer.accelerator": "cpu",
        "trainer.max_epochs": 2,
        "trainer.enable_progress_bar": False,
        "trainer.deterministic": True,
        "trainer.log_every_n_steps": 1,
        "logger.wandb.mode": "disabled",
        "optim.lr": 0.05,
        "optim.warmup_epochs": 0,
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in base.items()]
