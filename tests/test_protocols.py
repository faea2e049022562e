"""Protocol runner and seed aggregation (kdpl spec §4, the GCD tables).

Aggregation is checked on hand-made numbers; the runner end to end
(``python -m clipdistill.protocols``) on the tiny CLIPs and tiny datasets, including the reuse
of finished runs, the GCD protocol, and the sweep backends (printed commands, parallel local
processes, submitit's local executor).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from training_helpers import TINY, TINY_TEACHER, tiny_dataset

from clipcore.config import ConfigError, load_config
from clipdistill.app import register_methods
from clipdistill.protocols import Execution, get_protocol, run_protocol
from clipdistill.protocols.__main__ import main as protocols_main
from clipdistill.protocols.base import MethodSpec
from clipdistill.protocols.kdpl_protocols import parse_prompt_method
from clipdistill.protocols.results import SeedResult, harmonic_mean, to_csv

register_methods()


def aggregate(protocol, results, source="imagenet"):
    return get_protocol(protocol).aggregate(results, source)


def to_markdown(protocol, cells, source="imagenet"):
    return get_protocol(protocol).markdown(cells, source)


def r(method, dataset, metric, seed, value):
    return SeedResult(method, dataset, metric, seed, value)


def cells_by_key(cells):
    return {(c.method, c.dataset, c.metric): c for c in cells}


def test_b2n_aggregate_mean_population_std_and_hm_of_means():
    results = [r("coop", "pets", "base", 1, 0.8), r("coop", "pets", "base", 2, 0.6),
               r("coop", "pets", "novel", 1, 0.5), r("coop", "pets", "novel", 2, 0.7),
               r("coop", "dtd", "base", 1, 0.9), r("coop", "dtd", "novel", 1, 0.3)]
    cells = cells_by_key(aggregate("b2n", results))
    assert cells["coop", "pets", "base"].mean == pytest.approx(0.7)
    assert cells["coop", "pets", "base"].std == pytest.approx(0.1)  # population, not sample (0.141)
    assert cells["coop", "pets", "novel"].std == pytest.approx(0.1)
    assert cells["coop", "pets", "hm"].mean == pytest.approx(2 * 0.7 * 0.6 / 1.3)
    assert cells["coop", "dtd", "hm"].mean == pytest.approx(0.45)
    assert cells["coop", "dtd", "base"].std == 0.0 and cells["coop", "dtd", "base"].n == 1
    # Dataset average: mean Base 0.8, mean Novel 0.45, HM of those means (not the mean of HMs, 0.548).
    assert cells["coop", "average", "base"].mean == pytest.approx(0.8)
    assert cells["coop", "average", "novel"].mean == pytest.approx(0.45)
    assert cells["coop", "average", "hm"].mean == pytest.approx(0.576)
    table = to_markdown("b2n", aggregate("b2n", results))
    assert "| coop | pets | 70.00 ± 10.00 | 60.00 ± 10.00 | 64.62 | 2 |" in table
    assert "| coop | **Average** | 80.00 | 45.00 | 57.60 | 2 datasets |" in table


def test_xd_average_excludes_the_source_dataset():
    results = [r("coop", "imagenet", "acc", s, v) for s, v in ((1, 0.6), (2, 0.7))]
    results += [r("coop", "dtd", "acc", 1, 0.4), r("coop", "dtd", "acc", 2, 0.5),
                r("coop", "eurosat", "acc", 1, 0.2), r("coop", "eurosat", "acc", 2, 0.2),
                r("zeroshot", "imagenet", "acc", 1, 0.5), r("zeroshot", "dtd", "acc", 1, 0.1),
                r("zeroshot", "eurosat", "acc", 1, 0.3)]
    cells = cells_by_key(aggregate("xd", results))
    assert cells["coop", "average", "acc"].mean == pytest.approx((0.45 + 0.2) / 2)
    assert cells["zeroshot", "average", "acc"].mean == pytest.approx(0.2)
    assert cells["coop", "imagenet", "acc"].std == pytest.approx(0.05)
    table = to_markdown("xd", aggregate("xd", results)).splitlines()
    assert table[0] == "| Method | imagenet | dtd | eurosat | Average |"
    assert table[2] == "| coop | 65.00 ± 5.00 | 45.00 ± 5.00 | 20.00 ± 0.00 | 32.50 |"
    rows = list(csv.DictReader(io.StringIO(to_csv(aggregate("xd", results)))))
    assert {"method": "coop", "dataset": "average", "metric": "acc", "mean": "0.325000", "std": "", "n": "2"} in rows


def test_aggregate_refuses_a_seed_counted_twice_and_unknown_protocols():
    with pytest.raises(ValueError, match="duplicate"):
        aggregate("dg", [r("coop", "imagenet_a", "acc", 1, 0.1), r("coop", "imagenet_a", "acc", 1, 0.2)])
    with pytest.raises(ConfigError, match="unknown protocol 'fewshot'"):
        get_protocol("fewshot")
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_gcd_aggregate_averages_every_metric_over_datasets():
    results = [r("spectralgcd", d, m, s, v) for d, m, s, v in (
        ("cub", "transductive/all_v2", 1, 0.6), ("cub", "transductive/all_v2", 2, 0.8),
        ("scars", "transductive/all_v2", 1, 0.4), ("cub", "inductive/new_v1", 1, 0.3))]
    cells = cells_by_key(aggregate("gcd", results))
    assert cells["spectralgcd", "cub", "transductive/all_v2"].mean == pytest.approx(0.7)
    assert cells["spectralgcd", "cub", "transductive/all_v2"].std == pytest.approx(0.1)
    assert cells["spectralgcd", "average", "transductive/all_v2"].mean == pytest.approx(0.55)
    assert cells["spectralgcd", "average", "inductive/new_v1"].n == 1
    table = to_markdown("gcd", aggregate("gcd", results))
    assert "| spectralgcd | cub | 70.00 ± 10.00 | – | – | – | – | – | 2 |" in table
    assert "### Hungarian accuracy v1" in table


def cell_config(protocol, label, dataset, seed):
    (run,) = get_protocol(protocol).runs([label], [dataset], [seed], [], [], "imagenet")
    return run.config()


def test_method_labels():
    assert parse_prompt_method("coop") == MethodSpec("coop", "coop", "supervised")
    assert parse_prompt_method("maple+kdpl_ca") == MethodSpec("maple+kdpl_ca", "maple", "kdpl_ca")
    assert parse_prompt_method("zeroshot-teacher").variant == "teacher"
    with pytest.raises(ConfigError, match="unknown prompt learner .nope."):
        parse_prompt_method("nope+kdpl")
    with pytest.raises(ConfigError, match="unknown objective 'kd'"):
        parse_prompt_method("coop+kd")
    cfg = cell_config("xd", "promptsrc+kdpl", "imagenet", 2)
    assert (cfg.prompt.depth, cfg.prompt.gpa_mean, cfg.seed, cfg.data.subsample_classes) == (3, 6.0, 2, "all")
    assert cfg.experiment == "xd-dg/promptsrc+kdpl/imagenet/seed2" and cfg.teacher.pretrained == "dfn5b"
    cfg = cell_config("b2n", "promptsrc", "dtd", 1)
    assert (cfg.prompt.depth, cfg.data.subsample_classes, cfg.objective.name) == (9, "base", "supervised")


def test_upl_cells_and_tpt_evaluations():
    cfg = cell_config("b2n", "coop+upl", "oxford_pets", 1)
    assert (cfg.objective.name, cfg.data.num_shots, cfg.experiment) == ("upl", 16, "b2n/coop+upl/oxford_pets/seed1")
    spec = parse_prompt_method("coop+kdpl@tpt")
    assert (spec.method, spec.variant, spec.tpt) == ("coop", "kdpl", True)
    (run,) = get_protocol("b2n").runs(["coop+kdpl@tpt"], ["dtd"], [1], [], [], "imagenet")
    assert run.config().experiment == "b2n/coop+kdpl@tpt/dtd/seed1"
    # Base and novel are both evaluated from the checkpoint, with TPT on; the training is not.
    assert [(e.name, e.own) for e in run.evaluations] == [("dtd-base-tpt", False), ("dtd-new-tpt", False)]
    assert all("tpt.enabled=true" in e.overrides for e in run.evaluations)
    assert run.config().tpt.enabled is False
    with pytest.raises(ConfigError, match="zero-shot with TPT"):
        parse_prompt_method("zeroshot@tpt")


def test_a_transductive_objective_trains_its_b2n_cell_on_every_class():
    (run,) = get_protocol("b2n").runs(["promptsrc+promptkd"], ["dtd"], [1], [], ["objective.teacher_export=/t"],
                                      "imagenet")
    cfg = run.config()
    assert (cfg.data.subsample_classes, cfg.objective.name, cfg.objective.kd_weight) == ("all", "promptkd", 1000.0)
    assert [(e.name, e.own) for e in run.evaluations] == [("dtd-base", False), ("dtd-new", False)]
    (plain,) = get_protocol("b2n").runs(["promptsrc+promptkd"], ["dtd"], [1], [],
                                        ["objective.transductive=false"], "imagenet")
    assert plain.config().data.subsample_classes == "base" and plain.evaluations[0].own


def tiny_overrides(data: Path, out: Path, **extra) -> list[str]:
    settings = {
        "output_dir": out, "student.name": "tiny", "student.config": TINY, "student.pretrained": "null",
        "teacher.name": "tiny-teacher", "teacher.config": TINY_TEACHER, "teacher.pretrained": "null",
        "data.root": data, "data.num_shots": 4, "data.batch_size": 4, "data.eval_batch_size": 8,
        "data.num_workers": 0, "trainer.accelerator": "cpu", "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 2, "trainer.enable_progress_bar": False, "trainer.deterministic": True,
        "logger.wandb.mode": "disabled", "optim.lr": 0.05, "optim.warmup_epochs": 0,
        # Read by the KDPL cells only: the protocol gives each cell the overrides it reads.
        "objective.text_cache_dir": out.parent / "cache", **extra,
    }
    return [f"{k}={v}" for k, v in settings.items()]


def run_dirs(out: Path) -> set[Path]:
    return {p.parent for p in out.rglob("config.yaml")}


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tiny_dataset(root, "oxford_pets")
    tiny_dataset(root, "dtd", classes=["striped", "dotted", "woven", "cracked"])
    return root


def test_b2n_cli_runs_reuses_and_reruns(tmp_path, two_datasets, capsys, monkeypatch):
    out = tmp_path / "runs"
    argv = ["b2n", "--methods", "coop,zeroshot", "--datasets", "oxford_pets,dtd", "--seeds", "1",
            *tiny_overrides(two_datasets, out)]
    assert protocols_main(argv) == 0
    printed = capsys.readouterr().out
    table = (out / "b2n" / "results.md").read_text()
    assert table in printed and "| Method | Dataset | Base | Novel | HM | Seeds |" in table
    for method in ("coop", "zeroshot"):
        for dataset in ("oxford_pets", "dtd", "**Average**"):
            assert f"| {method} | {dataset} |" in table
    rows = list(csv.DictReader(open(out / "b2n" / "results.csv")))
    assert len(rows) == 2 * 3 * 3  # 2 methods x (2 datasets + average) x (base, novel, hm)
    first = run_dirs(out)
    assert len(first) == 4  # 2 coop trainings + 2 zero-shot folders
    run = next(iter((out / "b2n" / "coop" / "dtd" / "seed1").iterdir()))
    assert (run / "eval" / "dtd-new" / "metrics.json").is_file()
    record = json.loads((run / "protocol-b2n.json").read_text())
    base = json.loads((run / "eval" / "metrics.json").read_text())["test/acc"]
    assert record["results"][0] == {"dataset": "dtd", "metric": "base", "value": base}

    # Everything finished: a rerun trains and evaluates nothing and writes the same table.
    from clipcore import runner

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(runner, "train", refuse)
    monkeypatch.setattr(runner, "evaluate", refuse)
    assert protocols_main(argv) == 0
    assert run_dirs(out) == first and (out / "b2n" / "results.md").read_text() == table
    monkeypatch.undo()

    # Another hyper-parameter is another config: new runs (coop only; zero-shot does not use optim.lr).
    changed = ["b2n", "--methods", "coop", "--datasets", "dtd", "--seeds", "1",
               *tiny_overrides(two_datasets, out, **{"optim.lr": 0.01})]
    assert protocols_main(changed) == 0
    assert len(run_dirs(out) - first) == 1

    # The aggregate command rebuilds the tables from the finished runs' records (newest per cell).
    (out / "b2n" / "results.md").unlink()
    assert protocols_main(["aggregate", "--root", str(out)]) == 0
    rebuilt = (out / "b2n" / "results.md").read_text()
    assert "| coop | oxford_pets |" in rebuilt and "| zeroshot | dtd |" in rebuilt


def tiny_weights_file(path: Path, seed: int) -> Path:
    """The tiny CLIP's weights, drawn with ``seed``, as a safetensors file."""
    import torch
    from safetensors.torch import save_file

    from clipcore.backbone import load_backbone

    torch.manual_seed(seed)
    model = load_backbone("tiny", None, config=str(TINY)).model
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_a_finished_cell_is_trained_again_when_its_weights_file_was_replaced(tmp_path, two_datasets, caplog):
    out = tmp_path / "runs"
    weights = tiny_weights_file(tmp_path / "student.safetensors", seed=0)
    argv = ["b2n", "--methods", "coop,zeroshot", "--datasets", "dtd", "--seeds", "1",
            *tiny_overrides(two_datasets, out, **{"student.pretrained": weights})]
    assert protocols_main(argv) == 0
    first = run_dirs(out)
    assert len(first) == 2
    assert all(str(weights) in json.loads((run / "input_files.json").read_text()) for run in first)
    assert protocols_main(argv) == 0 and run_dirs(out) == first  # unchanged: reused

    tiny_weights_file(weights, seed=1)  # other weights under the same path
    with caplog.at_level("INFO", logger="clipdistill.protocols.runner"):
        assert protocols_main(argv) == 0
    second = run_dirs(out) - first
    assert len(second) == 2  # coop trained again, zero-shot evaluated again
    assert caplog.text.count(f"{weights} changed since it ran") == 2
    assert protocols_main(argv) == 0 and run_dirs(out) == first | second  # the new runs are reused


