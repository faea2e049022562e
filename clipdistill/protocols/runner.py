"""Running a protocol: train (or reuse) every cell, evaluate it, aggregate the table.

A cell whose run folder holds a *finished* run with the same config (compared as ``resume``
compares) is reused, unless a local file its config names (a weights file, a model config, a
``local-dir:`` bundle) was replaced since the run started (``clipcore.input_files``); an unfinished
one (pre-empted, crashed) is resumed; otherwise it is trained.
Evaluations are stored in ``<run>/eval/<dataset>-<subset>/`` and reused the same way; each cell
writes ``<run>/protocol-<name>.json`` (its per-seed results), from which
``<output_dir>/<protocol>/results.{csv,md}`` are built (also later, by ``aggregate``).

Where the cells' training runs:

- ``inline`` (default): one after another, in this process;
- ``local``: in parallel subprocesses, one per device slot (``--devices 0,1,2,3``; ``0+1,2+3``
  gives each cell two GPUs under DDP; ``cpu,cpu`` two CPU processes);
- ``slurm``: a SLURM job array through submitit, each task an ordinary run that checkpoints
  and requeues itself (``cluster="local"`` runs the same jobs as local processes);
- ``print``: only print the cells' ``python -m clipdistill.train`` command lines, for any
  scheduler; run the protocol again afterwards to evaluate and aggregate.

Evaluations and aggregation always run in this process, after the training.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from clipcore.config import ConfigError, load_config, read_stored, to_plain
from clipcore.input_files import changed_input_files, record_input_files
from clipcore.io import atomic_write_text
from clipcore.resume import comparable, newest_intact_checkpoint
from clipcore.rundir import run_folders
from clipcore.status import FINISHED, read_status
from clipdistill.protocols.base import Evaluation, Run
from clipdistill.protocols.registry import get_protocol
from clipdistill.protocols.results import SeedResult, to_csv

log = logging.getLogger(__name__)

RESULT_FILE = "protocol-{}.json"
BACKENDS = ("inline", "local", "slurm", "print")


@dataclass
class Execution:
    """Where the training of the cells runs (see the module docstring)."""

    backend: str = "inline"
    devices: Sequence[str] = ()             # local: one entry per slot ("0", "0+1", "cpu")
    slurm: dict = field(default_factory=dict)  # submitit executor parameters
    cluster: Optional[str] = None           # submitit cluster (None: auto, "local": local jobs)
    wait: bool = True                       # slurm: wait for the jobs before evaluating

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.backend == "local" and not self.devices:
            raise ConfigError("the local backend needs --devices (e.g. 0,1,2,3 or cpu,cpu)")


@dataclass
class Outcome:
    table_dir: Optional[Path]
    results: list[SeedResult]
    failed: list[tuple[Run, str]]
    commands: list[str] = field(default_factory=list)
    # The run folder each evaluated cell was scored from, keyed (method label, dataset, seed).
    run_dirs: dict[tuple[str, str, int], Path] = field(default_factory=dict)


# -- overrides that only some cells read --------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _accepts(files: tuple[str, ...], override: str) -> bool:
    try:
        load_config(list(files), [override])
    except ConfigError as exc:
        if "not read by method" in str(exc) or "unknown config key" in str(exc):
            return False
        raise
    return True


def scope_overrides(runs: list[Run], overrides: Sequence[str]) -> list[Run]:
    """Give each cell the user overrides its method reads (``objective.k_max`` reaches the KDPL-CA
    cells only); an override no cell reads is an error, as a typo would be."""
    user = set(overrides)
    unused = set(user)
    scoped = []
    for run in runs:
        keep = []
        for item in run.overrides:
            if item in user and not _accepts(tuple(run.files), item):
                continue
            unused.discard(item)
            keep.append(item)
        scoped.append(Run(run.protocol, run.spec, run.dataset, run.seed, run.files, tuple(keep), run.evaluations))
    for item in sorted(unused):
        try:
            load_config(list(runs[0].files), [item])
        except ConfigError as exc:
            if "not read by method" not in str(exc):
                raise  # read by no method at all: a typo
            log.warning("no cell of this protocol reads %s; it is ignored", item)
    return scoped


# -- one cell -----------------------------------------------------------------------------------
def find_run(cfg: DictConfig) -> tuple[Optional[Path], bool]:
    """``(run_dir, finished)`` of the newest run of ``cfg.experiment`` stored with this very config;
    a run that failed without a checkpoint is never picked."""
    want = comparable(to_plain(cfg))
    for run in reversed(run_folders(cfg.output_dir, cfg.experiment)):
        if comparable(read_stored(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))) != want:
            continue
        changed = changed_input_files(run)
        if changed:
            log.info("not reusing %s: %s changed since it ran", run, ", ".join(changed))
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
    from clipcore.config import save_config
    from clipcore.rundir import new_run_dir

    run, finished = find_run(cfg)
    if finished:
        log.info("reusing %s", run)
        return run
    if cfg.method == "zeroshot":
        run = new_run_dir(cfg.output_dir, cfg.experiment)
        save_config(cfg, run / "config.yaml")
        record_input_files(run, to_plain(cfg))
        return run
    if run is not None:
        log.info("resuming the unfinished run %s", run)
        cfg = load_config([], [f"resume={run}"], base=cfg.copy())
    return runner.train(cfg)


def evaluate_run(run_dir: Path, cfg: DictConfig, evaluation: Evaluation) -> dict[str, float]:
    """The metrics of ``evaluation`` of ``run_dir``'s model (computed once, then read)."""
    from clipcore import runner
    from clipcore.registry import build_method

    if cfg.method != "zeroshot" and evaluation.own:
        return _read_metrics(run_dir / "eval" / "metrics.json")
    out = run_dir / "eval" / evaluation.name
    if (out / "metrics.json").is_file():
        return _read_metrics(out / "metrics.json")
    if cfg.method == "zeroshot":
        eval_cfg = load_config([], list(evaluation.overrides), base=cfg.copy())
        module, datamodule = build_method(eval_cfg)
    else:
        eval_cfg, module, datamodule = runner.module_from_checkpoint(
            run_dir / "checkpoints" / "last.ckpt", [], list(evaluation.overrides))
    return runner.evaluate(eval_cfg, module, datamodule, out)


