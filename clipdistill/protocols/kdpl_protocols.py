"""The KDPL evaluation protocols (kdpl spec §4): base-to-novel, cross-dataset, domain generalisation.

- ``b2n``: train on the base classes (``data.subsample_classes=base``); Base = the run's own test
  accuracy; Novel = the same checkpoint evaluated with ``data.subsample_classes=new``.
- ``xd``: train on ImageNet (all classes), evaluate on the 10 other CoOp datasets.
- ``dg``: the same ImageNet runs evaluated on ImageNet-V2/-Sketch/-A/-R.

A method is ``<learner>[+<objective>]`` (``coop``, ``coop+kdpl``, ``maple+kdpl_ca`` ...), or
``zeroshot`` / ``zeroshot-teacher`` (no training; evaluated once, with the first seed). A
``@tpt`` suffix (``coop+kdpl@tpt``) evaluates the cell with test-time prompt tuning
(``tpt.enabled=true``, ``kdpl.tpt``); the cell is its own experiment (trained again). Each cell
is ``configs/method/<learner>.yaml`` (``<learner>_xd.yaml`` for xd/dg when it exists) +
``configs/objective/<objective>.yaml`` + ``configs/data/<dataset>.yaml`` + the user's files and
overrides, run as experiment ``<protocol>/<method>/<dataset>/seed<k>`` (xd and dg share their
ImageNet runs, experiment ``xd-dg/...``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from clipcore.config import ConfigError
from clipdistill.protocols.base import ZEROSHOT, Evaluation, MethodSpec, Protocol, Run, require_shipped, shipped
from clipdistill.protocols.registry import register_protocol
from clipdistill.protocols.results import AVERAGE, Cell, SeedResult, fmt, harmonic_mean, mean_cell, ordered, seed_cells

COOP_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
TPT_SUFFIX = "@tpt"
XD_TARGETS = tuple(d for d in COOP_DATASETS if d != "imagenet")
DG_TARGETS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def parse_prompt_method(label: str) -> MethodSpec:
    """``coop`` -> (coop, supervised); ``coop+kdpl_ca`` -> (coop, kdpl_ca); ``zeroshot-teacher``."""
    from kdpl.config import declared_learners, declared_objectives

    label = label.strip()
    if label.endswith(TPT_SUFFIX):
        plain = parse_prompt_method(label[:-len(TPT_SUFFIX)])
        if not plain.trains:
            raise ConfigError(f"method {label!r}: TPT tunes a prompt learner; zero-shot with TPT is the untrained "
                              f"CoOp prompt: clipdistill eval -c method/coop.yaml ... tpt.enabled=true")
        return MethodSpec(label, plain.method, plain.variant, tpt=True)
    if label in ZEROSHOT:
        return MethodSpec(label, "zeroshot", ZEROSHOT[label])
    learner, _, objective = label.partition("+")
    objective = objective or "supervised"
    learners = declared_learners()
    if learner not in learners:
        raise ConfigError(f"method {label!r}: unknown prompt learner {learner!r} (known: "
                          f"{', '.join(sorted(learners))}, zeroshot, zeroshot-teacher)")
    if objective not in declared_objectives():
        raise ConfigError(f"method {label!r}: unknown objective {objective!r} (known: "
                          f"{', '.join(sorted(declared_objectives()))})")
    require_shipped("method", learner, label)
    require_shipped("objective", objective, label)
    return MethodSpec(label, learner, objective)


class PromptProtocol(Protocol):
    group = ""          # experiment prefix (xd and dg share theirs)
    subset = "all"      # the class subset the cell trains on

    def parse_method(self, label: str) -> MethodSpec:
        return parse_prompt_method(label)

    def cell_sources(self, spec: MethodSpec, dataset: str, seed: int, files: Sequence[str],
                     overrides: Sequence[str], data_roots=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The config files and overrides of one cell; protocol keys are applied last."""
        base: list[str] = []
        if spec.trains:
            cross = shipped("method", f"{spec.method}_xd") if self.name != "b2n" else None
            base += [cross or require_shipped("method", spec.method, spec.label),
                     require_shipped("objective", spec.variant, spec.label)]
        elif spec.variant == "teacher":
            base.append(require_shipped("backbone", "teacher_vit_h14", spec.label))
        data_file = shipped("data", dataset)
        if data_file:
            base.append(data_file)
        forced = [f"experiment={self.group}/{spec.label}/{dataset}/seed{seed}", f"seed={seed}",
                  f"data.name={dataset}", f"data.subsample_classes={self.subset}"]
        if data_roots and dataset in data_roots:
            forced.append(f"data.root={data_roots[dataset]}")
        if not spec.trains:
            forced += ["method=zeroshot", f"zeroshot.model={spec.variant}"]
        return (*base, *files), (*overrides, *forced)

    def evaluations(self, dataset: str, targets: Sequence[str]) -> tuple[Evaluation, ...]:
        raise NotImplementedError

    def runs(self, methods, datasets, seeds, files, overrides, source, data_roots=None) -> list[Run]:
        specs = [self.parse_method(m) for m in methods]
        seeds = list(seeds)
        runs = []
        for spec in specs:
            for seed in seeds if spec.trains else seeds[:1]:
                for dataset, targets in self.cell_datasets(datasets, source):
                    cell_files, cell_overrides = self.cell_sources(spec, dataset, seed, files, overrides,
                                                                   data_roots)
                    evaluations = self.evaluations(dataset, targets)
                    if spec.tpt:
                        evaluations = tuple(with_tpt(e) for e in evaluations)
                    run = Run(self.name, spec, dataset, seed, cell_files, cell_overrides, evaluations)
                    runs.append(transductive(run) if spec.trains and self.subset != "all" else run)
        return runs

    def cell_datasets(self, datasets, source) -> list[tuple[str, Sequence[str]]]:
        """``(trained dataset, evaluation targets)`` of each cell."""
        return [(source, list(datasets))]


