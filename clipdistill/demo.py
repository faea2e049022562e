#!/usr/bin/env python
"""The offline demo: every method of the project on ShapeWorld, one results table.

    ./run.sh demo                     (= python demo.py)
    python demo.py --quick            tiny settings on the test-profile models (smoke test)
    python demo.py --data-root DIR --output-dir runs/demo [key=value ...]

What it runs, all on the CPU and offline:

1. writes ShapeWorld (48 colour x shape classes, 32 px) in the CoOp and GCD layouts under
   ``<cache>/synthetic/data`` (``<cache>`` = ``$CLIPCORE_CACHE_DIR`` or ``~/.cache/clipcore``);
2. pretrains the two small CLIPs of the world (student, teacher) unless they are cached;
3. base-to-novel (train on the 24 base classes, test on base and on the 24 novel ones): zero-shot
   student and teacher, CoOp supervised, CoOp+KDPL, CoOp+KDPL-CA (class-agnostic: trained on
   a dictionary of the world's words plus ~250 distractor words, no class names), CoOp+UPL,
   CoOp+PromptKD, KgCoOp and CLIP-LoRA (supervised and +KDPL), and (full profile) CoOp+TPT;
4. spectral filtering of that dictionary on the GCD train images with the teacher;
5. SpectralGCD (filtered concepts) and SimGCD: All/Old/New accuracy on the unlabelled train
   images (transductive), Hungarian-matched.

Output: ``<output-dir>/results.md`` (the table, also printed), ``results.json``,
``results.png`` (accuracy bars, and each trained run's loss and accuracy per epoch, also in
``results.json``), the protocols' own tables ``b2n/results.md`` and ``gcd/results.md``,
the filter's ``gcd/concepts/image_folder-<hash>/spectrum.png``, and one run folder per training. Finished
runs with the same config are reused on a second call. Extra ``key=value`` arguments are applied
to every run (e.g. ``logger.wandb.mode=offline``; W&B is off unless asked for).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("demo")


@dataclass(frozen=True)
class Profile:
    """Everything the demo's numbers depend on besides the code."""

    name: str
    student: str
    teacher: str
    # ShapeWorld images per class: CoOp train / val / test, GCD train / test.
    coop_train: int = 16
    coop_val: int = 4
    coop_test: int = 20
    gcd_train: int = 40
    gcd_test: int = 20
    coop_shots: int = 16
    coop_epochs: int = 20
    coop_lr: float = 0.01
    coop_batch: int = 32
    # 1.0 = flips only. At 32 px a random crop rescales the object (its size attribute) or cuts
    # it: with crops of scale 0.6-1, supervised CoOp lost 18 points on synthetic-student, while
    # the test student (quick profile), whose zero-shot errors are colours, gained more with them.
    coop_min_crop_scale: float = 1.0
    # Dictionary classes distilled per KDPL-CA step (the reference: 1000 of 20,930).
    kdpl_ca_k_max: int = 64
    # CLIP-LoRA's AdamW learning rate (the reference: 2e-4 over 8000 steps; the demo trains the
    # same 20 epochs as CoOp, 240 steps, and CoOp's SGD rate of 0.01 is far too large for AdamW).
    lora_lr: float = 0.002
    gcd_epochs: int = 8
    gcd_batch: int = 64
    gcd_feature_dim: int = 128
    gcd_head_hidden: int = 256
    gcd_head_bottleneck: int = 64
    gcd_extra: tuple[str, ...] = field(default_factory=tuple)
    # Rows evaluated with test-time prompt tuning, at this many views per image (the reference:
    # 64; 16 keeps the CPU demo within minutes: TPT is a tuning step per test image).
    tpt_rows: bool = True
    tpt_views: int = 16
    seed: int = 1

    def sizes(self):
        from clipcore.synthetic.write import WorldSizes

        return WorldSizes(self.coop_train, self.coop_val, self.coop_test, self.gcd_train, self.gcd_test)


PROFILES = {
    "full": Profile("full", "synthetic-student", "synthetic-teacher"),
    "quick": Profile("quick", "synthetic-student-test", "synthetic-teacher-test", coop_train=8, coop_val=2,
                     coop_test=10, gcd_train=10, gcd_test=4, coop_shots=8, coop_epochs=20, coop_lr=0.1, coop_batch=32,
                     coop_min_crop_scale=0.6,
                     kdpl_ca_k_max=32, gcd_epochs=2, gcd_batch=64, gcd_feature_dim=32, gcd_head_hidden=64,
                     gcd_head_bottleneck=32, tpt_rows=False),
}

