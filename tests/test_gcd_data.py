"""GCD data: class remapping, labelled/unlabelled split, and the on-disk readers (miniature
datasets written in each dataset's real layout)."""
import json
import pickle

import numpy as np
import pytest
import scipy.io
from PIL import Image

from clipcore.config import ConfigError
from clipcore.data import DataError, Datum
from gcd.data import (
    ArrayImageSource,
    RawGCDData,
    get_gcd_dataset,
    imagenet_100_class_indices,
    list_gcd_datasets,
    load_gcd_splits,
    make_gcd_splits,
    ssb_class_split,
    subsample_instances,
)

SPEC_IN100 = [1, 14, 27, 31, 45, 55, 77, 103, 108, 141, 142, 175, 196, 202, 230, 231, 236, 239,
              247, 251, 252, 261, 262, 264, 267, 270, 272, 279, 295, 298, 299, 306, 310, 311, 316,
              319, 331, 366, 367, 386, 389, 408, 412, 413, 432, 452, 456, 481, 485, 494, 496,
              497, 501, 531, 553, 558, 568, 569, 576, 578, 582, 587, 601, 614, 635, 638, 643,
              644, 654, 672, 693, 698, 706, 710, 736, 738, 740, 760, 783, 784, 788, 790, 796,
              819, 823, 859, 862, 874, 883, 906, 909, 918, 923, 926, 957, 971, 982, 987, 993, 996]


def _image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (value, 0, 0)).save(path)


def _check_gcd_invariants(splits, prop=0.5):
    n_old = splits.n_old
    old_train = [d for d in splits.train if d.label < n_old]
    assert len(splits.train_labelled) == int(prop * len(old_train))
    assert all(d.label < n_old for d in splits.train_labelled)
    train_indices = sorted(d.index for d in splits.train)
    assert train_indices == list(range(len(splits.train)))  # dense and unique
    assert sorted(d.index for d in splits.test) == list(range(len(splits.test)))
    for d in splits.train + splits.test:
        assert d.classname == splits.classnames[d.label]


def _raw(n_per_class=10, classes=4, known=(3, 1), unknown=(0, 2)):
    train = [Datum(f"c{c}_{i}.png", c, f"class{c}") for i in range(n_per_class)
             for c in range(classes)]
    test = [Datum(f"t{c}.png", c, f"class{c}") for c in range(classes)]
    return RawGCDData(train, test, [f"class{c}" for c in range(classes)], list(known),
                      list(unknown))


def test_subsample_matches_legacy_global_numpy_draw_without_touching_it():
    state = np.random.get_state()
    try:
        np.random.seed(0)
        expected = np.random.choice(range(37), replace=False, size=(int(0.5 * 37),))
        np.random.seed(123)
        before = np.random.random_sample(3)
        np.random.seed(123)
        drawn = subsample_instances(37, 0.5, 0)
        after = np.random.random_sample(3)
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(drawn, expected)
    np.testing.assert_array_equal(before, after)  # global stream untouched


def test_remap_puts_known_classes_first_in_given_order():
    splits = make_gcd_splits(_raw())
    assert splits.classnames == ["class3", "class1", "class0", "class2"]
    assert splits.n_old == 2 and splits.num_classes == 4
    assert {d.path[:2]: d.label for d in splits.train} == {"c3": 0, "c1": 1, "c0": 2, "c2": 3}
    _check_gcd_invariants(splits)
    # unlabelled = old leftovers + every new-class image
    assert len(splits.train_unlabelled) == 10 + 20
    assert {d.path for d in splits.train_labelled}.isdisjoint(
        d.path for d in splits.train_unlabelled)


def test_split_is_seed_independent_by_default_and_follows_split_seed():
    labelled = lambda s: [d.path for d in s.train_labelled]  # noqa: E731
    default = make_gcd_splits(_raw())
    assert labelled(default) == labelled(make_gcd_splits(_raw(), split_seed=0))
    assert labelled(make_gcd_splits(_raw(), split_seed=1)) != labelled(default)
    # Which old images are labelled follows the reference's draw over the old-class positions.
    old_positions = [i for i, d in enumerate(_raw().train) if d.label in (3, 1)]
    expected = sorted(old_positions[j] for j in subsample_instances(len(old_positions), 0.5, 0))
    assert [d.index for d in default.train_labelled] == expected


