"""Config loading: merge order, includes, overrides, and errors that name the key and source."""
import re
from pathlib import Path

import pytest

from clipcore.config import ConfigError, from_plain, load_config, read_stored, save_config, to_plain
from clipdistill.app import CONFIG_DIR


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


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size=0: expected a value >= 1"),
    ("data.num_shots=-1", "data.num_shots=-1: expected a value >= 0"),
    ("data.min_crop_scale=0", "data.min_crop_scale=0.0: expected a value > 0 and <= 1"),
    ("data.max_corrupt_fraction=1.5", "data.max_corrupt_fraction=1.5: expected a value >= 0 and <= 1"),
    ("optim.lr=-0.1", "optim.lr=-0.1: expected a value >= 0"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2: expected a value >= -1"),
    ("tpt.views=0", "tpt.views=0: expected a value >= 1"),
    ("objective.k_max=0", "objective.k_max=0: expected a value >= 1"),  # KDPL-CA's own section
    ("gcd.tau=0", "gcd.tau=0.0: expected a value > 0"),
    ("gcd.loss.teacher_temp=-1", "gcd.loss.teacher_temp=-1.0: expected a value > 0"),  # a subsection
    ("data.prop_train_labels=0", "data.prop_train_labels=0.0: expected a value > 0 and <= 1"),
])
def test_numbers_out_of_range_are_refused_naming_the_key_and_the_bound(override, message):
    method = "spectralgcd" if override.startswith(("gcd.", "data.prop")) else "coop"
    objective = [CONFIG_DIR / "objective" / "kdpl_ca.yaml"] if override.startswith("objective.") else []
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config([CONFIG_DIR / "method" / f"{method}.yaml", *objective], [override])


def test_range_bounds_themselves_and_nulls_are_accepted():
    cfg = load_config([CONFIG_DIR / "method" / "coop.yaml"], [
        "data.batch_size=1", "data.num_shots=0", "data.min_crop_scale=1", "data.image_size=null",
        "trainer.max_epochs=-1", "trainer.max_steps=100", "optim.lr=0"])
    assert (cfg.data.batch_size, cfg.data.num_shots, cfg.data.image_size, cfg.trainer.max_epochs) == (1, 0, None, -1)
    # A key the method does not read is not checked (GCD has no few-shot count).
    assert "num_shots" not in load_config([CONFIG_DIR / "method" / "spectralgcd.yaml"]).data


def test_a_zero_batch_size_stops_the_cli_with_one_line(tmp_path, capsys):
    from clipdistill import train

    assert train.main(["-c", str(CONFIG_DIR / "method" / "coop.yaml"), "data.batch_size=0",
                       f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size=0: expected a value >= 1" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing was started


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


# -- keys a method does not read ----------------------------------------------------------------
def test_a_key_of_another_method_is_an_error_naming_who_reads_it():
    with pytest.raises(ConfigError, match=r"'gcd.tau' is not read by method 'coop' \(it is read by spectralgcd"):
        load_config([], ["method=coop", "gcd.tau=0.1"])
    with pytest.raises(ConfigError, match=r"'data.num_shots' is not read by method 'spectralgcd'.*coop"):
        load_config([], ["method=spectralgcd", "data.num_shots=4"])
    with pytest.raises(ConfigError, match=r"'objective.k_max' is not read by method 'coop'.*objective.name=kdpl_ca"):
        load_config([], ["method=coop", "objective.name=kdpl", "objective.k_max=5"])
    with pytest.raises(ConfigError, match=r"'prompt.depth' is not read by method 'coop'.*maple"):
        load_config([], ["method=coop", "prompt.depth=3"])
    # Typos stay typos.
    with pytest.raises(ConfigError, match=r"unknown config key 'prompt.n_ctxx'. Valid keys under 'prompt'"):
        load_config([], ["method=coop", "prompt.n_ctxx=3"])


def test_one_optim_section_for_every_method():
    gcd = load_config([], ["method=spectralgcd"])
    assert (gcd.optim.lr, gcd.optim.group_lr, gcd.optim.warmup_epochs) == (0.1, {"backbone": 0.005}, 0)
    assert load_config([], ["method=spectralgcd", "optim.lr=0.2"]).optim.lr == 0.2
    assert load_config([], ["method=coop"]).optim.group_lr == {}


def test_group_lr_may_only_name_the_methods_parameter_groups():
    import torch

    from clipcore.schedule import optimizer_with_schedule

    cfg = load_config([], ["method=spectralgcd", "optim.group_lr.head=0.3"])
    params = {name: [torch.nn.Parameter(torch.zeros(2))] for name in ("backbone", "head", "ln_t")}
    groups = optimizer_with_schedule(params, cfg.optim, 10)["optimizer"].param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 0.005), ("head", 0.3), ("ln_t", 0.1)]
    bad = load_config([], ["method=spectralgcd", "optim.group_lr.prompt=0.3"])
    with pytest.raises(ConfigError, match=r"optim.group_lr names parameter groups \['prompt'\]"):
        optimizer_with_schedule(params, bad.optim, 10)


