"""clipcore.data: records, registry, readers, few-shot, base/new, transforms, sampler, datamodule."""
from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
import torch
from coop_layouts import snapshot, write_image
from PIL import Image

from clipcore.data import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationDataModule,
    DataError,
    DatasetSplits,
    Datum,
    EpochSeededSampler,
    ImageDataset,
    build_eval_transform,
    build_gcd_transform,
    build_train_transform,
    load_image,
    read_coop_split_json,
    read_image_folder,
    registry,
    require_dir,
    sample_few_shot,
    subsample_classes,
)


def _items(counts: list[int], root="/nowhere") -> list[Datum]:
    """counts[c] items of class c, classes interleaved so insertion order is not label order."""
    items = []
    for i in range(max(counts)):
        for label, n in reversed(list(enumerate(counts))):
            if i < n:
                items.append(Datum(f"{root}/{label}/{i}.png", label, f"class{label}"))
    return items


def _splits(n_classes: int, per_class: int = 3) -> DatasetSplits:
    make = lambda split: [Datum(f"{split}/{c}/{i}", c, f"c{c}")  # noqa: E731
                          for c in range(n_classes) for i in range(per_class)]
    return DatasetSplits(make("train"), make("val"), make("test"),
                         [f"c{c}" for c in range(n_classes)])


# ---------------------------------------------------------------- records and registry
def test_datum_is_frozen_and_splits_helpers():
    datum = Datum("a.png", 1, "cat")
    assert datum.index == -1
    with pytest.raises(dataclasses.FrozenInstanceError):
        datum.label = 2
    splits = _splits(4, 2)
    assert splits.num_classes == 4
    assert splits.sizes() == {"train": 8, "val": 8, "test": 8}
    with pytest.raises(ValueError, match="unknown split"):
        splits.split("trian")


def test_registry_roundtrip_and_unknown_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})

    @registry.register_dataset("toy", template="a {} toy.", layout="<root>/toy/*")
    def read_toy(root):
        return _splits(2)

    info = registry.get_dataset("toy")
    assert (info.name, info.template, info.layout) == ("toy", "a {} toy.", "<root>/toy/*")
    assert info.read("ignored").num_classes == 2
    assert registry.list_datasets() == ["toy"]
    with pytest.raises(ValueError, match="registered datasets: toy"):
        registry.get_dataset("toys")
    with pytest.raises(ValueError, match="must contain"):
        registry.register_dataset("bad", template="no slot", layout="")


# ---------------------------------------------------------------- readers
def test_read_image_folder_sorted_classes(tmp_path):
    for folder, n in (("zebra", 2), ("ant", 1), ("moth", 3)):
        for i in range(n):
            write_image(tmp_path / folder / f"{i}.png")
    (tmp_path / "moth" / ".hidden.png").write_bytes(b"")
    (tmp_path / "README.txt").write_text("x")
    items, classnames = read_image_folder(tmp_path)
    assert classnames == ["ant", "moth", "zebra"]
    assert Counter(d.label for d in items) == {0: 1, 1: 3, 2: 2}
    assert all(classnames[d.label] == d.classname for d in items)
    renamed, names = read_image_folder(tmp_path, folder_names={"ant": "A", "moth": "M", "zebra": "Z"})
    assert names == ["A", "M", "Z"] and renamed[0].classname == "A"
    with pytest.raises(DataError, match="zebra"):
        read_image_folder(tmp_path, folder_names={"ant": "A", "moth": "M"})


def test_load_image_converts_to_rgb_and_names_corrupt_file(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (5, 4), 77).save(gray)
    image = load_image(gray)
    assert image.mode == "RGB" and image.size == (5, 4) and image.getpixel((0, 0)) == (77,) * 3
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataError, match="could not decode") as info:
        load_image(corrupt)
    assert str(corrupt) in str(info.value)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_require_dir_names_path_and_hint(tmp_path):
    missing = tmp_path / "oxford_pets" / "images"
    with pytest.raises(DataError) as info:
        require_dir(missing, "pets images", "see DATASETS.md")
    assert str(missing) in str(info.value) and "see DATASETS.md" in str(info.value)
    assert "does not exist" in str(info.value)


def test_read_coop_split_json(tmp_path):
    split = tmp_path / "split.json"
    split.write_text('{"train": [["a/1.jpg", 1, "a"]], "val": [], "test": [["b/2.jpg", "0", "b"]]}')
    parts = read_coop_split_json(split, tmp_path / "imgs")
    assert parts["train"] == [Datum(str(tmp_path / "imgs" / "a/1.jpg"), 1, "a")]
    assert parts["val"] == [] and parts["test"][0].label == 0
    split.write_text('{"train": [["a/1.jpg", 1]], "val": [], "test": []}')
    with pytest.raises(DataError, match=r"train\[0\]"):
        read_coop_split_json(split, tmp_path)