def test_classes_outside_the_split_are_dropped_and_indices_stay_dense():
    splits = make_gcd_splits(_raw(known=(3,), unknown=(1,)))
    assert len(splits.train) == 20 and len(splits.test) == 2
    _check_gcd_invariants(splits)


@pytest.mark.parametrize("known,unknown", [((0, 1), (1, 2)), ((0, 9), (1,)), ((), (0, 1))])
def test_bad_class_lists_are_refused(known, unknown):
    with pytest.raises(DataError):
        make_gcd_splits(_raw(known=known, unknown=unknown))


def test_registry_lists_the_reference_datasets():
    assert {"cifar10", "cifar100", "imagenet_100", "cub", "scars", "aircraft",
            "image_folder"} <= set(list_gcd_datasets())
    with pytest.raises(ConfigError, match="cifar10"):
        get_gcd_dataset("cifar11")


def _write_split(path, known, hard, medium, easy):
    path.write_bytes(pickle.dumps({"known_classes": known, "unknown_classes": {
        "Easy": easy, "Medium": medium, "Hard": hard}}))
    return path


def test_cub_reader(tmp_path):
    base = tmp_path / "CUB_200_2011"
    folders = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
               "004.Groove_billed_Ani"]
    lines, labels, flags = [], [], []
    for image_id in range(1, 25):
        c = (image_id - 1) % 4
        rel = f"{folders[c]}/img_{image_id}.jpg"
        _image(base / "images" / rel)
        lines.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {c + 1}")
        flags.append(f"{image_id} {int(image_id <= 16)}")
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(flags) + "\n")
    (base / "classes.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(folders)))
    split = _write_split(tmp_path / "cub.pkl", [2, 0], [3], [], [1])
    splits = load_gcd_splits("cub", tmp_path, ssb_split_file=split)
    assert splits.classnames == ["Sooty Albatross", "Black footed Albatross",
                                 "Groove billed Ani", "Laysan Albatross"]
    assert len(splits.train) == 16 and len(splits.test) == 8
    assert len(splits.train_labelled) == 4  # int(0.5 * 8 old-class train images)
    first = next(d for d in splits.train if d.index == 0)
    assert first.path.endswith("img_1.jpg") and first.classname == "Black footed Albatross"
    _check_gcd_invariants(splits)
    (base / "images" / folders[0] / "img_1.jpg").unlink()
    with pytest.raises(DataError, match="img_1.jpg"):
        load_gcd_splits("cub", tmp_path, ssb_split_file=split)


def _cars_annotations(path, entries):
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("fname", "O")]
    array = np.array([(np.array([[0]]), np.array([[0]]), np.array([[5]]), np.array([[4]]),
                       np.array([[c]], dtype=np.uint8), np.array([f])) for f, c in entries],
                     dtype=dtype).reshape(1, -1)
    scipy.io.savemat(str(path), {"annotations": array})


def test_stanford_cars_reader(tmp_path):
    (tmp_path / "devkit").mkdir()
    names = np.empty((1, 3), dtype=object)
    names[0] = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    scipy.io.savemat(str(tmp_path / "devkit" / "cars_meta.mat"), {"class_names": names})
    train = [(f"{i:05d}.jpg", i % 3 + 1) for i in range(1, 13)]
    test = [(f"{i:05d}.jpg", i % 3 + 1) for i in range(1, 4)]
    for folder, entries in (("cars_train", train), ("cars_test", test)):
        for fname, _ in entries:
            _image(tmp_path / folder / fname)
    _cars_annotations(tmp_path / "devkit" / "cars_train_annos.mat", train)
    _cars_annotations(tmp_path / "devkit" / "cars_test_annos_withlabels.mat", test)
    split = _write_split(tmp_path / "scars.pkl", [1], [2], [0], [])
    splits = load_gcd_splits("scars", tmp_path, ssb_split_file=split)
    assert splits.classnames == ["Acura RL Sedan 2012", "Acura TL Sedan 2012",
                                 "AM General Hummer SUV 2000"]
    # file class 2 (0-based 1) is the known class -> label 0
    assert {d.path.rsplit("/", 1)[1]: d.label for d in splits.train}["00001.jpg"] == 0
    assert len(splits.train_labelled) == 2 and len(splits.test) == 3
    _check_gcd_invariants(splits)


