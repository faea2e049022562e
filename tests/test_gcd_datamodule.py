"""GCD sampler, two-view transform and datamodule batches."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.data import IMAGENET_MEAN, IMAGENET_STD
from gcd.data import GCDDataModule, TwoViews, WeightedEpochSampler, gcd_sample_weights


def test_sample_weights_put_half_the_mass_on_labelled_items():
    weights = gcd_sample_weights(3, 12)
    assert weights.tolist() == [1.0] * 3 + [0.25] * 12
    assert weights[:3].sum() == pytest.approx(weights[3:].sum())


def test_weighted_sampler_is_a_pure_function_of_seed_and_epoch():
    sampler = WeightedEpochSampler(100, 400, seed=7)
    first = sampler.indices()
    assert len(first) == len(sampler) == 500
    assert WeightedEpochSampler(100, 400, seed=7).indices() == first
    sampler.set_epoch(1)
    second = sampler.indices()
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first  # replay after "resume"
    assert WeightedEpochSampler(100, 400, seed=8).indices() != first
    state = torch.get_rng_state()
    WeightedEpochSampler(100, 400, seed=7).indices()
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched


def test_weighted_sampler_draws_half_labelled_on_average():
    sampler = WeightedEpochSampler(50, 950, seed=0)
    fractions = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        fractions.append(np.mean(np.array(sampler.indices()) < 50))
    assert np.mean(fractions) == pytest.approx(0.5, abs=0.01)
    # uniform sampling would give 5% labelled
    assert min(fractions) > 0.4


def test_weighted_sampler_ranks_draw_their_own_share():
    ranks = [WeightedEpochSampler(30, 70, seed=1, num_replicas=3, rank=r) for r in range(3)]
    draws = [s.indices() for s in ranks]
    assert all(len(d) == 34 == len(s) for d, s in zip(draws, ranks))  # ceil(100 / 3)
    assert draws[0] != draws[1] != draws[2] != draws[0]
    with pytest.raises(ValueError):
        WeightedEpochSampler(30, 70, num_replicas=2, rank=2)


def test_two_views_are_independent_augmentations():
    torch.manual_seed(0)
    views = TwoViews(lambda image: torch.rand(3, 2, 2))(None)
    assert views.shape == (2, 3, 2, 2) and not torch.equal(views[0], views[1])


def _write_folder(root, n_train=6, n_test=2):
    rng = np.random.default_rng(0)
    folders = ["a_cls", "b_cls", "c_cls", "d_cls"]
    for part, n in (("train", n_train), ("test", n_test)):
        for folder in folders:
            for i in range(n):
                path = root / part / folder / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    (root / "splits.json").write_text(json.dumps({"known_classes": ["c_cls", "a_cls"]}))


@pytest.fixture
def datamodule(tmp_path):
    _write_folder(tmp_path)
    return GCDDataModule.from_name("image_folder", tmp_path, image_size=16, batch_size=4,
                                   eval_batch_size=5, num_workers=0, pin_memory=False, seed=3)


def test_train_batches(datamodule):
    assert datamodule.classnames == ["c cls", "a cls", "b cls", "d cls"]
    assert datamodule.num_classes == 4 and datamodule.n_old == 2
    loader = datamodule.train_dataloader()
    batches = list(loader)
    assert len(batches) == 24 // 4  # num_samples = |train|, drop_last
    batch = batches[0]
    assert batch["images"].shape == (4, 2, 3, 16, 16) and batch["images"].dtype == torch.float32
    assert batch["is_labelled"].dtype == torch.bool
    labelled = datamodule.splits.train_labelled
    assert len(labelled) == 6  # int(0.5 * 12 old-class images)
    for b in batches:  # labelled flag <=> item is from the labelled set
        lab_indices = {d.index for d in labelled}
        assert all((int(i) in lab_indices) == bool(f)
                   for i, f in zip(b["index"], b["is_labelled"]))
    # the loader's sampler is the deterministic weighted one, and Lightning won't replace it
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
    assert [b["index"].tolist() for b in datamodule.train_dataloader()] == \
        [b["index"].tolist() for b in batches]


def test_eval_loaders(datamodule):
    unlabelled, test = datamodule.val_dataloader()
    batch = next(iter(unlabelled))
    assert batch["image"].shape == (5, 3, 16, 16)
    items = datamodule.splits.train_unlabelled
    assert batch["index"].tolist() == [d.index for d in items[:5]]
    assert batch["is_old"].tolist() == [d.label < 2 for d in items[:5]]
    assert sum(len(b["label"]) for b in test) == 8
    # deterministic centre crop of the test transform
    again = next(iter(datamodule.val_dataloader()[0]))
    assert torch.equal(batch["image"], again["image"])
    everything = list(datamodule.train_eval_dataloader())
    indices = torch.cat([b["index"] for b in everything]).tolist()
    assert sorted(indices) == list(range(24))
    flags = torch.cat([b["is_labelled"] for b in everything])
    assert flags[:6].all() and not flags[6:].any()


def test_normalization_defaults_to_imagenet_and_can_be_clip(tmp_path):
    _write_folder(tmp_path, 1, 1)
    white = Image.new("RGB", (20, 20), (255, 255, 255))
    imagenet = GCDDataModule.from_name("image_folder", tmp_path, image_size=8)
    clip = GCDDataModule.from_name("image_folder", tmp_path, image_size=8, normalization="clip")
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(imagenet.test_transform(white)[:, 0, 0], expected)
    assert not torch.allclose(clip.test_transform(white), imagenet.test_transform(white))


def test_split_follows_seed_only_when_asked(tmp_path):
    _write_folder(tmp_path, n_train=10)
    labelled = lambda dm: [d.path for d in dm.splits.train_labelled]  # noqa: E731
    base = GCDDataModule.from_name("image_folder", tmp_path, seed=0)
    assert labelled(GCDDataModule.from_name("image_folder", tmp_path, seed=5)) == labelled(base)
    moved = GCDDataModule.from_name("image_folder", tmp_path, seed=5, split_follows_seed=True)
    assert labelled(moved) != labelled(base)
    assert len(labelled(moved)) == len(labelled(base)) == 10


def test_lightning_keeps_the_sampler_and_advances_its_epoch(datamodule):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.seen = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
            return (self.weight - batch["images"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    module = Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
    index_of = [d.index for d in datamodule.splits.train]
    for epoch in (0, 1):
        sampler = datamodule.train_sampler()
        sampler.set_epoch(epoch)
        assert module.seen[epoch] == [index_of[i] for i in sampler.indices()]
    assert module.seen[0] != module.seen[1]