B2N_METHODS = (("zeroshot", "Zero-shot student"), ("zeroshot-teacher", "Zero-shot teacher"),
               ("coop", "CoOp (supervised)"), ("coop+kdpl", "CoOp + KDPL"),
               ("coop+kdpl_ca", "CoOp + KDPL-CA"), ("coop+upl", "CoOp + UPL"),
               ("coop+promptkd", "CoOp + PromptKD (projector)"),
               ("kgcoop", "KgCoOp (supervised)"), ("kgcoop+kdpl", "KgCoOp + KDPL"))
# Low-rank adapters train with their own optimiser (AdamW), so with their own learning rate.
ADAPTER_METHODS = (("clip_lora", "CLIP-LoRA (supervised)"), ("clip_lora+kdpl", "CLIP-LoRA + KDPL"))
TPT_METHODS = (("coop@tpt", "CoOp (supervised) + TPT"),)
GCD_METHODS = (("spectralgcd", "SpectralGCD"), ("simgcd", "SimGCD"))
COLUMNS = ("Base", "Novel", "HM", "All", "Old", "New")


# -- set-up -------------------------------------------------------------------------------------
def default_data_root(profile: Profile) -> Path:
    """``<cache>/synthetic/data`` for the full profile, ``data-<profile>`` for the others: the
    profiles write worlds of different sizes, and one profile's run replacing the other's world
    would leave the finished runs of the other evaluating on a test set they were not scored on."""
    from clipcore.synthetic.models import synthetic_cache_dir

    return synthetic_cache_dir() / ("data" if profile.name == "full" else f"data-{profile.name}")


def prepare_world(profile: Profile, data_root: Path) -> tuple[Path, Path]:
    """Write both layouts (reused when present) and make sure both models are pretrained."""
    from clipcore.synthetic import ShapeWorld
    from clipcore.synthetic.models import SYNTHETIC_MODELS, bundle_path, is_complete, resolve_synthetic
    from clipcore.synthetic.write import write_world

    world = ShapeWorld(seed=SYNTHETIC_MODELS[profile.student].world_seed)
    log.info("writing ShapeWorld under %s (reused when already there)", data_root)
    coop_dir, gcd_dir = write_world(data_root, world, profile.sizes())
    for name in (profile.student, profile.teacher):
        if not is_complete(bundle_path(name)):
            log.info("pretraining %s (first run only; cached in %s)", name, bundle_path(name).parent)
        resolve_synthetic(name, progress=True)
    return coop_dir, gcd_dir


def write_dictionary(path: Path) -> Path:
    """The demo dictionary (class names, attribute words, distractors) as a ClassName CSV."""
    from clipcore.io import atomic_write
    from clipcore.synthetic import demo_dictionary

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["ClassName"])
            writer.writerows([w] for w in demo_dictionary())

    return atomic_write(path, write)


def model_ref(name: str) -> str:
    """A synthetic model by its bundle, whose folder name carries the pretraining settings' hash:
    a finished run is reused only for the very weights it was trained on (``synthetic-student``
    would name every rebuild of the student alike)."""
    from clipcore.synthetic.models import bundle_path

    return f"local-dir:{bundle_path(name)}"


def common_overrides(profile: Profile, output_dir: Path) -> list[str]:
    return [f"student.name={model_ref(profile.student)}", "student.pretrained=null", "student.config=null",
            f"teacher.name={model_ref(profile.teacher)}", "teacher.pretrained=null", "teacher.config=null",
            f"output_dir={output_dir}", "trainer.accelerator=cpu", "trainer.devices=1",
            "trainer.precision=32-true", "trainer.enable_progress_bar=true", "trainer.log_every_n_steps=5",
            "logger.wandb.mode=disabled", "data.num_workers=0", "export=false"]


