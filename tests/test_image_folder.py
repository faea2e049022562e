"""data.name=image_folder: your own class-per-folder data, for every classification method."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from image_folders import write_image_folder
from training_helpers import overrides, prompt_method_files

from clipcore.data import DataError, get_dataset
from clipcore.data.from_config import read_splits


def splits_of(root: Path, **data):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "image_folder", "root": str(root), "num_shots": 0,
                            "subsample_classes": "all", **data})
    return read_splits(cfg, seed=1)


def test_folders_become_classes_with_readable_names_and_a_fixed_hold_out(tmp_path):
    root = write_image_folder(tmp_path / "pets", formats=("png", "jpg", "webp", "bmp", "tiff"))
    splits = splits_of(root)
    assert splits.classnames == ["golden retriever", "red fox", "tabby cat"]  # sorted folders
    assert get_dataset("image_folder").template == "a photo of a {}."
    # No val/: one image per class (10% of 10) is held out of train, the same one every time.
    assert splits.sizes() == {"train": 27, "val": 3, "test": 9}
    assert {d.path for d in splits.val}.isdisjoint(d.path for d in splits.train)
    assert [d.path for d in splits_of(root).val] == [d.path for d in splits.val]
    assert {Path(d.path).suffix for d in splits.train} == {".png", ".jpg", ".webp", ".bmp", ".tiff"}
    assert all(d.classname == splits.classnames[d.label] for d in splits.train + splits.test)


def test_a_val_folder_is_used_and_classnames_txt_names_the_classes(tmp_path):
    root = write_image_folder(tmp_path / "pets", val=True)
    (root / "classnames.txt").write_text("golden_retriever\tGolden Retriever\nred_fox\tfox\ntabby_cat\ttabby\n")
    splits = splits_of(root)
    assert splits.classnames == ["Golden Retriever", "fox", "tabby"]
    assert splits.sizes() == {"train": 30, "val": 6, "test": 9}


def test_few_shot_and_base_new_subsets_apply(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=["a", "b", "c", "d"])
    few = splits_of(root, num_shots=2)
    assert few.sizes()["train"] == 8
    base, new = splits_of(root, subsample_classes="base"), splits_of(root, subsample_classes="new")
    assert base.classnames == ["a", "b"] and new.classnames == ["c", "d"]


@pytest.mark.parametrize("damage, message", [
    (lambda r: __import__("shutil").rmtree(r / "test"), r"image_folder test split: expected a directory at .*test"),
    (lambda r: __import__("shutil").rmtree(r / "test" / "red_fox"),
     r"class folder 'red_fox' is in train but not in test"),
    (lambda r: [p.unlink() for p in (r / "train" / "red_fox").iterdir()],
     r"class folder .*train/red_fox holds no images"),
    (lambda r: (r / "classnames.txt").write_text("golden_retriever\tdog\n"),
     r"classnames.txt does not match the class folders: no line for 'red_fox', 'tabby_cat'"),
    (lambda r: (r / "classnames.txt").write_text("golden_retriever dog\n"),
     r"classnames.txt, line 1: expected '<folder><TAB><class name>'"),
])
def test_damaged_layouts_are_named(tmp_path, damage, message):
    root = write_image_folder(tmp_path / "pets")
    damage(root)
    with pytest.raises(DataError, match=message):
        splits_of(root)


def test_zero_shot_train_eval_and_export_on_an_image_folder(tmp_path):
    """The whole user path on one folder: zero-shot, CoOp+KDPL training, eval --ckpt, --export."""
    from clipdistill import evaluate, train

    root = write_image_folder(tmp_path / "pets")
    out = tmp_path / "runs"
    common = {"data__name": "image_folder", "data__root": str(root)}
    zs = overrides(root, out, method="zeroshot", experiment="zs", **common,
                   zeroshot__templates=["a photo of a {}.", "a blurry photo of a {c}."])
    assert evaluate.main(zs + ["--out", str(tmp_path / "zs")]) == 0
    metrics = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert set(metrics) == {"test/acc", "test/acc_top5", "test/mean_class_acc"}
    assert metrics["test/acc_top5"] == 1.0  # 3 classes: the top 5 hold every class
    with open(tmp_path / "zs" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and {r["label"] for r in rows} == {"golden retriever", "red fox", "tabby cat"}

    files = [str(f) for f in prompt_method_files("coop", "kdpl")]
    args = overrides(root, out, experiment="folder", trainer__max_epochs=1, **common)
    assert train.main(sum([["-c", f] for f in files], []) + args) == 0
    run = next((out / "folder").iterdir())
    assert "name: image_folder" in (run / "config.yaml").read_text()
    assert evaluate.main(["--ckpt", str(run / "checkpoints" / "last.ckpt"), "data.subsample_classes=new",
                          "--out", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "predictions.csv").read_text().count("\n") == 1 + 3  # header + the new class
    assert evaluate.main(["--export", str(run / "exports" / "final"), "--out", str(tmp_path / "exp")]) == 0
    assert json.loads((tmp_path / "exp" / "metrics.json").read_text())["test/acc"] == pytest.approx(
        json.loads((run / "eval" / "metrics.json").read_text())["test/acc"])
