"""SpectralGCD and SimGCD end to end on tiny models, through the real entry points:
filter -> teacher cache -> train -> evaluate -> export -> assign; resume; gradients."""
from __future__ import annotations

import csv
import json
import types
from pathlib import Path

import pytest
import torch
from gcd_layouts import CONCEPTS, GCD_CLASSES, GCD_KNOWN, write_dictionary, write_gcd_image_folder
from training_helpers import epochs_done, gcd_overrides

from clipcore import runner
from clipcore.build import backbone_from_config
from clipcore.config import load_config
from clipcore.encoder import FrozenEncoder
from clipcore.export import read_export
from clipcore.registry import method_builder
from clipdistill.app import register_methods

register_methods()
REPO = Path(__file__).resolve().parents[1]
METHOD_YAML = str(REPO / "configs" / "method" / "spectralgcd.yaml")


def make_config(*args, **extra):
    return load_config([METHOD_YAML], gcd_overrides(*args, **extra))


def cache_files(root: Path) -> list[Path]:
    return sorted((root / "cache" / "representations").glob("*.safetensors"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Filter the dictionary, then train SpectralGCD on the kept concepts."""
    import gcd.filter

    root = tmp_path_factory.mktemp("gcd")
    data = write_gcd_image_folder(root / "data")
    dictionary = write_dictionary(root / "dictionary.csv")
    concepts_csv = root / "concepts" / "image_folder_concepts.csv"
    args = (root, data, dictionary)
    assert gcd.filter.main(["-c", METHOD_YAML, *gcd_overrides(*args, gcd__concepts_csv=concepts_csv)]) == 0
    run_dir = runner.train(make_config(*args, gcd__concepts_csv=concepts_csv))
    return types.SimpleNamespace(root=root, data=data, dictionary=dictionary, csv=concepts_csv,
                                 run_dir=run_dir, args=args)


def read_column(path: Path, column: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row[column] for row in csv.DictReader(fh)]


def test_filter_keeps_the_spectral_ranking_of_the_teacher_logits(pipeline):
    from gcd.methods import gcd_datamodule
    from gcd.spectral import spectral_filter_details
    from gcd.teacher_cache import image_concept_logits, teacher_text_features

    summary = json.loads((pipeline.csv.parent / "filter.json").read_text())
    assert (pipeline.csv.parent / "spectrum.png").stat().st_size > 0
    # 20 names, 'Fruit' duplicates 'fruit', plus the 4 known class names appended.
    known = [c.replace("_", " ") for c in GCD_KNOWN]
    merged = [c for c in CONCEPTS if c != "Fruit"] + known
    assert summary["K"] == len(merged) and summary["N"] == 6 * len(GCD_CLASSES)
    kept = read_column(pipeline.csv, "ClassName")
    assert len(kept) == summary["n_keep"] and 1 <= len(kept) < len(merged)
    # The same numbers computed in one piece: teacher logits over all train images.
    cfg = make_config(*pipeline.args)
    teacher = backbone_from_config(cfg.teacher)
    dm = gcd_datamodule(cfg, teacher.image_size)
    text = teacher_text_features(teacher, [f"a photo of a {c} ." for c in merged])
    logits = torch.cat([image_concept_logits(teacher, b["image"], text, 0.01)
                        for b in dm.train_eval_dataloader()])
    details = spectral_filter_details(logits, 0.95, 0.99)
    assert kept == [merged[i] for i in details.kept.tolist()]
    assert summary["k_e"] == details.k_e


def test_training_writes_metrics_plots_trainable_checkpoint_and_export(pipeline):
    metrics = json.loads((pipeline.run_dir / "eval" / "metrics.json").read_text())
    for split in ("transductive", "inductive"):
        for part in ("all", "old", "new"):
            for version in ("v2", "v1"):
                assert 0.0 <= metrics[f"test/{split}/{part}_{version}"] <= 1.0
    assert (pipeline.run_dir / "eval" / "confusion_val_transductive.png").is_file()
    assert (pipeline.run_dir / "eval" / "confusion_test_inductive.png").is_file()
    logged = (pipeline.run_dir / "metrics" / "0" / "metrics.csv").read_text().splitlines()[0]
    for name in ("train/distill_forward", "train/distill_reverse", "train/memax", "val/transductive/all_v2",
                 "lr-SGD/backbone", "lr-SGD/ln_t"):
        assert name in logged
    state = torch.load(pipeline.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    # Only the last vision block (tiny student: 2 blocks), ln_t and the head's trained tensors.
    assert {k.split(".")[0] for k in state} == {"student", "ln_t", "head"}
    assert all(k.startswith("student.model.visual.transformer.resblocks.1.") for k in state if k.startswith("student"))
    assert not any("original0" in k for k in state)  # weight_g stays frozen at 1
    tensors, meta = read_export(pipeline.run_dir / "exports" / "final")
    assert meta["method"] == "spectralgcd" and meta["n_old"] == len(GCD_KNOWN)
    assert meta["concepts"][: len(read_column(pipeline.csv, "ClassName"))] == read_column(pipeline.csv, "ClassName")
    assert "student.visual.conv1.weight" in tensors and "ln_t.weight" in tensors
    assert tensors["concept_text"].shape[0] == len(meta["concepts"])


def test_eval_of_checkpoint_and_of_export_agree(pipeline, tmp_path):
    import eval as eval_entry

    ckpt = pipeline.run_dir / "checkpoints" / "last.ckpt"
    assert eval_entry.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "a")]) == 0
    assert eval_entry.main(["--export", str(pipeline.run_dir / "exports" / "final"), "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a == b == json.loads((pipeline.run_dir / "eval" / "metrics.json").read_text())


def test_assign_reproduces_the_trained_model(pipeline, tmp_path):
    import gcd.assign
    from clipcore.data import build_gcd_transform, load_image

    out = tmp_path / "clusters.csv"
    images = pipeline.data / "test"
    assert gcd.assign.main(["--export", str(pipeline.run_dir / "exports" / "final"), "--images", str(images),
                            "--out", str(out), "--device", "cpu"]) == 0
    paths, clusters = read_column(out, "path"), [int(c) for c in read_column(out, "cluster")]
    assert len(paths) == 2 * len(GCD_CLASSES) and all(0 <= c < len(GCD_CLASSES) for c in clusters)
    _, trained, _ = runner.module_from_checkpoint(pipeline.run_dir / "checkpoints" / "last.ckpt")
    transform = build_gcd_transform(False, 32, "imagenet")
    batch = torch.stack([transform(load_image(images / p)) for p in paths])
    with torch.no_grad():
        expected = trained.eval()(batch)["logits"].argmax(1).tolist()
    assert clusters == expected


def test_teacher_cache_is_hit_and_recomputed_when_its_inputs_change(tmp_path, monkeypatch):
    data = write_gcd_image_folder(tmp_path / "data")
    dictionary = write_dictionary(tmp_path / "dictionary.csv")
    calls = []
    original = FrozenEncoder.encode_image  # the teacher is a FrozenEncoder (any open_clip model)
    monkeypatch.setattr(FrozenEncoder, "encode_image", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))

    def representations(**extra):
        calls.clear()
        module, _ = method_builder("spectralgcd")(make_config(tmp_path, data, dictionary, **extra))
        return module._teacher_representations(), len(calls)

    first, n_first = representations()
    again, n_again = representations()
    assert n_first > 0 and n_again == 0 and torch.equal(first, again)
    assert len(cache_files(tmp_path)) == 1
    assert first.dtype == torch.float16 and torch.all(first.float().max(dim=1).values == 0)
    write_dictionary(tmp_path / "other.csv", CONCEPTS[:5])
    other, n_other = representations(gcd__dictionary=tmp_path / "other.csv")
    assert n_other > 0 and other.shape[1] == 5 + len(GCD_KNOWN)  # 'fruit'..'flower' + known classes
    _, n_tau = representations(gcd__tau=0.02)
    (data / "train" / GCD_CLASSES[-1] / "0.png").unlink()  # another train split
    fewer, n_items = representations()
    assert n_tau > 0 and n_items > 0 and fewer.shape[0] == first.shape[0] - 1
    assert len(cache_files(tmp_path)) == 4


def test_resume_equals_uninterrupted_run_and_reuses_the_teacher_cache(tmp_path):
    data = write_gcd_image_folder(tmp_path / "data")
    dictionary = write_dictionary(tmp_path / "dictionary.csv")

    def train(where: str, **extra) -> Path:
        return runner.train(make_config(tmp_path, data, dictionary, output_dir=tmp_path / where, **extra))

    full = train("a")
    part = train("b", trainer__max_steps=4)  # stops after the first of two 4-step epochs
    assert epochs_done(torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)) == 1
    resumed = train("b", resume=part / "checkpoints" / "last.ckpt", resume_allow="[trainer.max_steps]")
    assert resumed == part
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    # Three runs, one teacher computation.
    assert len(cache_files(tmp_path)) == 1


def test_gradients_reach_only_the_last_vision_block_ln_t_and_head(tmp_path):
    data = write_gcd_image_folder(tmp_path / "data")
    dictionary = write_dictionary(tmp_path / "dictionary.csv")
    module, dm = method_builder("spectralgcd")(make_config(tmp_path, data, dictionary))
    module.teacher_reps = torch.randn(len(dm.splits.train), len(module.concepts))
    batch = next(iter(dm.train_dataloader()))
    module.compute_losses(batch)["loss"].backward()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    last_block = "student.model.visual.transformer.resblocks.1."
    assert trainable == {n for n, _ in module.named_parameters()
                         if n.startswith((last_block, "ln_t.", "head.")) and "original0" not in n}
    for name, p in module.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    module.teacher_reps = torch.full_like(module.teacher_reps, float("nan"))
    module.training_step(batch, 0)  # recorded on the device, read at the next check
    with pytest.raises(FloatingPointError, match="epoch 0, step 0"):
        module.loss_watch.check()


def test_simgcd_trains_without_concepts_or_teacher(tmp_path):
    data = write_gcd_image_folder(tmp_path / "data")
    run_dir = runner.train(load_config([str(REPO / "configs" / "method" / "simgcd.yaml")], gcd_overrides(
        tmp_path, data, tmp_path / "missing.csv", method="simgcd", trainer__max_epochs=1)))
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/transductive/all_v2"] <= 1.0
    tensors, meta = read_export(run_dir / "exports" / "final")
    assert meta["method"] == "simgcd" and meta["concepts"] is None
    assert not any(k.startswith(("ln_t", "concept_text")) for k in tensors)
    assert not (tmp_path / "cache").exists()  # no teacher was run


def test_memax_weight_and_template_tables():
    from gcd.config import GCDLossConfig, GCDSection, memax_weight, prompt_template

    section = GCDSection()
    assert [memax_weight(section.loss, d) for d in ("cub", "scars", "aircraft", "cifar10", "cifar100",
                                                     "imagenet_100", "image_folder")] == [2, 2, 1, 1, 4, 1, 1]
    assert memax_weight(GCDLossConfig(memax_weight=3.0), "cub") == 3.0
    assert prompt_template(section, "cub") == "a photo of a {} ."
    assert prompt_template(GCDSection(specialized_template=True), "cub") == "a photo of a {}, a type of bird."


def test_frozen_blocks_held_in_the_compute_dtype_train_exactly_as_recast_ones(tmp_path, monkeypatch):
    """bf16-mixed (here on the CPU): the frozen blocks' weights are bf16 copies during each step, the
    trained last block stays fp32, and the run learns bit for bit what the re-casting run learns."""
    from clipcore.module import ClipMethodModule
    from gcd.module import GCDModule

    data = write_gcd_image_folder(tmp_path / "data")
    dictionary = write_dictionary(tmp_path / "dictionary.csv")
    step, seen = GCDModule.training_step, []

    def probing(self, batch, batch_idx):
        blocks = self.student.model.visual.transformer.resblocks
        seen.append((blocks[0].mlp.c_fc.weight.dtype, blocks[-1].mlp.c_fc.weight.dtype))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(GCDModule, "training_step", probing)
    states = {}
    for copies in (True, False):
        monkeypatch.setattr(ClipMethodModule, "frozen_compute_copies", copies)
        seen.clear()
        run = runner.train(make_config(tmp_path, data, dictionary, output_dir=tmp_path / f"copies-{copies}",
                                       trainer__precision="bf16-mixed", trainer__max_epochs=1))
        states[copies] = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert set(seen) == {(torch.bfloat16 if copies else torch.float32, torch.float32)}
    for key, tensor in states[False].items():
        assert torch.equal(states[True][key], tensor), key
