"""CoOp dataset readers on miniature copies of the real on-disk layouts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from coop_layouts import ALL_NAMES, JSON_LAYOUTS, snapshot, write_coop_dataset

import kdpl.datasets  # noqa: F401  (registers the datasets)
from clipcore.classnames import prompts_for
from clipcore.data import DataError, get_dataset, list_datasets, load_image, subsample_classes

CLASSES = {
    "fgvc_aircraft": ["707-320", "F-16A/B", "Global Express"],  # spaces and slashes are kept
    "imagenet": ["tench", "goldfish", "great white shark"],
}
COUNTS = {"train": 3, "val": 1, "test": 2}
TEST_ONLY = {"imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
SPEC_TEMPLATES = {  # kdpl spec §3.4
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "food101": "a photo of {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
    **{n: "a photo of a {}." for n in ("stanford_cars", "sun397", "caltech101", "imagenet",
                                       "imagenet_v2", "imagenet_sketch", "imagenet_a",
                                       "imagenet_r")},
}


def _classes(name):
    return CLASSES.get(name, ["Abyssinian", "basset_hound", "cat_3"])


def test_all_fifteen_registered_with_spec_templates():
    assert set(ALL_NAMES) <= set(list_datasets())
    assert len(ALL_NAMES) == 15
    for name, template in SPEC_TEMPLATES.items():
        assert get_dataset(name).template == template, name
    assert prompts_for(get_dataset("oxford_pets").template, ["basset_hound"]) == [
        "a photo of a basset hound, a type of pet."]


def test_unknown_dataset_lists_registered_names():
    with pytest.raises(ValueError, match="oxford_pets") as info:
        get_dataset("oxford_pet")
    assert "'oxford_pet'" in str(info.value)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_reader_matches_written_layout(tmp_path, name):
    classes = _classes(name)
    expected = write_coop_dataset(tmp_path, name, classes, COUNTS)
    before = snapshot(tmp_path)
    splits = get_dataset(name).read(tmp_path)
    assert snapshot(tmp_path) == before  # reading writes no cache / pickle / split file

    assert splits.classnames == classes
    for split in ("train", "val", "test"):
        got = [(d.label, d.classname) for d in splits.split(split)]
        assert sorted(got) == sorted(expected[split]), split
    if name in TEST_ONLY:
        assert splits.train == [] and splits.val == []
        assert len(splits.test) == COUNTS["test"] * len(classes)
    else:
        assert len(splits.train) == COUNTS["train"] * len(classes)
    for datum in splits.train[:2] + splits.test[:2]:
        assert Path(datum.path).is_file()
        assert load_image(datum.path).mode == "RGB"


def test_imagenet_val_is_test(tmp_path):
    write_coop_dataset(tmp_path, "imagenet", CLASSES["imagenet"], COUNTS)
    splits = get_dataset("imagenet").read(tmp_path)
    assert splits.val == splits.test and len(splits.test) == 2 * 3
    assert all("/images/val/" in d.path for d in splits.test)
    assert not (tmp_path / "imagenet" / "preprocessed.pkl").exists()


def test_imagenet_a_labels_follow_present_folders(tmp_path):
    # classnames.txt lists 6 wnids; only 3 have folders (plus README.txt): labels 0..2.
    write_coop_dataset(tmp_path, "imagenet_a", ["tench", "goldfish", "shark"], COUNTS)
    splits = get_dataset("imagenet_a").read(tmp_path)
    assert splits.num_classes == 3
    assert sorted({d.label for d in splits.test}) == [0, 1, 2]
    by_label = {d.label: d.classname for d in splits.test}
    assert by_label == {0: "tench", 1: "goldfish", 2: "shark"}


def test_base_new_on_real_reader(tmp_path):
    write_coop_dataset(tmp_path, "eurosat", [f"class{i}" for i in range(5)], COUNTS)
    splits = get_dataset("eurosat").read(tmp_path)
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    assert base.classnames == ["class0", "class1", "class2"]
    assert new.classnames == ["class3", "class4"]
    assert {d.label for d in new.test} == {0, 1}
    assert all(new.classnames[d.label] == d.classname for d in new.test + new.train + new.val)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_missing_dataset_folder_names_path_and_docs(tmp_path, name):
    with pytest.raises(DataError) as info:
        get_dataset(name).read(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "DATASETS.md" in message and "KaiyangZhou/CoOp" in message


@pytest.mark.parametrize("name", sorted(JSON_LAYOUTS))
def test_missing_split_json_fails_instead_of_regenerating(tmp_path, name):
    write_coop_dataset(tmp_path, name, _classes(name), COUNTS)
    folder, _, split_name = JSON_LAYOUTS[name]
    split_file = tmp_path / folder / split_name
    split_file.unlink()
    with pytest.raises(DataError, match="split file") as info:
        get_dataset(name).read(tmp_path)
    assert str(split_file) in str(info.value)
    assert not split_file.exists()


def test_missing_fgvc_list_and_classnames(tmp_path):
    write_coop_dataset(tmp_path, "fgvc_aircraft", CLASSES["fgvc_aircraft"], COUNTS)
    (tmp_path / "fgvc_aircraft" / "images_variant_val.txt").unlink()
    with pytest.raises(DataError, match="images_variant_val.txt"):
        get_dataset("fgvc_aircraft").read(tmp_path)
    write_coop_dataset(tmp_path / "b", "imagenet_r", ["a", "b"], COUNTS)
    (tmp_path / "b" / "imagenet-rendition" / "classnames.txt").unlink()
    with pytest.raises(DataError, match="classnames.txt"):
        get_dataset("imagenet_r").read(tmp_path / "b")


def test_fgvc_unknown_variant_is_reported(tmp_path):
    write_coop_dataset(tmp_path, "fgvc_aircraft", CLASSES["fgvc_aircraft"], COUNTS)
    with open(tmp_path / "fgvc_aircraft" / "images_variant_test.txt", "a") as f:
        f.write("9999999 Concorde\n")
    with pytest.raises(DataError, match="Concorde"):
        get_dataset("fgvc_aircraft").read(tmp_path)


def test_inconsistent_split_json_is_reported(tmp_path):
    write_coop_dataset(tmp_path, "dtd", ["banded", "braided"], COUNTS)
    split_file = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    raw = json.loads(split_file.read_text())
    raw["test"][0][2] = "bumpy"  # label 0 now has two names
    split_file.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="label 0"):
        get_dataset("dtd").read(tmp_path)


def test_corrupt_image_in_dataset_names_file(tmp_path):
    write_coop_dataset(tmp_path, "oxford_pets", _classes("oxford_pets"), COUNTS)
    splits = get_dataset("oxford_pets").read(tmp_path)
    Path(splits.test[0].path).write_bytes(b"\x89PNG truncated")
    with pytest.raises(DataError, match="could not decode") as info:
        load_image(splits.test[0].path)
    assert splits.test[0].path in str(info.value)