def _read_metrics(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())


def evaluate_cell(run: Run, run_dir: Path, cfg: DictConfig) -> list[SeedResult]:
    """Every evaluation of a finished cell; writes ``<run>/protocol-<name>.json``."""
    results = []
    for evaluation in run.evaluations:
        metrics = evaluate_run(run_dir, cfg, evaluation)
        for metric, key in evaluation.metrics:
            if key not in metrics:
                raise ConfigError(f"{run_dir}: {key} missing from the metrics of evaluation {evaluation.name!r}")
            results.append(SeedResult(run.spec.label, evaluation.dataset, metric, run.seed, float(metrics[key])))
    record = {"protocol": run.protocol, "method": run.spec.label, "dataset": run.dataset, "seed": run.seed,
              "results": [{"dataset": r.dataset, "metric": r.metric, "value": r.value} for r in results]}
    atomic_write_text(run_dir / RESULT_FILE.format(run.protocol), json.dumps(record, indent=2))
    return results


# -- training on the backends ---------------------------------------------------------------------
def _slot_overrides(devices: str) -> tuple[dict[str, str], list[str]]:
    """Environment and overrides of a local device slot ("2", "0+1", "cpu")."""
    if devices == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}, ["trainer.accelerator=cpu", "trainer.devices=1"]
    ids = devices.split("+")
    if not all(i.isdigit() for i in ids):
        raise ConfigError(f"--devices entry {devices!r}: expected a GPU index, indices joined by '+', or 'cpu'")
    extra = ["trainer.accelerator=gpu", f"trainer.devices={len(ids)}"]
    if len(ids) > 1:
        extra.append("trainer.strategy=ddp")
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids)}, extra


