"""Small runs of the real entry points on the tiny model and a generated CoOp-layout dataset."""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from coop_layouts import write_coop_dataset

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
CONFIG_DIR = REPO / "configs"
TINY = TESTS_DIR / "assets" / "tiny-clip.json"
TINY_TEACHER = TESTS_DIR / "assets" / "tiny-teacher.json"
CLASSES = ["cat", "dog", "bird", "fish"]
DICTIONARY = ["apple", "tree", "house", "car", "boat", "river", "mountain", "chair", "lamp", "guitar",
              "violin", "pizza", "bread", "castle", "bridge", "tiger", "zebra", "owl", "shark", "rose",
              "tulip", "cactus", "rocket", "train", "bicycle", "helmet", "kettle", "clock", "piano", "drum"]


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
        "student.pretrained": "null",
        "teacher.name": "tiny-teacher",
        "teacher.config": str(TINY_TEACHER),
        "teacher.pretrained": "null",
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


def epochs_done(checkpoint: dict) -> int:
    """Completed epochs of a checkpoint, as the fit loop counts them (an epoch-end checkpoint is
    written in ``on_train_epoch_end``, where Lightning's ``epoch`` field still names that epoch)."""
    return checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


def write_class_dictionary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ClassName\n" + "\n".join(DICTIONARY) + "\n")
    return path


def prompt_method_files(learner: str, objective: str) -> list[Path]:
    return [CONFIG_DIR / "method" / f"{learner}.yaml", CONFIG_DIR / "objective" / f"{objective}.yaml"]


def tiny_prompt_settings(learner: str) -> dict:
    """The learner's own settings for the 2-block tiny CLIPs, as ``prompt__<key>`` overrides."""
    from kdpl.prompts.registry import learner_class

    return {f"prompt__{k}": v for k, v in learner_class(learner).tiny_test_settings.items()}


def objective_settings(objective: str, dictionary: Path, cache: Path) -> dict:
    """Test settings of the keys ``objective`` reads (KDPL-CA: a small dictionary, top-5)."""
    from dataclasses import fields

    from kdpl.config import declared_objectives

    known = {f.name for f in fields(declared_objectives()[objective].config)}
    wanted = {"k_max": 5, "dictionary": str(dictionary), "text_cache_dir": str(cache), "cache_dir": str(cache)}
    if "teacher_export" in known:
        wanted["teacher_export"] = str(tiny_teacher_export())
    return {f"objective__{k}": v for k, v in wanted.items() if k in known}


@functools.lru_cache(maxsize=None)
def tiny_teacher_export() -> Path:
    """A CoOp export trained (one epoch) on the tiny teacher model: PromptKD's teacher in the tests.
    Built once per test process, in a temporary folder."""
    from clipcore import runner
    from clipcore.config import load_config

    root = Path(tempfile.mkdtemp(prefix="promptkd-teacher-"))
    data = tiny_dataset(root / "data", classes=CLASSES)
    settings = overrides(data, root / "runs", method="coop", student__name="tiny-teacher",
                         student__config=str(TINY_TEACHER), trainer__max_epochs=1, data__subsample_classes="base",
                         export="true", experiment="teacher")
    run = runner.train(load_config(prompt_method_files("coop", "supervised"), settings))
    return run / "exports" / "final"


def prompt_overrides(data_root: Path, out: Path, dictionary: Path, cache: Path, learner: str = "coop",
                     objective: str = "supervised", **extra) -> list[str]:
    """A quick CPU run of the shipped ``learner`` x ``objective`` configs on the tiny CLIPs."""
    settings = {"method": learner, "trainer__max_epochs": 2, "trainer__limit_train_batches": 2,
                "prompt__text_chunk_size": 64, **tiny_prompt_settings(learner),
                **objective_settings(objective, dictionary, cache)}
    settings.update(extra)
    return overrides(data_root, out, **settings)


def gcd_overrides(root: Path, data: Path, dictionary: Path, **extra) -> list[str]:
    """A quick CPU run of 2 epochs x 4 steps (36 train images, batches of 8)."""
    base = {
        "method": "spectralgcd", "experiment": "gcd", "output_dir": str(root / "runs"), "seed": 3,
        "student.name": "tiny", "student.config": str(TINY), "student.pretrained": "null",
        "teacher.name": "tiny-teacher", "teacher.config": str(TINY_TEACHER), "teacher.pretrained": "null",
        "data.name": "image_folder", "data.root": str(data), "data.batch_size": 8,
        "data.eval_batch_size": 16, "data.num_workers": 0,
        "trainer.accelerator": "cpu", "trainer.precision": "32-true", "trainer.max_epochs": 2,
        "trainer.check_val_every_n_epoch": 1, "trainer.enable_progress_bar": False,
        "trainer.deterministic": True, "trainer.log_every_n_steps": 1, "logger.wandb.mode": "disabled",
        "gcd.dictionary": str(dictionary), "gcd.teacher_cache_dir": str(root / "cache"),
        "gcd.feature_dim": 32, "gcd.head_hidden_dim": 64, "gcd.head_bottleneck_dim": 32,
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]