# ---------------------------------------------------------------- few-shot and base/new
def test_few_shot_counts_and_determinism(tmp_path):
    counts = [20, 3, 16, 7]
    items = _items(counts, root=str(tmp_path))
    before = snapshot(tmp_path)
    state = random.getstate()
    torch_state = torch.get_rng_state()

    shots = sample_few_shot(items, 5, seed=1)
    assert random.getstate() == state  # global RNGs untouched
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert snapshot(tmp_path) == before  # nothing cached to disk
    assert len(shots) == sum(min(5, n) for n in counts) == 18
    assert Counter(d.label for d in shots) == {0: 5, 1: 3, 2: 5, 3: 5}
    assert len(set(shots)) == len(shots) and set(shots) <= set(items)
    # grouped by label in order of first appearance (class 3 appears first in `items`)
    assert [d.label for d in shots][:5] == [3] * 5

    random.seed(12345)  # the global RNG must not matter
    assert sample_few_shot(items, 5, seed=1) == shots
    assert sample_few_shot(items, 5, seed=2) != shots
    assert sample_few_shot(items, 100, seed=0) == [d for lab in (3, 2, 1, 0)
                                                   for d in items if d.label == lab]


def test_few_shot_class_draw_independent_of_other_classes():
    items = _items([20, 20, 20])
    full = sample_few_shot(items, 4, seed=7)
    only_two = sample_few_shot([d for d in items if d.label == 2], 4, seed=7)
    assert [d for d in full if d.label == 2] == only_two


@pytest.mark.parametrize("n, n_base, n_new", [(37, 19, 18), (10, 5, 5), (1, 1, 0)])
def test_subsample_classes_base_new(n, n_base, n_new):
    splits = _splits(n, per_class=2)
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    assert (base.num_classes, new.num_classes) == (n_base, n_new)
    assert base.classnames == [f"c{c}" for c in range(n_base)]
    assert new.classnames == [f"c{c}" for c in range(n_base, n)]
    for part, offset in ((base, 0), (new, n_base)):
        for split in ("train", "val", "test"):
            items = part.split(split)
            assert len(items) == 2 * part.num_classes
            assert sorted({d.label for d in items}) == list(range(part.num_classes))
            assert all(d.classname == f"c{d.label + offset}" for d in items)
    assert subsample_classes(splits, "all") is splits
    with pytest.raises(ValueError):
        subsample_classes(splits, "novel")


def test_subsample_uses_labels_present_in_train():
    # train holds labels {1, 3, 4, 6}: base = {1, 3}, new = {4, 6}; label 5 only in test is dropped.
    classnames = [f"c{c}" for c in range(7)]
    train = [Datum(f"t{c}", c, f"c{c}") for c in (6, 1, 4, 3)]
    test = [Datum(f"e{c}", c, f"c{c}") for c in range(7)]
    new = subsample_classes(DatasetSplits(train, [], test, classnames), "new")
    assert new.classnames == ["c4", "c6"]
    assert [(d.path, d.label) for d in new.test] == [("e4", 0), ("e6", 1)]


# ---------------------------------------------------------------- transforms and dataset
def test_transforms_shapes_and_named_normalisation():
    image = Image.new("RGB", (40, 30), (255, 0, 128))
    for transform in (build_train_transform(16), build_eval_transform(16),
                      build_gcd_transform(True, 16), build_gcd_transform(False, 16)):
        assert transform(image).shape == (3, 16, 16)
    # constant image: eval output is exactly (v/255 - mean) / std per channel
    for name, (mean, std) in (("clip", (CLIP_MEAN, CLIP_STD)),
                              ("imagenet", (IMAGENET_MEAN, IMAGENET_STD))):
        out = build_eval_transform(16, name)(image)
        expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown normalization"):
        build_eval_transform(16, "cifar")