def transductive(run: Run) -> Run:
    """A cell whose objective trains on the unlabelled images of every class
    (``objective.transductive``: PromptKD) trains on all of them; each class subset is then an
    evaluation of its checkpoint."""
    from kdpl.config import declared_objectives

    fields = declared_objectives()[run.spec.variant].config.__dataclass_fields__
    if "transductive" not in fields:
        return run
    # The objective's default, unless an override sets it (the cell's config is not resolved
    # here: overrides meant for other cells are scoped later).
    setting = fields["transductive"].default
    for item in run.overrides:
        if item.startswith("objective.transductive="):
            setting = item.split("=", 1)[1].strip().lower() in ("true", "1", "yes")
    if not setting:
        return run
    kept = (o for o in run.overrides if not o.startswith("data.subsample_classes="))
    overrides = (*kept, "data.subsample_classes=all")
    return Run(run.protocol, run.spec, run.dataset, run.seed, run.files, overrides,
               tuple(replace(e, own=False) for e in run.evaluations))


def with_tpt(evaluation: Evaluation) -> Evaluation:
    """The same evaluation with test-time prompt tuning, computed from the checkpoint."""
    return replace(evaluation, name=f"{evaluation.name}-tpt", overrides=(*evaluation.overrides, "tpt.enabled=true"),
                   own=False)


def _acc(dataset: str, subset: str = "all") -> Evaluation:
    return Evaluation(dataset, f"{dataset}-{subset}", (("acc", "test/acc"),),
                      (f"data.name={dataset}", f"data.subsample_classes={subset}"))


