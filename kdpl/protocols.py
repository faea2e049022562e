"""The KDPL evaluation protocols (kdpl spec §4), run cell by cell, sequentially, in one process.

    python -m kdpl.protocols b2n --methods coop,coop+kdpl,coop+kdpl_ca --datasets oxford_pets,dtd \\
        --seeds 1,2,3 -c configs/backbone/vit_b32.yaml -c configs/trainer/gpu.yaml data.root=/data
    python -m kdpl.protocols xd --methods zeroshot,coop,coop+kdpl output_dir=runs
    python -m kdpl.protocols dg --methods zeroshot-teacher,coop+kdpl_ca
    python -m kdpl.protocols aggregate --root runs

- ``b2n``: train on the base classes (``data.subsample_classes=base``); Base = the run's own test
  accuracy; Novel = the same checkpoint evaluated with ``data.subsample_classes=new``.
- ``xd``: train on ImageNet (all classes), evaluate on the 10 other CoOp datasets.
- ``dg``: the same ImageNet runs evaluated on ImageNet-V2/-Sketch/-A/-R.

A method is ``<learner>[+<objective>]`` (``coop``, ``coop+kdpl``, ``maple+kdpl_ca`` ...), or
``zeroshot`` / ``zeroshot-teacher`` (no training; evaluated once, with the first seed). Each cell is
the config ``configs/method/<learner>.yaml`` (``<learner>_xd.yaml`` for xd/dg when it exists) +
``configs/objective/<objective>.yaml`` + ``configs/data/<dataset>.yaml`` + the ``-c`` files + the
overrides, run as experiment ``<protocol>/<method>/<dataset>/seed<k>`` under ``output_dir`` (xd and
dg share their ImageNet runs, experiment ``xd-dg/...``). A finished run is reused only when its
stored ``config.yaml`` equals the config the cell would run now; an interrupted one with the same
config is resumed; otherwise a new run folder is made. Evaluations are stored in
``<run>/eval/<dataset>-<subset>/`` and reused the same way. Tables go to
``<output_dir>/<protocol>/results.{csv,md}``.

Multi-GPU: run the protocol on one device per process (``trainer.devices=1``), or launch the
cells' ``train.py`` runs yourself; a DDP strategy here would re-launch this whole script per rank.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from omegaconf import DictConfig, OmegaConf

from clipcore.config import CONFIG_DIR, ConfigError, load_config, save_config, to_plain
from clipcore.resume import comparable, newest_intact_checkpoint
from clipcore.rundir import new_run_dir, run_folders
from clipcore.status import FINISHED, read_status
from kdpl.methods import LEARNERS
from kdpl.results import SeedResult, aggregate, to_csv, to_markdown

log = logging.getLogger(__name__)

PROTOCOLS = ("b2n", "xd", "dg")
B2N_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
XD_TARGETS = tuple(d for d in B2N_DATASETS if d != "imagenet")
DG_TARGETS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
ZEROSHOT = {"zeroshot": "student", "zeroshot-teacher": "teacher"}
RESULT_FILE = "protocol-{}.json"


@dataclass(frozen=True)
class MethodSpec:
    """``label`` as written on the command line; ``learner`` a prompt method or ``zeroshot``;
    ``objective`` supervised | kdpl | kdpl_ca (for zero-shot: the evaluated model)."""

    label: str
    learner: str
    objective: str

    @property
    def trains(self) -> bool:
        return self.learner != "zeroshot"


def parse_method(label: str) -> MethodSpec:
    """``coop`` -> (coop, supervised); ``coop+kdpl_ca`` -> (coop, kdpl_ca); ``zeroshot-teacher``."""
    label = label.strip()
    if label in ZEROSHOT:
        return MethodSpec(label, "zeroshot", ZEROSHOT[label])
    learner, _, objective = label.partition("+")
    objective = objective or "supervised"
    if learner not in LEARNERS:
        raise ConfigError(f"method {label!r}: unknown prompt learner {learner!r} (known: {', '.join(LEARNERS)}, "
                         f"zeroshot, zeroshot-teacher)")
    if not (CONFIG_DIR / "method" / f"{learner}.yaml").is_file():
        raise ConfigError(f"method {label!r}: no configs/method/{learner}.yaml")
    if not (CONFIG_DIR / "objective" / f"{objective}.yaml").is_file():
        raise ConfigError(f"method {label!r}: no configs/objective/{objective}.yaml")
    return MethodSpec(label, learner, objective)


def cell_config(protocol: str, spec: MethodSpec, dataset: str, seed: int, files: Iterable[str] = (),
                overrides: Iterable[str] = ()) -> DictConfig:
    """The config of one training (or zero-shot) cell; protocol keys are applied last."""
    base: list[Path] = []
    if spec.trains:
        method_file = CONFIG_DIR / "method" / f"{spec.learner}.yaml"
        cross = CONFIG_DIR / "method" / f"{spec.learner}_xd.yaml"
        base += [cross if protocol != "b2n" and cross.is_file() else method_file,
                 CONFIG_DIR / "objective" / f"{spec.objective}.yaml"]
    elif spec.objective == "teacher":
        base.append(CONFIG_DIR / "backbone" / "teacher_vit_h14.yaml")
    data_file = CONFIG_DIR / "data" / f"{dataset}.yaml"
    if data_file.is_file():
        base.append(data_file)
    group = "b2n" if protocol == "b2n" else "xd-dg"
    forced = [f"experiment={group}/{spec.label}/{dataset}/seed{seed}", f"seed={seed}", f"data.name={dataset}",
              f"data.subsample_classes={'base' if protocol == 'b2n' else 'all'}"]
    if not spec.trains:
        forced += ["method=zeroshot", f"zeroshot.model={spec.objective}"]
    return load_config([*base, *files], [*overrides, *forced])


def find_run(cfg: DictConfig) -> tuple[Optional[Path], bool]:
    """``(run_dir, finished)`` of the newest run of ``cfg.experiment`` stored with this very config
    (compared as ``resume`` compares: logging and loader settings aside). A run that failed
    without a checkpoint is never picked."""
    want = comparable(to_plain(cfg))
    for run in reversed(run_folders(cfg.output_dir, cfg.experiment)):
        if comparable(OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))) != want:
            continue
        if cfg.method == "zeroshot":
            return run, True
        status = read_status(run)
        if status is not None and status["status"] == FINISHED:
            return run, True
        if newest_intact_checkpoint(run) is not None:
            return run, False
    return None, False


def ensure_run(cfg: DictConfig) -> Path:
    """A finished run for ``cfg``: reused, resumed, or trained now (zero-shot: just a folder)."""
    from clipcore import runner

    run, finished = find_run(cfg)
    if finished:
        log.info("reusing %s", run)
        return run
    if cfg.method == "zeroshot":
        run = new_run_dir(cfg.output_dir, cfg.experiment)
        save_config(cfg, run / "config.yaml")
        return run
    if run is not None:
        log.info("resuming the interrupted run %s", run)
        cfg = load_config([], [f"resume={run}"], base=cfg.copy())
    return runner.train(cfg)


def evaluate_run(run: Path, cfg: DictConfig, dataset: str, subset: str) -> float:
    """Test accuracy of ``run``'s model on ``dataset`` / ``subset`` (computed once, then read)."""
    from clipcore import runner
    from clipcore.registry import get_method

    if cfg.method != "zeroshot" and dataset == cfg.data.name and subset == cfg.data.subsample_classes:
        return _read_acc(run / "eval" / "metrics.json")
    out = run / "eval" / f"{dataset}-{subset}"
    if (out / "metrics.json").is_file():
        return _read_acc(out / "metrics.json")
    overrides = [f"data.name={dataset}", f"data.subsample_classes={subset}"]
    if cfg.method == "zeroshot":
        eval_cfg = load_config([], overrides, base=cfg.copy())
        module, datamodule = get_method("zeroshot").build(eval_cfg)
    else:
        eval_cfg, module, datamodule = runner.module_from_checkpoint(run / "checkpoints" / "last.ckpt", [], overrides)
    metrics = runner.evaluate(eval_cfg, module, datamodule, out)
    return float(metrics["test/acc"])