def test_override_values_yaml_cannot_read_are_taken_as_text():
    cfg = load_config([], ['zeroshot.templates=a photo of the number: "{}".'])
    assert cfg.zeroshot.templates == 'a photo of the number: "{}".'
    assert load_config([], ["zeroshot.templates=a {} of: colours"]).zeroshot.templates == "a {} of: colours"
    assert load_config([], ["data.template=a {c} of: colours"]).data.template == "a {c} of: colours"
    listed = load_config([], ['zeroshot.templates=["a photo of a {}.","a drawing of a {}."]']).zeroshot.templates
    assert list(listed) == ["a photo of a {}.", "a drawing of a {}."]
    assert load_config([], ["optim.group_lr={prompt: 0.5}"]).optim.group_lr == {"prompt": 0.5}  # braces: a mapping
    assert load_config([], ["seed=3"]).seed == 3  # YAML still reads what it can
    with pytest.raises(ConfigError, match=r"invalid value for 'seed'"):
        load_config([], ["seed=three"])


# -- configs stored by the previous version (v0.1: flat prompt, kdpl.*, GCD optimiser in gcd) ------
STORED = Path(__file__).resolve().parent / "assets" / "stored_configs"


def test_a_v01_prompt_config_loads_in_the_current_keys():
    import yaml

    old = yaml.safe_load((STORED / "v0.1-coop-kdpl_ca.yaml").read_text())
    assert "kdpl" in old and "gcd" in old and "depth" in old["prompt"]  # the old layout
    cfg = load_config(base=old)
    assert (cfg.objective.name, cfg.objective.k_max, cfg.seed) == ("kdpl_ca", 64, 3)
    assert cfg.objective.dictionary == "spectralgcd/openimages_dictionary.csv"
    assert set(cfg.prompt) == {"text_chunk_size", "init_std", "n_ctx", "ctx_init", "class_token_position",
                               "class_specific"}
    assert "gcd" not in cfg and "prop_train_labels" not in cfg.data
    # Resuming a run stored in the old layout with the equivalent new command line sees no change.
    from clipcore.resume import config_changes

    new = load_config([CONFIG_DIR / "method" / "coop.yaml", CONFIG_DIR / "objective" / "kdpl_ca.yaml",
                       CONFIG_DIR / "data" / "dtd.yaml"],
                      ["objective.k_max=64", "seed=3", "student.name=synthetic-student", "student.pretrained=null",
                       "teacher.name=ViT-H-14-quickgelu"])
    assert config_changes(read_stored(old), to_plain(new)) == {}


def test_a_v01_gcd_config_moves_its_optimiser_and_loss():
    import yaml

    cfg = load_config(base=yaml.safe_load((STORED / "v0.1-spectralgcd.yaml").read_text()))
    assert (cfg.optim.lr, cfg.optim.group_lr, cfg.optim.weight_decay, cfg.optim.eta_min_ratio) == (
        0.2, {"backbone": 0.005, "ln_t": 0.1}, 5e-5, 1e-3)
    assert cfg.gcd.loss.info_nce_temperature == 0.5 and cfg.gcd.loss.sup_weight == 0.35
    assert "num_shots" not in cfg.data and cfg.data.prop_train_labels == 0.5


@pytest.mark.parametrize("override, message", [
    ("zeroshot.templates=a photo of a dog.", r"zeroshot.templates='a photo of a dog.' is neither a template"),
    ('zeroshot.templates=["a photo of a {}.","no placeholder"]', r"zeroshot.templates\[1\]='no placeholder' has no "
                                                                 r"class-name placeholder"),
    ("data.template=a photo", r"data.template='a photo' has no class-name placeholder"),
    ("data.template=a {name}", r"data.template='a \{name\}': unknown placeholder\(s\) \{name\}"),
    ("data.template=a {} or {c}", r"mixes \{\} and \{c\}"),
    ("data.template=a {", r"data.template='a \{': .*expected a class-name placeholder"),
    ("method=coop objective.name=kdpl objective.teacher_template=x",
     r"objective.teacher_template='x' has no class-name placeholder"),
    ("method=spectralgcd gcd.template=concept", r"gcd.template='concept' has no class-name placeholder"),
])
def test_templates_without_a_placeholder_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], override.split(" ") if override.startswith("method=") else [override])