def test_aircraft_reader(tmp_path):
    data = tmp_path / "data"
    trainval = [("1000001", "A320"), ("1000002", "737-800"), ("1000003", "DC-10"),
                ("1000004", "A320"), ("1000005", "737-800"), ("1000006", "DC-10")]
    test = [("2000001", "DC-10"), ("2000002", "A320")]
    for image_id, _ in trainval + test:
        _image(data / "images" / f"{image_id}.jpg")
    for name, rows in (("trainval", trainval), ("test", test)):
        (data / f"images_variant_{name}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows))
    split = _write_split(tmp_path / "aircraft.pkl", [0, 2], [], [1], [])
    splits = load_gcd_splits("aircraft", tmp_path, ssb_split_file=split)
    assert splits.classnames == ["737-800", "DC-10", "A320"]  # sorted: 737-800 < A320 < DC-10
    assert [d.label for d in splits.test] == [1, 2]
    _check_gcd_invariants(splits)


def _write_cifar(root, name, n_train, n_test, n_classes):
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n, offset):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                key: [(offset + i) % n_classes for i in range(n)]}

    if name == "cifar10":
        batches = {f"data_batch_{i}": batch(n_train, i) for i in range(1, 6)}
        batches["test_batch"] = batch(n_test, 0)
        meta = {"label_names": [f"name_{c}" for c in range(n_classes)]}
        meta_file = "batches.meta"
    else:
        batches = {"train": batch(n_train, 0), "test": batch(n_test, 0)}
        meta = {"fine_label_names": [f"fine_{c}" for c in range(n_classes)]}
        meta_file = "meta"
    for file_name, content in {**batches, meta_file: meta}.items():
        (folder / file_name).write_bytes(pickle.dumps(content, protocol=2))
    return batches


def test_cifar10_reader_serves_in_memory_images(tmp_path):
    batches = _write_cifar(tmp_path, "cifar10", 4, 6, 10)
    splits = load_gcd_splits("cifar10", tmp_path)
    assert len(splits.train) == 20 and len(splits.test) == 6
    assert splits.classnames[:5] == [f"name {c}" for c in range(5)] and splits.n_old == 5
    assert len(splits.train_labelled) == 5  # int(0.5 * 10 images of classes 0-4)
    _check_gcd_invariants(splits)
    datum = next(d for d in splits.train if d.index == 5)  # batch 2, row 1
    assert datum.path == "cifar10:train:5"
    pixels = np.asarray(splits.image_source(datum.path))
    expected = batches["data_batch_2"]["data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(pixels, expected)
    with pytest.raises(DataError):
        splits.image_source("cifar100:train:0")


def test_cifar100_reader_and_unsafe_pickles_are_refused(tmp_path):
    _write_cifar(tmp_path, "cifar100", 200, 10, 100)
    splits = load_gcd_splits("cifar100", tmp_path)
    assert splits.n_old == 80 and splits.num_classes == 100
    assert len(splits.train_labelled) == 80  # int(0.5 * 160)
    _check_gcd_invariants(splits)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps(ArrayImageSource("x", {})))
    with pytest.raises(DataError, match="refusing"):
        load_gcd_splits("cifar100", tmp_path)


def test_imagenet_100_draw_matches_the_reference_list():
    assert imagenet_100_class_indices() == SPEC_IN100


