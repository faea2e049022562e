"""Protocol runner and seed aggregation (kdpl spec §4).

Aggregation is checked on hand-made numbers; the runner end to end (``python -m kdpl.protocols``)
on the tiny CLIPs and tiny CoOp-layout datasets, including the reuse of finished runs.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from clipdistill.app import register_methods
from kdpl import protocols
from kdpl.results import SeedResult, aggregate, harmonic_mean, to_csv, to_markdown
from training_helpers import TINY, TINY_TEACHER, tiny_dataset

register_methods()


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
    with pytest.raises(ValueError, match="unknown protocol"):
        aggregate("fewshot", [])
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_method_labels():
    assert protocols.parse_method("coop") == protocols.MethodSpec("coop", "coop", "supervised")
    assert protocols.parse_method("maple+kdpl_ca") == protocols.MethodSpec("maple+kdpl_ca", "maple", "kdpl_ca")
    assert protocols.parse_method("zeroshot-teacher").objective == "teacher"
    with pytest.raises(ValueError, match="unknown prompt learner .nope."):
        protocols.parse_method("nope+kdpl")
    with pytest.raises(ValueError, match="configs/objective/kd.yaml"):
        protocols.parse_method("coop+kd")
    cfg = protocols.cell_config("xd", protocols.parse_method("promptsrc+kdpl"), "imagenet", 2)
    assert (cfg.prompt.depth, cfg.prompt.gpa_mean, cfg.seed, cfg.data.subsample_classes) == (3, 6.0, 2, "all")
    assert cfg.experiment == "xd-dg/promptsrc+kdpl/imagenet/seed2" and cfg.teacher.pretrained == "dfn5b"
    cfg = protocols.cell_config("b2n", protocols.parse_method("promptsrc"), "dtd", 1)
    assert (cfg.prompt.depth, cfg.data.subsample_classes, cfg.kdpl.objective) == (9, "base", "supervised")


def tiny_overrides(data: Path, out: Path, **extra) -> list[str]:
    settings = {
        "output_dir": out, "student.name": "tiny", "student.config": TINY, "student.pretrained": "null",
        "teacher.name": "tiny-teacher", "teacher.config": TINY_TEACHER, "teacher.pretrained": "null",
        "data.root": data, "data.num_shots": 4, "data.batch_size": 4, "data.eval_batch_size": 8,
        "data.num_workers": 0, "trainer.accelerator": "cpu", "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 2, "trainer.enable_progress_bar": False, "trainer.deterministic": True,
        "logger.wandb.mode": "disabled", "optim.lr": 0.05, "optim.warmup_epochs": 0,
        "kdpl.text_cache_dir": out.parent / "cache", **extra,
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
    assert protocols.main(argv) == 0
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
    assert protocols.main(argv) == 0
    assert run_dirs(out) == first and (out / "b2n" / "results.md").read_text() == table
    monkeypatch.undo()

    # Another hyper-parameter is another config: new runs (coop only; zero-shot does not use optim.lr).
    changed = ["b2n", "--methods", "coop", "--datasets", "dtd", "--seeds", "1",
               *tiny_overrides(two_datasets, out, **{"optim.lr": 0.01})]
    assert protocols.main(changed) == 0
    assert len(run_dirs(out) - first) == 1

    # The aggregate command rebuilds the tables from the finished runs' records (newest per cell).
    (out / "b2n" / "results.md").unlink()
    assert protocols.main(["aggregate", "--root", str(out)]) == 0
    rebuilt = (out / "b2n" / "results.md").read_text()
    assert "| coop | oxford_pets |" in rebuilt and "| zeroshot | dtd |" in rebuilt


def test_xd_and_dg_share_the_source_run(tmp_path, two_datasets):
    out = tmp_path / "runs"
    overrides = tiny_overrides(two_datasets, out)
    cells, folder = protocols.run_protocol("xd", ["coop+kdpl"], ["dtd"], [1], [], overrides, source="oxford_pets")
    assert folder == out / "xd"
    by_key = cells_by_key(cells)
    assert by_key["coop+kdpl", "average", "acc"].mean == by_key["coop+kdpl", "dtd", "acc"].mean
    runs = run_dirs(out)
    assert len(runs) == 1
    run = runs.pop()
    assert (run / "eval" / "dtd-all" / "metrics.json").is_file()
    # dg with the same source reuses the run (here with dtd standing in for a target).
    protocols.run_protocol("dg", ["coop+kdpl"], ["dtd"], [1], [], overrides, source="oxford_pets")
    assert run_dirs(out) == {run} and (run / "protocol-dg.json").is_file()
    assert "| Method | oxford_pets | dtd | Average |" in (out / "dg" / "results.md").read_text()

    # A run pre-empted after training, before its final evaluation, is resumed in place.
    from clipcore.status import PREEMPTED, end_attempt

    (run / "eval" / "metrics.json").unlink()
    end_attempt(run, PREEMPTED, "SIGTERM", 143)
    protocols.run_protocol("dg", ["coop+kdpl"], ["dtd"], [1], [], overrides, source="oxford_pets")
    assert run_dirs(out) == {run} and (run / "eval" / "metrics.json").is_file()