def test_both_placeholders_fill_the_class_name():
    from clipcore.classnames import prompts_for

    assert prompts_for("a photo of a {}.", ["golden_retriever"]) == ["a photo of a golden retriever."]
    assert prompts_for("a {c} ({c}), {{literal}}", ["cat"]) == ["a cat (cat), {literal}"]


def test_a_v01_zero_shot_template_becomes_a_template_list():
    cfg = load_config(base={"method": "zeroshot", "zeroshot": {"model": "student", "template": "a {} photo."}})
    assert list(cfg.zeroshot.templates) == ["a {} photo."]


# -- merging cost: one merge of the combined pieces, schemas built once ----------------------------
PROMPT_METHODS = ["coop", "cocoop", "vpt", "maple", "promptsrc", "promptsrc_xd", "kgcoop", "clip_lora"]
COMPOSED = (
    [[f"method/{m}.yaml", f"objective/{o}.yaml"] for m in PROMPT_METHODS
     for o in ("supervised", "kdpl", "kdpl_ca", "upl", "promptkd")]
    + [["method/coop.yaml", "objective/kdpl.yaml", "eval/tpt.yaml", "trainer/ddp.yaml", "backbone/rn50.yaml",
        "data/oxford_pets.yaml"]]
    + [[str(p.relative_to(CONFIG_DIR))] for p in sorted((CONFIG_DIR / "experiment").glob("*.yaml"))]
)
OVERRIDES = ["trainer.max_epochs=3", "seed=7", "optim.lr=1e-3"]
TEMPLATE = "data.template=a photo of: {}."  # YAML reads it as a mapping: kept as text


def _piece_by_piece(cfg, pieces, combined):
    from clipcore import config

    for piece in pieces:
        cfg = config._apply(cfg, piece)
    return cfg


@pytest.mark.parametrize("files", COMPOSED, ids=lambda f: "+".join(Path(x).stem for x in f))
def test_one_merge_of_the_combined_pieces_equals_merging_them_one_by_one(files, monkeypatch):
    from clipcore import config

    paths = [CONFIG_DIR / f for f in files]
    overrides = OVERRIDES + ([] if "gcd" in files[0] else [TEMPLATE])
    applied = []
    real_apply = config._apply
    monkeypatch.setattr(config, "_apply", lambda cfg, piece: applied.append(piece) or real_apply(cfg, piece))
    fast = load_config(paths, overrides)
    fast_stored = load_config([], ["trainer.max_epochs=9"], base=fast)
    assert applied == []  # the single merge was taken, not the fallback
    monkeypatch.setattr(config, "merge_pieces", _piece_by_piece)
    slow = load_config(paths, overrides)
    assert to_plain(fast) == to_plain(slow)
    assert to_plain(fast_stored) == to_plain(load_config([], ["trainer.max_epochs=9"], base=slow))
    assert fast.trainer.max_epochs == 3 and fast_stored.trainer.max_epochs == 9


def test_a_failing_merge_still_names_the_file_at_fault(tmp_path):
    good = write(tmp_path / "good.yaml", "trainer:\n  max_epochs: 3\n")
    bad = write(tmp_path / "bad.yaml", "trainer:\n  max_epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*trainer\.max_epochs"):
        load_config([good, bad], ["seed=3"])
    with pytest.raises(ConfigError, match=r"override 'trainer\.nope=1'"):
        load_config([good], ["trainer.nope=1"])


def test_schemas_are_built_once_and_handed_out_as_copies():
    from clipcore import config_schema as config

    first = config.schema("coop", {"objective": {"name": "kdpl"}})
    first.trainer.max_epochs = 123
    first.data.batch_size = 1
    again = config.schema("coop", {"objective": {"name": "kdpl"}})
    assert again.trainer.max_epochs != 123 and again.data.batch_size != 1
    assert config.shared_schema("coop", {"objective": {"name": "kdpl"}}) is config.shared_schema(
        "coop", {"objective": {"name": "kdpl"}})