def test_xd_and_dg_share_the_source_run(tmp_path, two_datasets):
    out = tmp_path / "runs"
    overrides = tiny_overrides(two_datasets, out)
    outcome = run_protocol("xd", ["coop+kdpl"], ["dtd"], [1], [], overrides, source="oxford_pets")
    assert outcome.table_dir == out / "xd"
    by_key = cells_by_key(aggregate("xd", outcome.results, "oxford_pets"))
    assert by_key["coop+kdpl", "average", "acc"].mean == by_key["coop+kdpl", "dtd", "acc"].mean
    runs = run_dirs(out)
    assert len(runs) == 1
    run = runs.pop()
    assert (run / "eval" / "dtd-all" / "metrics.json").is_file()
    # dg with the same source reuses the run (here with dtd standing in for a target).
    run_protocol("dg", ["coop+kdpl"], ["dtd"], [1], [], overrides, source="oxford_pets")
    assert run_dirs(out) == {run} and (run / "protocol-dg.json").is_file()
    assert "| Method | oxford_pets | dtd | Average |" in (out / "dg" / "results.md").read_text()

    # A run pre-empted after training, before its final evaluation, is resumed in place.
    from clipcore.status import PREEMPTED, end_attempt

    (run / "eval" / "metrics.json").unlink()
    end_attempt(run, PREEMPTED, "SIGTERM", 143)
    run_protocol("dg", ["coop+kdpl"], ["dtd"], [1], [], overrides, source="oxford_pets")
    assert run_dirs(out) == {run} and (run / "eval" / "metrics.json").is_file()