# -- base-to-novel ------------------------------------------------------------------------------
def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def run_base_to_novel(profile: Profile, data_root: Path, output_dir: Path, dictionary: Path,
                      extra: list[str]) -> list[dict]:
    from clipdistill.protocols import run_protocol
    from clipdistill.protocols.runner import rebuild_tables

    overrides = [*common_overrides(profile, output_dir), f"data.root={data_root}",
                 f"data.num_shots={profile.coop_shots}", f"data.batch_size={profile.coop_batch}",
                 f"data.min_crop_scale={profile.coop_min_crop_scale}",
                 "data.eval_batch_size=256", f"trainer.max_epochs={profile.coop_epochs}",
                 f"optim.lr={profile.coop_lr}", "optim.warmup_epochs=0",
                 f"objective.dictionary={dictionary}", f"objective.k_max={profile.kdpl_ca_k_max}",
                 f"tpt.views={profile.tpt_views}", *extra]
    overrides.append(f"objective.teacher_export={train_prompt_teacher(overrides, profile)}")
    methods = (*B2N_METHODS, *(TPT_METHODS if profile.tpt_rows else ()))
    log.info("base-to-novel: %s", ", ".join(title for _, title in (*methods, *ADAPTER_METHODS)))
    outcome = run_protocol("b2n", [label for label, _ in methods], ["shapeworld"], [profile.seed],
                           overrides=overrides)
    adapters = run_protocol("b2n", [label for label, _ in ADAPTER_METHODS], ["shapeworld"], [profile.seed],
                            overrides=[*overrides, f"optim.lr={profile.lora_lr}"])
    rebuild_tables(output_dir, ["b2n"])  # one b2n table for both calls
    rows = []
    for done, group in ((outcome, methods), (adapters, ADAPTER_METHODS)):
        for label, title in group:
            acc = {r.metric: r.value for r in done.results if r.method == label}
            rows.append({"protocol": "base-to-novel", "method": title, "Base": acc["base"],
                         "Novel": acc["novel"], "HM": harmonic_mean(acc["base"], acc["novel"]),
                         "curves": curves_of(done, label, "shapeworld", profile.seed)})
    return rows


def curves_of(outcome, label: str, dataset: str, seed: int) -> dict | None:
    """Per-epoch training loss and accuracy of a trained cell (None for zero-shot rows and TPT
    evaluations, which train nothing of their own)."""
    from clipdistill.learning_curves import epoch_curves

    run_dir = outcome.run_dirs.get((label, dataset, seed))
    curves = epoch_curves(run_dir) if run_dir is not None else {}
    return curves if curves.get("epoch") and "@" not in label else None


def train_prompt_teacher(overrides: list[str], profile: Profile) -> Path:
    """PromptKD's teacher: CoOp on the teacher model, supervised on the base classes, exported
    (the reference's is PromptSRC on a ViT-L/14; the demo's two-block models take no deep prompts)."""
    from clipcore.config import load_config
    from clipdistill.app import CONFIG_DIR
    from clipdistill.protocols.runner import ensure_run

    cfg = load_config([CONFIG_DIR / "method" / "coop.yaml", CONFIG_DIR / "objective" / "supervised.yaml"],
                      [o for o in overrides if not o.startswith(("objective.", "tpt."))] + [
                          f"student.name={model_ref(profile.teacher)}", "data.name=shapeworld",
                          "data.subsample_classes=base", f"seed={profile.seed}", "experiment=b2n/promptkd-teacher",
                          "export=true"])
    run = ensure_run(cfg)
    return run / "exports" / "final"


# -- spectral filtering and GCD -------------------------------------------------------------------
def gcd_overrides(profile: Profile, gcd_dir: Path, output_dir: Path, dictionary: Path, extra: list[str]) -> list[str]:
    return [*common_overrides(profile, output_dir), "data.name=image_folder", f"data.root={gcd_dir}",
            f"data.batch_size={profile.gcd_batch}", "data.eval_batch_size=256", "data.normalization=clip",
            f"trainer.max_epochs={profile.gcd_epochs}", f"trainer.check_val_every_n_epoch={profile.gcd_epochs}",
            f"seed={profile.seed}", f"gcd.dictionary={dictionary}", "gcd.template=a photo of a {}.",
            f"gcd.feature_dim={profile.gcd_feature_dim}", f"gcd.head_hidden_dim={profile.gcd_head_hidden}",
            f"gcd.head_bottleneck_dim={profile.gcd_head_bottleneck}",
            f"gcd.loss.warmup_teacher_temp_epochs={max(1, profile.gcd_epochs // 2)}", *profile.gcd_extra, *extra]


def world_words() -> set[str]:
    from clipcore.synthetic import ATTRIBUTE_WORDS, ShapeWorld

    return {w.lower() for w in (*ShapeWorld().classnames, *ATTRIBUTE_WORDS)}