def train_locally(runs: list[Run], devices: Sequence[str], logs: Path) -> dict[Run, int]:
    """Each run's training as a subprocess on a free device slot; returns the exit statuses."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, statuses = list(runs), {}, {}
    slots = list(devices)
    while pending or running:
        while pending and slots:
            run, slot = pending.pop(0), slots.pop(0)
            env, extra = _slot_overrides(slot)
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLIPCORE_RUN")}, **env}
            name = f"{run.spec.label}-{run.dataset}-seed{run.seed}".replace("/", "_").replace("+", "_")
            handle = open(logs / f"{name}.log", "w")
            process = subprocess.Popen([*run.train_command(), *extra], env=env, stdout=handle,
                                       stderr=subprocess.STDOUT)
            running[process] = (run, slot, handle)
            log.info("training %s on %s (log: %s)", name, slot, handle.name)
        for process in list(running):
            if process.poll() is not None:
                run, slot, handle = running.pop(process)
                handle.close()
                statuses[run] = process.returncode
                slots.append(slot)
        time.sleep(0.2)
    return statuses


def _train_in_job(arguments: list[str]) -> int:
    """A SLURM (or submitit-local) job: one ordinary training run."""
    from clipdistill.train import main

    code = main(arguments)
    if code != 0:
        raise RuntimeError(f"training exited with status {code}: {' '.join(arguments)}")
    return code


def train_on_slurm(runs: list[Run], execution: Execution, folder: Path) -> dict[Run, int]:
    """A job array, one task per run, through submitit."""
    try:
        import submitit
    except ImportError as exc:
        raise ConfigError("the slurm backend needs submitit: pip install 'clipdistill[slurm]'") from exc
    executor = submitit.AutoExecutor(folder=str(folder), cluster=execution.cluster)
    if execution.slurm:
        executor.update_parameters(**execution.slurm)
    jobs = executor.map_array(_train_in_job, [run.train_arguments() for run in runs])
    log.info("submitted %d jobs (%s) to %s", len(jobs), ", ".join(j.job_id for j in jobs), folder)
    if not execution.wait:
        return {}
    statuses = {}
    for run, job in zip(runs, jobs):
        try:
            job.result()
            statuses[run] = 0
        except Exception as exc:  # a failed task is reported, the others still aggregate
            log.error("job %s (%s, seed %d) failed: %s", job.job_id, run.spec.label, run.seed, exc)
            statuses[run] = 1
    return statuses


# -- the protocol -------------------------------------------------------------------------------
def run_protocol(name: str, methods: Optional[Sequence[str]] = None, datasets: Optional[Sequence[str]] = None,
                 seeds: Sequence[int] = (1, 2, 3), files: Sequence[str] = (), overrides: Sequence[str] = (),
                 source: str = "imagenet", execution: Optional[Execution] = None,
                 data_roots: Optional[dict[str, str]] = None) -> Outcome:
    """Train, evaluate and aggregate every cell of protocol ``name``."""
    protocol = get_protocol(name)
    execution = execution or Execution()
    runs = protocol.runs(list(methods or protocol.default_methods), list(datasets or protocol.default_datasets),
                         list(seeds), list(files), list(overrides), source, data_roots or {})
    runs = scope_overrides(runs, overrides)
    output_dir = Path(load_config(list(runs[0].files), list(runs[0].overrides)).output_dir) if runs else Path("runs")
    prerequisites = protocol.prerequisites(runs)
    if execution.backend == "print":
        commands = [step.shell_command() for step in prerequisites if not step.done()]
        commands += [run.shell_command() for run in runs if run.spec.trains and not find_run(run.config())[1]]
        return Outcome(None, [], [], commands)
    for step in prerequisites:
        step.ensure()
    # Inline, each cell is trained (or reused) in the loop below.
    training = ([run for run in runs if run.spec.trains and not find_run(run.config())[1]]
                if execution.backend in ("local", "slurm") else [])
    failed: list[tuple[Run, str]] = []
    if execution.backend == "local" and training:
        for run, code in train_locally(training, execution.devices, output_dir / name / "logs").items():
            if code != 0:
                failed.append((run, f"exit status {code} (log in {output_dir / name / 'logs'})"))
    elif execution.backend == "slurm" and training:
        statuses = train_on_slurm(training, execution, output_dir / name / "submitit")
        if not execution.wait:
            return Outcome(None, [], [])
        failed += [(run, f"job failed (logs in {output_dir / name / 'submitit'})")
                   for run, code in statuses.items() if code != 0]
    results: list[SeedResult] = []
    run_dirs: dict[tuple[str, str, int], Path] = {}
    failed_runs = {run for run, _ in failed}
    for run in runs:
        if run in failed_runs:
            continue
        cfg = run.config()
        try:
            run_dir = ensure_run(cfg) if execution.backend == "inline" or not run.spec.trains else _finished(cfg)
            results += evaluate_cell(run, run_dir, cfg)
            run_dirs[(run.spec.label, run.dataset, run.seed)] = run_dir
        except Exception as exc:
            if execution.backend == "inline":
                raise
            failed.append((run, str(exc)))
    cells = protocol.aggregate(results, source)
    table_dir = write_tables(protocol, cells, output_dir / name, source) if results else None
    return Outcome(table_dir, results, failed, run_dirs=run_dirs)


def _finished(cfg: DictConfig) -> Path:
    run, finished = find_run(cfg)
    if not finished:
        raise ConfigError(f"no finished run of {cfg.experiment} with this config under {cfg.output_dir}")
    return run


def write_tables(protocol, cells: list, folder: Path, source: str) -> Path:
    """``results.csv`` and ``results.md`` in ``folder`` (written atomically)."""
    atomic_write_text(folder / "results.csv", to_csv(cells))
    atomic_write_text(folder / "results.md", protocol.markdown(cells, source))
    return folder


def collect_results(root: Path, name: str) -> tuple[list[SeedResult], str]:
    """Per-seed results of the finished cells of protocol ``name`` under ``root`` (the newest
    record per cell and seed), and the source dataset of a transfer protocol."""
    records: dict[tuple, tuple[float, dict]] = {}
    for path in root.rglob(RESULT_FILE.format(name)):
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
    source = sources.pop() if len(sources) == 1 else "imagenet"
    return results, source


def rebuild_tables(root: Path, names: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Rebuild ``<root>/<protocol>/results.{csv,md}`` for every protocol (or those in ``names``)
    with finished cells: one table for cells trained by separate calls."""
    from clipdistill.protocols.registry import PROTOCOLS

    written = {}
    for name in names or PROTOCOLS:
        results, source = collect_results(root, name)
        if results:
            protocol = get_protocol(name)
            written[name] = write_tables(protocol, protocol.aggregate(results, source), root / name, source)
    return written