def test_image_dataset_index(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", value=i) for i in range(3)]
    items = [Datum(str(paths[0]), 1, "a"), Datum(str(paths[1]), 0, "b", index=42)]
    dataset = ImageDataset(items, build_eval_transform(8))
    first, second = dataset[0], dataset[1]
    assert (first["label"], first["index"]) == (1, 0)
    assert (second["label"], second["index"]) == (0, 42)
    assert first["image"].shape == (3, 8, 8)


# ---------------------------------------------------------------- sampler
def test_epoch_seeded_sampler_determinism_and_ranks():
    sampler = EpochSeededSampler(10, seed=3, num_replicas=1, rank=0)
    sampler.set_epoch(4)
    order = list(sampler)
    assert sorted(order) == list(range(10))
    again = EpochSeededSampler(10, seed=3, num_replicas=1, rank=0)
    again.set_epoch(4)
    torch.manual_seed(999)  # global RNG irrelevant
    assert list(again) == order
    again.set_epoch(5)
    assert list(again) != order
    other_seed = EpochSeededSampler(10, seed=4, num_replicas=1, rank=0)
    other_seed.set_epoch(4)
    assert list(other_seed) != order

    # 2 ranks: equal length, disjoint, together the whole epoch order
    for n in (10, 11):
        ranks = [EpochSeededSampler(n, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
        for s in ranks:
            s.set_epoch(1)
        parts = [list(s) for s in ranks]
        assert len(parts[0]) == len(parts[1]) == len(ranks[0]) == (n + 1) // 2
        assert set(parts[0]) | set(parts[1]) == set(range(n))
        if n == 10:
            assert not set(parts[0]) & set(parts[1])
        else:  # 11 items: one index is repeated (wrap-around padding), as DistributedSampler
            assert len(set(parts[0]) & set(parts[1])) == 1


def test_sampler_unpadded_sequential_shards():
    shards = [list(EpochSeededSampler(7, shuffle=False, num_replicas=3, rank=r, pad=False))
              for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    dropped = list(EpochSeededSampler(7, shuffle=False, num_replicas=3, rank=0, drop_last=True))
    assert dropped == [0, 3]


# ---------------------------------------------------------------- datamodule
def _image_splits(tmp_path, n_train=5, n_val=0, n_test=3) -> DatasetSplits:
    def make(split, n):
        return [Datum(str(write_image(tmp_path / split / f"{i}.png", value=i)), i % 2, f"c{i % 2}")
                for i in range(n)]
    return DatasetSplits(make("train", n_train), make("val", n_val), make("test", n_test),
                         ["c0", "c1"])


def test_datamodule_batches(tmp_path):
    dm = ClassificationDataModule(_image_splits(tmp_path), batch_size=2, eval_batch_size=2, image_size=16, seed=5)
    dm.setup("fit")
    assert dm.classnames == ["c0", "c1"] and dm.num_classes == 2

    train = list(dm.train_dataloader())
    assert len(train) == 2  # 5 items, batch 2, drop_last (5 >= 2) as in Dassl
    batch = train[0]
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["index"].dtype == torch.long
    assert torch.equal(batch["label"], batch["index"] % 2)

    val = list(dm.val_dataloader())  # val split empty -> test split, in order
    assert [b["index"].tolist() for b in val] == [[0, 1], [2]]
    assert [b["index"].tolist() for b in dm.test_dataloader()] == [[0, 1], [2]]


def test_datamodule_train_order_seeded_and_small_train_kept(tmp_path):
    splits = _image_splits(tmp_path, n_train=6)
    orders = []
    for seed in (1, 1, 2):
        dm = ClassificationDataModule(splits, batch_size=6, image_size=8, seed=seed)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(0)
        orders.append(torch.cat([b["index"] for b in loader]).tolist())
    assert orders[0] == orders[1] and orders[0] != orders[2]
    small = ClassificationDataModule(splits, batch_size=32, image_size=8)
    assert len(small.train_dataloader()) == 1  # 6 < 32: keep the partial batch


def test_trainer_sets_sampler_epoch(tmp_path):
    """Under `use_distributed_sampler=False` Lightning still calls `set_epoch`, so epoch e's
    order is exactly EpochSeededSampler(seed, e): what a resumed run replays."""
    import lightning as L

    splits = _image_splits(tmp_path, n_train=6)
    seen = []

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 8 * 8, 2)

        def training_step(self, batch, batch_idx):
            seen.append((self.current_epoch, batch["index"].tolist()))
            return self.linear(batch["image"].flatten(1)).logsumexp(1).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ClassificationDataModule(splits, batch_size=3, image_size=8, seed=11)
    trainer = L.Trainer(max_epochs=2, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(Recorder(), dm)
    for epoch in (0, 1):
        expected = EpochSeededSampler(6, seed=11, num_replicas=1, rank=0)
        expected.set_epoch(epoch)
        got = [i for e, idx in seen if e == epoch for i in idx]
        assert got == list(expected)