def filter_summary(concepts_csv: Path) -> dict:
    """What the filter kept: counts, and how many kept concepts are words of the world."""
    from clipcore.assets import read_dictionary_csv

    summary = json.loads((concepts_csv.parent / "filter.json").read_text())
    kept = read_dictionary_csv(concepts_csv)
    words = world_words()
    kept_world = sum(w.lower() in words for w in kept)
    top = kept[:20]
    return {"K": summary["K"], "n_keep": summary["n_keep"], "k_e": summary["k_e"],
            "kept_world_words": kept_world, "kept_distractors": len(kept) - kept_world,
            "precision_kept": kept_world / max(1, len(kept)),
            "precision_top20": sum(w.lower() in words for w in top) / max(1, len(top)),
            "dictionary_world_fraction": len(words) / summary["K"],
            "top_concepts": kept[:10], "csv": str(concepts_csv),
            "spectrum": str(concepts_csv.parent / "spectrum.png")}


def run_gcd(profile: Profile, gcd_dir: Path, output_dir: Path, dictionary: Path,
            extra: list[str]) -> tuple[list[dict], dict]:
    """The GCD protocol on the world: spectral filtering, SpectralGCD and SimGCD, one table
    (``<output_dir>/gcd/results.md``); returns the demo's rows and what the filter kept."""
    from clipdistill.protocols import run_protocol

    log.info("category discovery: %s", ", ".join(title for _, title in GCD_METHODS))
    outcome = run_protocol("gcd", [method for method, _ in GCD_METHODS], ["image_folder"], [profile.seed],
                           overrides=gcd_overrides(profile, gcd_dir, output_dir, dictionary, extra))
    rows = []
    for method, title in GCD_METHODS:
        value = {r.metric: r.value for r in outcome.results if r.method == method}
        rows.append({"protocol": "GCD (transductive)", "method": title,
                     **{part.capitalize(): value[f"transductive/{part}_v2"] for part in ("all", "old", "new")},
                     "inductive_all": value["inductive/all_v2"],
                     "curves": curves_of(outcome, method, "image_folder", profile.seed)})
    # The concepts SpectralGCD trained on (an output folder may hold filters of earlier teachers).
    from omegaconf import OmegaConf

    run_dir = outcome.run_dirs[("spectralgcd", "image_folder", profile.seed)]
    concepts_csv = Path(OmegaConf.load(run_dir / "config.yaml").gcd.concepts_csv)
    return rows, filter_summary(concepts_csv)