@register_protocol
class BaseToNovel(PromptProtocol):
    name = "b2n"
    group = "b2n"
    subset = "base"
    default_datasets = COOP_DATASETS
    default_methods = ("coop", "coop+kdpl", "coop+kdpl_ca")

    def cell_datasets(self, datasets, source):
        return [(d, ()) for d in datasets]

    def evaluations(self, dataset, targets):
        base = Evaluation(dataset, f"{dataset}-base", (("base", "test/acc"),),
                          (f"data.name={dataset}", "data.subsample_classes=base"), own=True)
        novel = Evaluation(dataset, f"{dataset}-new", (("novel", "test/acc"),),
                           (f"data.name={dataset}", "data.subsample_classes=new"))
        return base, novel

    def aggregate(self, results: list[SeedResult], source: str) -> list[Cell]:
        """Per dataset Base, Novel (mean ± std over seeds) and HM of the two means; the average
        row is the mean Base and mean Novel over datasets and the HM of those means (the CoCoOp
        convention, not the mean of per-dataset HMs)."""
        cells: list[Cell] = []
        for method, datasets in seed_cells(results).items():
            complete = []
            for dataset, row in datasets.items():
                cells.extend(row.values())
                if {"base", "novel"} <= set(row):
                    cells.append(Cell(method, dataset, "hm", harmonic_mean(row["base"].mean, row["novel"].mean),
                                      None, min(row["base"].n, row["novel"].n)))
                    complete.append(row)
            if complete:
                base = mean_cell(method, "base", [r["base"] for r in complete])
                novel = mean_cell(method, "novel", [r["novel"] for r in complete])
                cells += [base, novel, Cell(method, AVERAGE, "hm", harmonic_mean(base.mean, novel.mean), None,
                                            len(complete))]
        return cells

    def markdown(self, cells, source):
        index = {(c.method, c.dataset, c.metric): c for c in cells}
        lines = ["| Method | Dataset | Base | Novel | HM | Seeds |", "|---|---|---|---|---|---|"]
        for method in ordered(c.method for c in cells):
            for dataset in ordered(c.dataset for c in cells if c.method == method):
                base, novel, hm = (index.get((method, dataset, m)) for m in ("base", "novel", "hm"))
                n = base.n if base else (novel.n if novel else 0)
                name = "**Average**" if dataset == AVERAGE else dataset
                seeds = f"{n} dataset{'s' * (n != 1)}" if dataset == AVERAGE else str(n)
                lines.append(f"| {method} | {name} | {fmt(base)} | {fmt(novel)} | {fmt(hm)} | {seeds} |")
        return "\n".join(lines) + "\n"


class TransferProtocol(PromptProtocol):
    """Train once on the source (ImageNet), evaluate on target datasets: one column each."""

    group = "xd-dg"

    def evaluations(self, dataset, targets):
        return (Evaluation(dataset, f"{dataset}-all", (("acc", "test/acc"),),
                           (f"data.name={dataset}", "data.subsample_classes=all"), own=True),
                *(_acc(t) for t in targets))

    def aggregate(self, results, source):
        """Per target accuracy (mean ± std); the average is over the targets' means, the
        source dataset excluded."""
        cells: list[Cell] = []
        for method, datasets in seed_cells(results).items():
            for row in datasets.values():
                cells.extend(row.values())
            targets = [row["acc"] for name, row in datasets.items() if name != source and "acc" in row]
            if targets:
                cells.append(mean_cell(method, "acc", targets))
        return cells

    def markdown(self, cells, source):
        index = {(c.method, c.dataset, c.metric): c for c in cells}
        datasets = ordered(c.dataset for c in cells if c.dataset != AVERAGE)
        datasets = ([source] if source in datasets else []) + [d for d in datasets if d != source]
        header = ["Method", *datasets, "Average"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in ordered(c.method for c in cells):
            row = [fmt(index.get((method, d, "acc"))) for d in [*datasets, AVERAGE]]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"


@register_protocol
class CrossDataset(TransferProtocol):
    name = "xd"
    default_datasets = XD_TARGETS
    default_methods = ("zeroshot", "coop", "coop+kdpl")


@register_protocol
class DomainGeneralisation(TransferProtocol):
    name = "dg"
    default_datasets = DG_TARGETS
    default_methods = ("zeroshot", "coop", "coop+kdpl")
