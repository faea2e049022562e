"""Config loading: merge order, includes, overrides, and errors that name the key and source."""
from pathlib import Path

import pytest

from clipcore.config import ConfigError, load_config, save_config, from_plain, to_plain


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_files_merge_in_order_then_overrides(tmp_path):
    a = write(tmp_path / "a.yaml", "trainer:\n  max_epochs: 3\n  precision: 32-true\nseed: 5\n")
    b = write(tmp_path / "b.yaml", "trainer:\n  max_epochs: 7\n")
    cfg = load_config([a, b], ["seed=9"])
    assert cfg.trainer.max_epochs == 7  # later file wins
    assert cfg.trainer.precision == "32-true"  # untouched keys survive
    assert cfg.seed == 9  # overrides win over files


def test_include_is_merged_before_the_including_file(tmp_path):
    write(tmp_path / "base.yaml", "trainer:\n  max_epochs: 2\n  log_every_n_steps: 4\n")
    top = write(tmp_path / "top.yaml", "include: [base.yaml]\ntrainer:\n  max_epochs: 9\n")
    cfg = load_config([top])
    assert (cfg.trainer.max_epochs, cfg.trainer.log_every_n_steps) == (9, 4)


def test_shipped_trainer_groups_load():
    root = Path(__file__).resolve().parents[1] / "configs" / "trainer"
    for name in ("cpu", "gpu", "ddp", "debug"):
        cfg = load_config([root / f"{name}.yaml"])
        assert cfg.trainer.accelerator in ("cpu", "gpu")
    assert load_config([root / "ddp.yaml"]).trainer.strategy == "ddp"


def test_unknown_key_lists_valid_keys_and_names_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "trainer:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    message = str(err.value)
    assert "trainer.max_epoch" in message and str(bad) in message
    assert "max_epochs" in message and "precision" in message  # the valid keys beside it


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs"):
        load_config([], ["trainer.max_epochs=lots"])


def test_override_without_equals_is_explained():
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["trainer.max_epochs"])


def test_missing_file_and_include_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    write(tmp_path / "x.yaml", "include: [y.yaml]\n")
    write(tmp_path / "y.yaml", "include: [x.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config([tmp_path / "x.yaml"])


def test_overlay_on_stored_config_keeps_explicit_defaults(tmp_path):
    stored = load_config([], ["data.subsample_classes=base", "seed=3"])
    # Setting a key back to its default value must still take effect on top of a stored run.
    again = load_config([], ["data.subsample_classes=all"], base=from_plain(to_plain(stored)))
    assert again.data.subsample_classes == "all" and again.seed == 3


def test_saved_config_round_trips(tmp_path):
    cfg = load_config([], ["trainer.max_epochs=4", "data.name=dtd"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config([tmp_path / "run" / "config.yaml"]) == cfg
