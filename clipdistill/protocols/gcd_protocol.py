"""The GCD protocol: datasets x seeds of SpectralGCD / SimGCD -> All / Old / New, mean ± std.

Each cell is ``configs/method/<method>.yaml`` + ``configs/data/gcd_<dataset>.yaml`` (when it
exists) + the user's files and overrides, run as experiment ``gcd/<method>/<dataset>/seed<k>``,
and scored by its own final evaluation: Hungarian-matched accuracy on the unlabelled training
images (transductive, the papers' number) and on the test split (inductive), v2 and v1.

A SpectralGCD cell without ``gcd.concepts_csv`` gets the concepts of spectral filtering with its
own teacher, dictionary and data, computed once per distinct filtering input into
``<output_dir>/gcd/concepts/<dataset>-<hash>/`` (``python -m gcd.filter ... --out DIR``).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from clipcore.config import ConfigError, load_config, to_plain
from clipdistill.protocols.base import Evaluation, MethodSpec, Protocol, Run, Step, require_shipped, shipped
from clipdistill.protocols.registry import register_protocol
from clipdistill.protocols.results import AVERAGE, Cell, SeedResult, fmt, mean_cell, ordered, seed_cells

GCD_DATASETS = ("cifar10", "cifar100", "imagenet_100", "cub", "scars", "aircraft")
SPLITS = {"transductive": "Unlabelled train (transductive)", "inductive": "Test (inductive)"}
PARTS = ("all", "old", "new")
VERSIONS = ("v2", "v1")
# The settings spectral filtering reads (gcd.filter): its output depends on nothing else (it scores
# every train image, labelled or not, so not on the seed).
FILTER_KEYS = ("teacher", "data.name", "data.root", "data.normalization", "data.prop_train_labels",
               "data.split_follows_seed", "gcd.dictionary", "gcd.template", "gcd.specialized_template",
               "gcd.tau", "gcd.beta_e", "gcd.beta_c")


def metric_keys() -> tuple[tuple[str, str], ...]:
    return tuple((f"{split}/{part}_{v}", f"test/{split}/{part}_{v}")
                 for v in VERSIONS for split in SPLITS for part in PARTS)


class FilterStep(Step):
    def __init__(self, files: tuple[str, ...], overrides: tuple[str, ...], out: Path, dataset: str):
        self.files, self.overrides, self.out, self.dataset = files, overrides, out, dataset

    @property
    def csv(self) -> Path:
        return self.out / f"{self.dataset}_concepts.csv"

    def done(self) -> bool:
        return self.csv.is_file() and (self.out / "filter.json").is_file()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gcd.filter", *[x for f in self.files for x in ("-c", f)],
                *self.overrides, "--out", str(self.out)]

    def ensure(self) -> None:
        if self.done():
            return
        import torch

        from gcd.filter import run_filter

        with torch.no_grad():
            run_filter(load_config(list(self.files), list(self.overrides)), self.out)


@register_protocol
class GCDProtocol(Protocol):
    name = "gcd"
    default_datasets = GCD_DATASETS
    default_methods = ("spectralgcd", "simgcd")

    def parse_method(self, label: str) -> MethodSpec:
        from gcd.config import GCD_METHODS

        label = label.strip()
        if label not in GCD_METHODS:
            raise ConfigError(f"method {label!r}: the gcd protocol runs {', '.join(GCD_METHODS)}")
        require_shipped("method", label, label)
        return MethodSpec(label, label)

    def runs(self, methods, datasets, seeds, files, overrides, source, data_roots=None) -> list[Run]:
        runs = []
        for spec in (self.parse_method(m) for m in methods):
            for dataset in datasets:
                for seed in seeds:
                    base = [require_shipped("method", spec.method, spec.label)]
                    data_file = shipped("data", f"gcd_{dataset}")
                    if data_file:
                        base.append(data_file)
                    forced = (f"experiment=gcd/{spec.label}/{dataset}/seed{seed}", f"seed={seed}",
                              f"data.name={dataset}")
                    if data_roots and dataset in data_roots:
                        forced += (f"data.root={data_roots[dataset]}",)
                    evaluation = Evaluation(dataset, "", metric_keys(), own=True)
                    runs.append(Run(self.name, spec, dataset, seed, (*base, *files), (*overrides, *forced),
                                    (evaluation,)))
        return [self._with_concepts(run) for run in runs]

    def _filter_step(self, run: Run) -> FilterStep:
        cfg = run.config()
        plain = to_plain(cfg)
        inputs = {key: _select(plain, key) for key in FILTER_KEYS}
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:10]
        out = Path(cfg.output_dir) / "gcd" / "concepts" / f"{run.dataset}-{digest}"
        return FilterStep(run.files, run.overrides, out, run.dataset)

    def _with_concepts(self, run: Run) -> Run:
        if run.spec.method != "spectralgcd" or run.config().gcd.concepts_csv:
            return run
        csv = self._filter_step(run).csv
        return Run(run.protocol, run.spec, run.dataset, run.seed, run.files,
                   (*run.overrides, f"gcd.concepts_csv={csv}"), run.evaluations)

    def prerequisites(self, runs: list[Run]) -> list[Step]:
        steps: dict[Path, Step] = {}
        for run in runs:
            if run.spec.method != "spectralgcd":
                continue
            step = self._filter_step(run)  # gcd.concepts_csv is not among the filter's inputs
            if str(step.csv) == str(run.config().gcd.concepts_csv):  # the protocol chose it
                steps.setdefault(step.csv, step)
        return list(steps.values())

    def aggregate(self, results: list[SeedResult], source: str) -> list[Cell]:
        """Per method and dataset every metric (mean ± std over seeds); the average row is the
        mean of the datasets' means."""
        cells: list[Cell] = []
        for method, datasets in seed_cells(results).items():
            for row in datasets.values():
                cells.extend(row.values())
            metrics = ordered(m for row in datasets.values() for m in row)
            for metric in metrics:
                cells.append(mean_cell(method, metric, [row[metric] for row in datasets.values() if metric in row]))
        return cells

    def markdown(self, cells: list[Cell], source: str) -> str:
        index = {(c.method, c.dataset, c.metric): c for c in cells}
        parts = []
        for version in VERSIONS:
            header = ["Method", "Dataset"] + [f"{p.title()} ({s[:5]}.)" for s in SPLITS for p in PARTS] + ["Seeds"]
            lines = [f"### Hungarian accuracy {version} (% ; trans. = unlabelled train images, ind. = test images)",
                     "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for method in ordered(c.method for c in cells):
                for dataset in ordered(c.dataset for c in cells if c.method == method):
                    values = [fmt(index.get((method, dataset, f"{s}/{p}_{version}"))) for s in SPLITS for p in PARTS]
                    first = index.get((method, dataset, f"transductive/all_{version}"))
                    n = first.n if first else 0
                    name = "**Average**" if dataset == AVERAGE else dataset
                    seeds = f"{n} dataset{'s' * (n != 1)}" if dataset == AVERAGE else str(n)
                    lines.append(f"| {method} | {name} | " + " | ".join(values) + f" | {seeds} |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"


def _select(plain: dict, key: str):
    node = plain
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