# -- the GCD protocol ---------------------------------------------------------------------------
def gcd_protocol_args(tmp_path, seeds="1,2"):
    from gcd_layouts import write_dictionary, write_gcd_image_folder

    data = write_gcd_image_folder(tmp_path / "gcd-data")
    dictionary = write_dictionary(tmp_path / "concepts.csv")
    settings = {
        "output_dir": tmp_path / "runs", "student.name": "tiny", "student.config": TINY,
        "student.pretrained": "null", "teacher.name": "tiny-teacher", "teacher.config": TINY_TEACHER,
        "teacher.pretrained": "null", "data.batch_size": 8, "data.eval_batch_size": 16, "data.num_workers": 0,
        "trainer.accelerator": "cpu", "trainer.precision": "32-true", "trainer.max_epochs": 1,
        "trainer.check_val_every_n_epoch": 1, "trainer.enable_progress_bar": False, "trainer.deterministic": True,
        "logger.wandb.mode": "disabled", "gcd.dictionary": dictionary, "gcd.teacher_cache_dir": tmp_path / "cache",
        "gcd.feature_dim": 32, "gcd.head_hidden_dim": 64, "gcd.head_bottleneck_dim": 32,
    }
    return ["gcd", "--methods", "spectralgcd,simgcd", "--datasets", "image_folder", "--seeds", seeds,
            "--data-roots", f"image_folder={data}", *[f"{k}={v}" for k, v in settings.items()]]