def test_imagenet_100_reader(tmp_path, shared_assets, monkeypatch):
    monkeypatch.setenv("CLIPCORE_ASSETS_DIR", str(shared_assets))
    wnids = [f"n{i:08d}" for i in range(1000)]
    for part in ("train", "val"):
        for wnid in wnids:
            (tmp_path / part / wnid).mkdir(parents=True)
    drawn = imagenet_100_class_indices()
    assert drawn[:2] == [1, 14] and 2 not in drawn
    # Only the drawn class folders hold images (an empty drawn folder would be an error); the
    # undrawn ones are never listed.
    for source_index in drawn:
        _image(tmp_path / "train" / wnids[source_index] / "a.JPEG")
        _image(tmp_path / "train" / wnids[source_index] / "b.JPEG")
        _image(tmp_path / "val" / wnids[source_index] / "v.JPEG")
    splits = load_gcd_splits("imagenet_100", tmp_path)
    names = (shared_assets / "spectralgcd" / "imagenet_classes.txt").read_text().splitlines()
    assert splits.num_classes == 100 and splits.n_old == 50
    assert splits.classnames[:2] == [names[1].strip(), names[14].strip()]
    assert sorted({d.label for d in splits.train}) == list(range(100))
    assert len(splits.train) == 200 and len(splits.test) == 100
    assert len(splits.train_labelled) == 50  # half of the 100 old-class train images
    _check_gcd_invariants(splits)
    (tmp_path / "val" / wnids[5]).rmdir()
    with pytest.raises(DataError, match="1000 class folders"):
        load_gcd_splits("imagenet_100", tmp_path)


def test_image_folder_reader_with_names_or_indices(tmp_path):
    for part, n in (("train", 4), ("test", 1)):
        for c, folder in enumerate(["blue_square", "green_circle", "red_circle"]):
            for i in range(n):
                _image(tmp_path / part / folder / f"{i}.png", 10 * c)
    (tmp_path / "splits.json").write_text(json.dumps(
        {"known_classes": ["red_circle", 0], "unknown_classes": ["green_circle"]}))
    splits = load_gcd_splits("image_folder", tmp_path)
    assert splits.classnames == ["red circle", "blue square", "green circle"]
    assert len(splits.train_labelled) == 4 and len(splits.test) == 3
    _check_gcd_invariants(splits)
    only_known = load_gcd_splits("image_folder", tmp_path, known_classes=[1])
    # explicit classes override splits.json; unknown = every other folder, sorted
    assert only_known.classnames == ["green circle", "blue square", "red circle"]
    (tmp_path / "splits.json").write_text(json.dumps({"known_classes": ["purple"]}))
    with pytest.raises(DataError, match="purple"):
        load_gcd_splits("image_folder", tmp_path)


@pytest.mark.parametrize("name,expected", [
    ("cub", "CUB_200_2011"), ("scars", "devkit"), ("aircraft", "images"),
    ("cifar10", "cifar-10-batches-py"), ("imagenet_100", "train"), ("image_folder", "train")])
def test_missing_dataset_folder_names_the_expected_layout(tmp_path, name, expected):
    with pytest.raises(DataError, match=expected) as info:
        load_gcd_splits(name, tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_ssb_split_order_from_the_published_pickles(shared_assets, monkeypatch):
    monkeypatch.setenv("CLIPCORE_ASSETS_DIR", str(shared_assets))
    known, unknown = ssb_class_split("cub")
    assert known[:4] == [150, 70, 34, 178] and len(known) == 100 and len(unknown) == 100
    assert sorted(known + unknown) == list(range(200))
    known, unknown = ssb_class_split("scars")
    assert known[:3] == [1, 11, 25] and len(known) == 98
    assert sorted(known + unknown) == list(range(196))
    known, unknown = ssb_class_split("aircraft")
    assert known == sorted(known) and len(known) == 50 and len(unknown) == 50
    from clipcore.assets import load_ssb_split
    raw = load_ssb_split(shared_assets / "ssb_splits" / "scars_osr_splits.pkl")["unknown_classes"]
    assert ssb_class_split("scars")[1] == raw["Hard"] + raw["Medium"] + raw["Easy"]
    assert [len(raw[k]) for k in ("Hard", "Medium", "Easy")] == [7, 15, 76]
