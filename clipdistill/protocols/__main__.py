"""Run an evaluation protocol: every method x dataset x seed, then one table.

    clipdistill protocols b2n --methods zeroshot,coop,coop+kdpl,coop+kdpl_ca \\
        --datasets oxford_pets,dtd,eurosat --seeds 1,2,3 -c trainer/gpu.yaml data.root=/data/coop
    clipdistill protocols xd --methods zeroshot,coop,coop+kdpl data.root=/data/coop
    clipdistill protocols dg --methods zeroshot,coop,coop+kdpl data.root=/data/coop
    clipdistill protocols gcd --methods spectralgcd,simgcd --datasets cub,scars \\
        --data-roots cub=/data/cub,scars=/data/scars -c trainer/gpu.yaml
    clipdistill protocols b2n ... --print                     # the cells' train commands
    clipdistill protocols b2n ... --devices 0,1,2,3           # 4 cells at a time, 1 GPU each
    clipdistill protocols b2n ... --slurm partition=gpu,gpus_per_node=1,timeout_min=240
    clipdistill protocols aggregate --root runs

Tables go to ``<output_dir>/<protocol>/results.{csv,md}``. Finished cells with the same config
are reused; an override that only some methods read (``objective.k_max``) reaches those only.
Exit status: 0 done, 1 some cells failed (listed; the table holds the others), 2 a mistake in the
arguments or config.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from clipcore.cli import add_config_arguments, prepare_environment, run_guarded


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def _slurm_parameters(text: str) -> dict:
    """``key=value,key=value`` -> submitit parameters (numbers converted)."""
    params = {}
    for item in _split(text) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --slurm {text!r}: expected key=value,... (e.g. partition=gpu,timeout_min=240)")
        params[key.strip()] = int(value) if value.isdigit() else value
    return params


def parser(prog: str = "python -m clipdistill.protocols") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", help="b2n, xd, dg, gcd, or aggregate")
    p.add_argument("--methods", help="comma-separated methods (default: the protocol's)")
    p.add_argument("--datasets", help="b2n/gcd: trained datasets; xd/dg: targets (default: all of them)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--source", default="imagenet", help="xd/dg: the training dataset")
    p.add_argument("--data-roots", help="dataset=path,... : data.root per dataset (GCD datasets live apart)")
    p.add_argument("--root", type=Path, help="aggregate: the output_dir holding the runs")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--print", action="store_true", help="print the cells' train commands and exit")
    where.add_argument("--devices", help="train cells in parallel, one per slot: 0,1,2,3 / 0+1,2+3 / cpu,cpu")
    where.add_argument("--slurm", metavar="PARAMS", help="submit the cells as a SLURM array (submitit "
                       "parameters key=value,...; 'cluster=local' runs them as local jobs)")
    p.add_argument("--no-wait", action="store_true", help="--slurm: submit and exit; aggregate later")
    add_config_arguments(p)
    return p


def main(argv: Optional[list[str]] = None, prog: str = "python -m clipdistill.protocols") -> int:
    p = parser(prog)
    # Intermixed: overrides may follow the options (plain parsing binds them to nothing).
    args = p.parse_intermixed_args(argv)
    return run_guarded(lambda: _run(p, args), debug=args.debug)


def _run(p: argparse.ArgumentParser, args) -> int:
    prepare_environment()
    from clipdistill.app import register_methods

    register_methods()
    from clipdistill.protocols import Execution, rebuild_tables, run_protocol

    if args.protocol == "aggregate":
        root = args.root or Path("runs")
        written = rebuild_tables(root)
        if not written:
            print(f"no finished protocol cells under {root}", file=sys.stderr)
            return 1
        for name, folder in written.items():
            print(f"## {name} ({folder})\n\n{(folder / 'results.md').read_text()}")
        return 0
    try:
        seeds = [int(s) for s in _split(args.seeds) or []]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    if args.slurm:
        params = _slurm_parameters(args.slurm)
        execution = Execution("slurm", slurm=params, cluster=params.pop("cluster", None), wait=not args.no_wait)
    elif args.devices:
        execution = Execution("local", devices=_split(args.devices))
    else:
        execution = Execution("print" if args.print else "inline")
    overrides = list(args.overrides)
    roots = dict(item.split("=", 1) for item in _split(args.data_roots) or [])
    outcome = run_protocol(args.protocol, _split(args.methods), _split(args.datasets), seeds, args.config,
                           overrides, args.source, execution, data_roots=roots)
    if execution.backend == "print":
        print("\n".join(outcome.commands) if outcome.commands else "# every cell has finished")
        return 0
    for run, reason in outcome.failed:
        print(f"failed: {run.spec.label} on {run.dataset}, seed {run.seed}: {reason}", file=sys.stderr)
    if outcome.table_dir is not None:
        print(f"## {args.protocol} ({outcome.table_dir})\n\n{(outcome.table_dir / 'results.md').read_text()}")
    elif not execution.wait:
        print("submitted; run the same command without --no-wait (or `aggregate`) when the jobs are done")
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