def test_gcd_protocol_filters_trains_and_tabulates_all_old_new_in_one_command(tmp_path, capsys, monkeypatch):
    args = gcd_protocol_args(tmp_path)
    assert protocols_main(args) == 0
    table = (tmp_path / "runs" / "gcd" / "results.md").read_text()
    assert table in capsys.readouterr().out
    assert "### Hungarian accuracy v2" in table and "### Hungarian accuracy v1" in table
    for method in ("spectralgcd", "simgcd"):
        assert f"| {method} | image_folder |" in table and f"| {method} | **Average** |" in table
    rows = list(csv.DictReader(open(tmp_path / "runs" / "gcd" / "results.csv")))
    assert {r["metric"] for r in rows} == {f"{s}/{p}_{v}" for s in ("transductive", "inductive")
                                           for p in ("all", "old", "new") for v in ("v2", "v1")}
    image_folder = {r["method"]: r for r in rows
                    if r["dataset"] == "image_folder" and r["metric"] == "transductive/all_v2"}
    assert image_folder["spectralgcd"]["n"] == "2" and image_folder["simgcd"]["n"] == "2"
    # Spectral filtering ran once (the two seeds filter the same inputs), beside the protocol's runs.
    (concepts,) = (tmp_path / "runs" / "gcd" / "concepts").iterdir()
    assert (concepts / "image_folder_concepts.csv").is_file() and (concepts / "filter.json").is_file()
    spectral = next((tmp_path / "runs" / "gcd" / "spectralgcd" / "image_folder" / "seed1").iterdir())
    assert load_config([spectral / "config.yaml"]).gcd.concepts_csv == str(concepts / "image_folder_concepts.csv")

    # A second call reuses everything.
    from clipcore import runner

    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    assert protocols_main(args) == 0


