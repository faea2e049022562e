"""The training input pipelines (``data.pipeline``): ``cached`` gives the ``cpu`` batches bit for
bit, ``gpu`` draws the very crops and flips the ``cpu`` transforms draw and applies them on the
device (run here on the CPU device), the cache's memory is checked before it is built, and both
families train end to end under each pipeline."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gcd_layouts import write_dictionary, write_gcd_image_folder
from PIL import Image
from torchvision.transforms import functional as F
from training_helpers import CONFIG_DIR, gcd_overrides, overrides, prompt_method_files, tiny_dataset

from clipcore import runner
from clipcore.config import load_config
from clipcore.data import ClassificationDataModule, DatasetSplits, Datum
from clipcore.data import image_cache as image_cache_module
from clipcore.data.augment import dassl_augmentation, gcd_augmentation
from clipcore.data.image_cache import DecodedImages
from clipcore.data.records import DataError
from clipdistill.app import register_methods
from gcd.data import GCDDataModule

register_methods()


def _noise_image(path, width: int, height: int, seed: int):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


def _splits(tmp_path, n_train: int = 6) -> DatasetSplits:
    # Sizes differ per image (landscape and portrait): the cache's offsets and shapes are exercised.
    sizes = [(40, 30), (28, 44), (36, 36), (50, 26), (31, 39), (45, 33), (30, 30), (27, 41)]

    def make(split, n):
        return [Datum(_noise_image(tmp_path / split / f"{i}.png", *sizes[i % len(sizes)], seed=100 * len(split) + i),
                      i % 2, f"c{i % 2}") for i in range(n)]
    return DatasetSplits(make("train", n_train), [], make("test", 2), ["c0", "c1"])


def _classification(splits, pipeline: str, **extra) -> ClassificationDataModule:
    settings = {"batch_size": 3, "eval_batch_size": 2, "image_size": 16, "seed": 5, "min_crop_scale": 0.3,
                "num_workers": 0, "pipeline": pipeline, **extra}
    return ClassificationDataModule(splits, **settings)


def _train_batches(datamodule, epochs=(0, 1)) -> list[dict]:
    """Every training batch of these epochs, as the step receives it (after the transfer hook)."""
    loader = datamodule.train_dataloader()
    batches = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        batches += [datamodule.on_before_batch_transfer(batch, 0) for batch in loader]
    return batches


def _gcd(root, pipeline: str, **extra) -> GCDDataModule:
    return GCDDataModule.from_name("image_folder", root, image_size=16, batch_size=4, eval_batch_size=5,
                                   num_workers=0, pin_memory=False, seed=3, pipeline=pipeline, **extra)


@pytest.fixture
def gcd_folder(tmp_path):
    # 20 x 36 pixels: the head's Resize(18) output is not square, the crop has room on one axis.
    rng = np.random.default_rng(0)
    for part, n in (("train", 4), ("test", 2)):
        for folder in ("a_cls", "b_cls", "c_cls"):
            for i in range(n):
                path = tmp_path / part / folder / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 36, 3), dtype=np.uint8)).save(path)
    (tmp_path / "splits.json").write_text(json.dumps({"known_classes": ["a_cls", "b_cls"]}))
    return tmp_path


# -- the parameter draw ------------------------------------------------------------------------
def _recorded_cpu_parameters(monkeypatch, transform, image, seed: int, views: int):
    """The crop boxes and flips torchvision's own transform draws, recorded where it applies them
    (``F.resized_crop`` crops through ``F.crop`` too)."""
    boxes, flips = [], []
    crop, hflip = F.crop, F.hflip
    monkeypatch.setattr(F, "crop", lambda img, i, j, h, w: boxes.append((i, j, h, w)) or crop(img, i, j, h, w))
    monkeypatch.setattr(F, "hflip", lambda img: flips.append(len(boxes) - 1) or hflip(img))
    generator = torch.default_generator
    generator.manual_seed(seed)
    for _ in range(views):
        transform(image)
    monkeypatch.undo()
    return boxes, [i in flips for i in range(len(boxes))]


@pytest.mark.parametrize("family", ["dassl", "gcd"])
def test_sampled_crops_and_flips_are_the_ones_torchvision_draws_from_the_same_seed(monkeypatch, family):
    augmentation = dassl_augmentation(16, min_crop_scale=0.3) if family == "dassl" else gcd_augmentation(16)
    image = Image.new("RGB", (37, 29))
    cached = augmentation.head(image)
    for seed in range(40):
        boxes, flips = _recorded_cpu_parameters(monkeypatch, augmentation.tail(), cached, seed, augmentation.views)
        torch.default_generator.manual_seed(seed)
        sampled_boxes, sampled_flips = augmentation.sample(cached.height, cached.width)
        assert sampled_boxes.tolist() == [list(b) for b in boxes], seed
        assert sampled_flips.tolist() == flips, seed
    # The draws do vary (the comparison above is not between constants).
    torch.default_generator.manual_seed(0)
    draws = {tuple(augmentation.sample(cached.height, cached.width)[0].flatten().tolist()) for _ in range(20)}
    assert len(draws) > 10


def test_the_gcd_head_size_is_torchvisions_resize_output_size():
    augmentation = gcd_augmentation(16)
    for width, height in [(37, 29), (29, 37), (18, 18), (100, 19), (5, 300)]:
        resized = augmentation.head(Image.new("RGB", (width, height)))
        assert augmentation.head_size(width, height) == resized.size


# -- whole batches -----------------------------------------------------------------------------
def test_cached_classification_batches_equal_the_cpu_ones_bit_for_bit(tmp_path):
    splits = _splits(tmp_path)
    cpu, cached = _train_batches(_classification(splits, "cpu")), _train_batches(_classification(splits, "cached"))
    assert len(cpu) == len(cached) == 4
    for a, b in zip(cpu, cached):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_gpu_classification_views_are_the_cpu_views_resized_by_torch(tmp_path):
    splits = _splits(tmp_path)
    cpu = _train_batches(_classification(splits, "cpu"))
    gpu_module = _classification(splits, "gpu", num_workers=2)
    gpu = _train_batches(gpu_module)
    assert gpu_module.train_dataloader().num_workers == 0  # only crop boxes are drawn per sample
    for a, b in zip(cpu, gpu):
        assert set(b) == {"image", "label", "index"} and b["image"].dtype == torch.float32
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["label"], b["label"])
        # Same crop and flip; the crop's resize is torch's antialiased bicubic, not PIL's: within a
        # few grey levels (std ~0.27 in normalised units per grey level / 255).
        difference = (a["image"] - b["image"]).abs()
        assert difference.mean() < 0.03 and difference.max() < 0.5
        assert not torch.equal(a["image"], b["image"])  # the two resizes are really different code


def test_gcd_batches_are_the_cpu_ones_exactly_under_cached_and_gpu(gcd_folder):
    cpu = _train_batches(_gcd(gcd_folder, "cpu"))
    for pipeline in ("cached", "gpu"):
        other = _train_batches(_gcd(gcd_folder, pipeline))
        assert len(other) == len(cpu) == 6
        for a, b in zip(cpu, other):
            assert a.keys() == b.keys() and b["images"].shape == (4, 2, 3, 16, 16)
            for key in a:
                assert torch.equal(a[key], b[key]), (pipeline, key)


def test_the_cache_is_built_once_per_fit_and_evaluation_still_reads_the_files(tmp_path, monkeypatch):
    splits = _splits(tmp_path)
    built = []
    original = image_cache_module.DecodedImages.__init__
    monkeypatch.setattr(image_cache_module.DecodedImages, "__init__",
                        lambda self, items, *a, **k: built.append(len(items)) or original(self, items, *a, **k))
    datamodule = _classification(splits, "cached")
    datamodule.train_dataloader()
    datamodule.train_dataloader()
    assert built == [6]
    test = next(iter(datamodule.test_dataloader()))
    reference = next(iter(_classification(splits, "cpu").test_dataloader()))
    assert torch.equal(test["image"], reference["image"])


# -- memory and bad input ----------------------------------------------------------------------
def test_the_cache_refuses_to_outgrow_its_share_of_memory_naming_both_sizes(tmp_path, monkeypatch):
    splits = _splits(tmp_path)
    needed = sum(Image.open(d.path).width * Image.open(d.path).height * 3 for d in splits.train)
    monkeypatch.setattr(image_cache_module, "available_memory", lambda device: 3 * needed)
    with pytest.raises(DataError) as refused:
        _classification(splits, "cached", cache_memory_fraction=0.25).train_dataloader()
    message = str(refused.value)
    assert f"{needed / 2**30:.2f} GB" in message and f"{3 * needed / 2**30:.2f} GB free in RAM" in message
    assert "data.cache_memory_fraction=0.25" in message and "data.pipeline=cpu" in message
    # Just fits: built, and its size is the sum of the images' pixels.
    datamodule = _classification(splits, "cached", cache_memory_fraction=0.34)
    datamodule.train_dataloader()
    assert datamodule.train_images.cache.nbytes == needed


def test_bad_pipeline_settings_name_the_key(tmp_path):
    splits = _splits(tmp_path)
    with pytest.raises(DataError, match=r"data.pipeline='disk': expected one of cpu, cached, gpu"):
        _classification(splits, "disk")
    with pytest.raises(DataError, match=r"data.cache_memory_fraction=1.5: expected a value in \(0, 1\]"):
        _classification(splits, "cached", cache_memory_fraction=1.5).train_dataloader()
    with pytest.raises(DataError, match="a custom train transform needs data.pipeline=cpu"):
        _classification(splits, "cached", train_transform=lambda image: image)


def test_corrupt_training_images_are_named_or_skipped_when_the_cache_is_built(tmp_path):
    splits = _splits(tmp_path)
    broken = splits.train[2]
    open(broken.path, "wb").write(b"not an image")
    with pytest.raises(DataError, match=f"could not decode image {broken.path}"):
        _classification(splits, "cached").train_dataloader()
    for pipeline in ("cpu", "cached", "gpu"):
        datamodule = _classification(splits, pipeline, skip_corrupt=True, max_corrupt_fraction=0.5)
        datamodule.setup("fit")
        batches = _train_batches(datamodule, epochs=(0,))
        seen = torch.cat([b["index"] for b in batches]).tolist()
        assert 2 not in seen and len(seen) == 5, pipeline
        assert datamodule.corrupt.counts() == {"train": 1}, pipeline


def test_a_cache_in_ram_holds_each_image_once_in_one_buffer(tmp_path):
    splits = _splits(tmp_path)
    augmentation = gcd_augmentation(16)
    cache = DecodedImages(splits.train, augmentation.head, augmentation.head_size, device=torch.device("cpu"),
                          memory_fraction=0.5)
    for position, datum in enumerate(splits.train):
        expected = np.asarray(augmentation.head(Image.open(datum.path).convert("RGB")))
        pixels = cache.image(position)
        assert torch.equal(pixels, torch.from_numpy(expected.copy()))
        assert pixels.untyped_storage().data_ptr() == cache.buffer.untyped_storage().data_ptr()


# -- end to end: the CLI's runs under each pipeline -------------------------------------------
def _learned(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_training(a, b, atol=0.0):
    a, b = _learned(a), _learned(b)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=key)


@pytest.mark.slow
def test_kdpl_trains_identically_under_every_pipeline(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    files = prompt_method_files("coop", "kdpl")

    def train(pipeline):
        return runner.train(load_config(files, overrides(data, tmp_path / pipeline, data__pipeline=pipeline,
                                                         data__min_crop_scale=0.5)))
    cpu = train("cpu")
    _assert_same_training(cpu, train("cached"))
    # The tiny dataset's images are solid colours, which every resize keeps: the device path's
    # torch resize then gives the CPU pixels too (the noise-image test above measures the gap).
    _assert_same_training(cpu, train("gpu"), atol=1e-5)


@pytest.mark.slow
def test_spectralgcd_trains_identically_under_every_pipeline(tmp_path):
    data = write_gcd_image_folder(tmp_path / "data")
    concepts = write_dictionary(tmp_path / "concepts.csv")
    files = [CONFIG_DIR / "method" / "spectralgcd.yaml"]

    def train(pipeline):
        return runner.train(load_config(files, gcd_overrides(tmp_path / pipeline, data, concepts,
                                                             data__pipeline=pipeline)))
    cpu = train("cpu")
    for pipeline in ("cached", "gpu"):
        _assert_same_training(cpu, train(pipeline))


def test_the_cli_refuses_a_cache_that_does_not_fit_without_a_traceback(tmp_path, capsys):
    from clipdistill import train

    data = tiny_dataset(tmp_path / "data")
    args = [*sum([["-c", str(f)] for f in prompt_method_files("coop", "supervised")], []),
            *overrides(data, tmp_path / "runs", data__pipeline="cached", data__cache_memory_fraction=1e-12)]
    assert train.main(args) != 0
    err = capsys.readouterr().err
    assert "data.cache_memory_fraction=1e-12" in err and "Traceback" not in err