# -- report -------------------------------------------------------------------------------------
def _cell(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else "–"


def results_markdown(profile: Profile, rows: list[dict], filt: dict, n_classes: tuple[int, int, int]) -> str:
    n_all, n_base, n_new = n_classes
    lines = [
        f"ShapeWorld demo ({profile.name} profile; seed {profile.seed}). Top-1 accuracy in %, on held-out "
        f"images of a synthetic world of {n_all} colour x shape classes (32 px). Base-to-novel: trained on "
        f"the {n_base} base classes ({profile.coop_shots} shots each, {profile.coop_epochs} epochs), tested on "
        f"base and on the {n_new} novel classes; HM = harmonic mean. GCD: {n_base} known classes, half of "
        f"their train images labelled, {profile.gcd_epochs} epochs; All/Old/New = Hungarian-matched clustering "
        f"accuracy on the unlabelled train images. Student and teacher are small CLIPs pretrained on this "
        "world in minutes on a CPU: these numbers exercise the whole pipeline, they are not paper results.",
        "",
        "| Protocol | Method | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        values = " | ".join(_cell(row.get(c)) for c in COLUMNS)
        lines.append(f"| {row['protocol']} | {row['method']} | {values} |")
    lines += [
        "",
        f"Spectral filtering (teacher, {filt['K']} dictionary concepts, "
        f"{100 * filt['dictionary_world_fraction']:.0f}% of them words of the world): kept {filt['n_keep']} "
        f"(k_e = {filt['k_e']} eigenvectors); {filt['kept_world_words']} kept are class names or attribute words "
        f"({100 * filt['precision_kept']:.0f}%), {filt['kept_distractors']} distractors. Top kept: "
        + ", ".join(filt["top_concepts"]) + ".",
    ]
    return "\n".join(lines) + "\n"


def plot_results(rows: list[dict], path: Path) -> Path:
    """Accuracy bars of every row (top) and the learning curves of every trained run (bottom:
    training loss and, where labels are the true ones, training accuracy per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), gridspec_kw={"width_ratios": [5, 3, 3]})
    bars = fig.add_subplot(2, 1, 1)  # the accuracy bars span the top row
    for ax in axes[0]:
        ax.remove()
    b2n = [r for r in rows if r["protocol"] == "base-to-novel"]
    gcd = [r for r in rows if r["protocol"] == "GCD (transductive)"]
    _accuracy_bars(bars, b2n, ("Base", "Novel", "HM"), gcd, ("All", "Old", "New"))
    for ax, group, metric, title in ((axes[1, 0], b2n, "train/loss", "base-to-novel: training loss"),
                                     (axes[1, 1], b2n, "train/acc", "base-to-novel: training accuracy"),
                                     (axes[1, 2], gcd, "train/loss", "GCD: training loss")):
        for r in group:
            curves = r.get("curves") or {}
            if metric in curves:
                values = [100 * v for v in curves[metric]] if metric == "train/acc" else curves[metric]
                ax.plot(curves["epoch"], values, marker=".", label=r["method"])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("%" if metric == "train/acc" else "loss (epoch mean of logged steps)")
        if metric == "train/loss":
            ax.set_yscale("log")  # losses differ in scale: PromptKD's KL is weighted by 1000
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy_bars(ax, b2n: list[dict], b2n_metrics: tuple, gcd: list[dict], gcd_metrics: tuple) -> None:
    """Grouped bars, base-to-novel rows then GCD rows, on one axis (one colour per metric)."""
    labels, position = [], 0
    for group, metrics in ((b2n, b2n_metrics), (gcd, gcd_metrics)):
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            xs = [position + j + (i - (len(metrics) - 1) / 2) * width for j in range(len(group))]
            ax.bar(xs, [100 * r[metric] for r in group], width, label=metric)
        labels += [r["method"].replace(" (", "\n(").replace(" + ", "\n+ ") for r in group]
        position += len(group) + 0.5
    ticks = [j for j in range(len(b2n))] + [len(b2n) + 0.5 + j for j in range(len(gcd))]
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("base-to-novel (Base / Novel / HM) and GCD (All / Old / New)", fontsize=10)
    ax.legend(fontsize=7, ncol=6)


def _write(path: Path, text: str) -> None:
    from clipcore.io import atomic_write_text

    atomic_write_text(path, text)


def run_demo(profile: Profile, output_dir: Path, data_root: Path | None = None, extra: list[str] = ()) -> dict:
    """Run every part of the demo; returns the results (also written under ``output_dir``)."""
    from clipdistill.app import register_methods

    register_methods()
    started, started_cpu = time.perf_counter(), time.process_time()
    extra = list(extra)
    output_dir = Path(output_dir).resolve()
    data_root = Path(data_root or default_data_root(profile)).resolve()
    coop_dir, gcd_dir = prepare_world(profile, data_root)
    dictionary = write_dictionary(output_dir / "dictionary.csv")
    rows = run_base_to_novel(profile, data_root, output_dir, dictionary, extra)
    gcd_rows, filt = run_gcd(profile, gcd_dir, output_dir, dictionary, extra)
    rows += gcd_rows
    splits = json.loads((gcd_dir / "splits.json").read_text())
    n_all = len(splits["classes"])
    n_base = n_all // 2  # Dassl's base/new split: the first half of the labels
    table = results_markdown(profile, rows, filt, (n_all, n_base, n_all - n_base))
    _write(output_dir / "results.md", table)
    plot_results(rows, output_dir / "results.png")
    record = {"profile": asdict(profile), "rows": rows, "filter": filt, "data_root": str(data_root),
              "wall_seconds": round(time.perf_counter() - started, 1),
              "cpu_seconds_main_process": round(time.process_time() - started_cpu, 1),
              "torch_threads": _torch_threads()}
    _write(output_dir / "results.json", json.dumps(record, indent=2))
    return {"table": table, **record}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None, prog: str = "demo.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="test-profile models and tiny settings (~1-2 min)")
    parser.add_argument("--data-root", type=Path,
                        help="where ShapeWorld is written (default <cache>/synthetic/data, data-quick with --quick)")
    parser.add_argument("--output-dir", type=Path,
                        help="default ./runs/demo (./runs/demo-quick with --quick), under the current directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here is downloaded
    from clipcore.cli import prepare_environment

    prepare_environment()
    profile = PROFILES["quick" if args.quick else "full"]
    output_dir = args.output_dir or Path("runs") / ("demo-quick" if args.quick else "demo")
    result = run_demo(profile, output_dir, args.data_root, args.overrides)
    print()
    print(result["table"])
    print(f"Written to {Path(output_dir) / 'results.md'} (plots: results.png, {result['filter']['spectrum']}); "
          f"{result['wall_seconds']:.0f} s wall, {result['cpu_seconds_main_process']:.0f} s CPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