def test_print_backend_prints_ordinary_train_commands_that_run_as_printed(tmp_path, two_datasets, capsys,
                                                                         monkeypatch):
    import shlex
    import subprocess

    out = tmp_path / "runs"
    argv = ["b2n", "--methods", "coop,zeroshot", "--datasets", "dtd", "--seeds", "1,2", "--print",
            *tiny_overrides(two_datasets, out)]
    assert protocols_main(argv) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 2  # the two coop seeds; zero-shot trains nothing
    assert all(" -m clipdistill.train " in c and "seed=1" in c or "seed=2" in c for c in commands)
    assert not out.exists()  # printing runs nothing
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for command in commands:
        subprocess.run(shlex.split(command), check=True, env=env, capture_output=True, timeout=300)
    assert protocols_main(argv) == 0 and capsys.readouterr().out.strip() == "# every cell has finished"
    # Evaluating and tabulating them trains nothing more.
    from clipcore import runner

    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a printed cell was trained again"))
    assert protocols_main([a for a in argv if a != "--print"]) == 0
    assert "| coop | dtd |" in (out / "b2n" / "results.md").read_text()


@pytest.mark.slow
def test_local_backend_trains_cells_in_parallel_processes(tmp_path, two_datasets):
    out = tmp_path / "runs"
    outcome = run_protocol("b2n", ["coop"], ["dtd"], [1, 2], [], tiny_overrides(two_datasets, out),
                           execution=Execution("local", devices=["cpu", "cpu"]))
    assert not outcome.failed and outcome.table_dir == out / "b2n"
    logs = sorted((out / "b2n" / "logs").iterdir())
    assert [p.name for p in logs] == ["coop-dtd-seed1.log", "coop-dtd-seed2.log"]
    assert "| coop | dtd | " in (out / "b2n" / "results.md").read_text()
    assert {r.seed for r in outcome.results} == {1, 2}


@pytest.mark.slow
def test_slurm_backend_with_submitits_local_executor_runs_two_cells_and_aggregates(tmp_path, two_datasets):
    out = tmp_path / "runs"
    outcome = run_protocol("b2n", ["coop"], ["dtd"], [1, 2], [], tiny_overrides(two_datasets, out),
                           execution=Execution("slurm", cluster="local", slurm={"timeout_min": 20}))
    assert not outcome.failed
    assert len(list((out / "b2n" / "submitit").glob("*_result.pkl"))) == 2  # two jobs ran
    rows = [r for r in csv.DictReader(open(out / "b2n" / "results.csv")) if r["dataset"] == "dtd"]
    assert {r["metric"]: r["n"] for r in rows} == {"base": "2", "novel": "2", "hm": "2"}