def _read_acc(path: Path) -> float:
    return float(json.loads(path.read_text())["test/acc"])


def run_cell(protocol: str, spec: MethodSpec, seed: int, dataset: str, targets: Iterable[str],
             files: Iterable[str], overrides: Iterable[str]) -> list[SeedResult]:
    """Train (or reuse) one cell and evaluate it; writes ``<run>/protocol-<protocol>.json``."""
    cfg = cell_config(protocol, spec, dataset, seed, files, overrides)
    run = ensure_run(cfg)
    if protocol == "b2n":
        evaluations = [(dataset, "base", "base"), (dataset, "new", "novel")]
    else:
        evaluations = [(dataset, "all", "acc")] + [(t, "all", "acc") for t in targets]
    results = [SeedResult(spec.label, name, metric, seed, evaluate_run(run, cfg, name, subset))
               for name, subset, metric in evaluations]
    record = {"protocol": protocol, "method": spec.label, "dataset": dataset, "seed": seed,
              "results": [{"dataset": r.dataset, "metric": r.metric, "value": r.value} for r in results]}
    (run / RESULT_FILE.format(protocol)).write_text(json.dumps(record, indent=2))
    return results


def run_protocol(protocol: str, methods: list[str], datasets: Optional[list[str]] = None,
                 seeds: Iterable[int] = (1, 2, 3), files: Iterable[str] = (), overrides: Iterable[str] = (),
                 source: str = "imagenet") -> tuple[list, Path]:
    """Run every cell of ``protocol``; returns the aggregated cells and the table folder.

    ``datasets``: b2n the trained datasets (default the 11 CoOp datasets); xd/dg the targets.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    specs = [parse_method(m) for m in methods]
    seeds, files, overrides = list(seeds), list(files), list(overrides)
    default = {"b2n": B2N_DATASETS, "xd": XD_TARGETS, "dg": DG_TARGETS}[protocol]
    datasets = list(datasets or default)
    results: list[SeedResult] = []
    for spec in specs:
        for seed in seeds if spec.trains else seeds[:1]:
            if protocol == "b2n":
                for dataset in datasets:
                    results += run_cell(protocol, spec, seed, dataset, (), files, overrides)
            else:
                results += run_cell(protocol, spec, seed, source, datasets, files, overrides)
    output_dir = Path(load_config(files, overrides).output_dir)
    cells = aggregate(protocol, results, source=source)
    return cells, write_tables(protocol, cells, output_dir / protocol, source)


def write_tables(protocol: str, cells: list, folder: Path, source: str = "imagenet") -> Path:
    """``results.csv`` and ``results.md`` in ``folder`` (written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.csv", to_csv(cells)), ("results.md", to_markdown(protocol, cells, source))):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / name)
    return folder


def collect_results(root: Path, protocol: str) -> tuple[list[SeedResult], str]:
    """Per-seed results of the finished cells under ``root`` (newest record per cell and seed)."""
    records: dict[tuple, tuple[float, dict]] = {}
    for path in root.rglob(RESULT_FILE.format(protocol)):
        record = json.loads(path.read_text())
        key = (record["method"], record["dataset"], record["seed"])
        mtime = path.stat().st_mtime
        if key not in records or records[key][0] < mtime:
            records[key] = (mtime, record)
    results, sources = [], set()
    for _, record in sorted(records.values(), key=lambda item: item[0]):
        sources.add(record["dataset"])
        results += [SeedResult(record["method"], r["dataset"], r["metric"], record["seed"], r["value"])
                    for r in record["results"]]
    source = sources.pop() if protocol != "b2n" and len(sources) == 1 else "imagenet"
    return results, source


def rebuild_tables(root: Path) -> dict[str, Path]:
    """Rebuild ``<root>/<protocol>/results.{csv,md}`` for every protocol with finished cells."""
    written = {}
    for protocol in PROTOCOLS:
        results, source = collect_results(root, protocol)
        if results:
            written[protocol] = write_tables(protocol, aggregate(protocol, results, source), root / protocol, source)
    return written


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def main(argv: Optional[list[str]] = None) -> int:
    from clipcore.cli import add_config_arguments, prepare_environment, run_guarded

    parser = argparse.ArgumentParser(prog="python -m kdpl.protocols", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", choices=[*PROTOCOLS, "aggregate"])
    parser.add_argument("--methods", default="coop,coop+kdpl,coop+kdpl_ca", help="comma-separated methods")
    parser.add_argument("--datasets", help="b2n: trained datasets; xd/dg: targets (default: all of them)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--source", default="imagenet", help="xd/dg: the training dataset")
    parser.add_argument("--root", type=Path, help="aggregate: the output_dir holding the runs")
    add_config_arguments(parser)
    # Intermixed: overrides may follow the options (plain parsing binds them to nothing).
    args = parser.parse_intermixed_args(argv)
    prepare_environment()
    if args.protocol == "aggregate":
        root = args.root or Path("runs")
        written = rebuild_tables(root)
        if not written:
            print(f"no finished protocol cells under {root}", file=sys.stderr)
            return 1
        for protocol, folder in written.items():
            print(f"## {protocol} ({folder})\n\n{(folder / 'results.md').read_text()}")
        return 0
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers")

    def run() -> int:
        import clipcore.synthetic.dataset  # noqa: F401  (the methods and datasets a cell may use)
        import clipcore.zeroshot  # noqa: F401
        import kdpl.methods  # noqa: F401

        methods = _split(args.methods)
        for method in methods:  # command-line mistakes fail before the first (long) training
            parse_method(method)
        _, folder = run_protocol(args.protocol, methods, _split(args.datasets), seeds,
                                 args.config, args.overrides, args.source)
        print(f"## {args.protocol} ({folder})\n\n{(folder / 'results.md').read_text()}")
        return 0

    return run_guarded(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
