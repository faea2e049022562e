"""ShapeWorld rendering, on-disk layouts, and the cached pretrained synthetic CLIPs."""
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from clipcore.synthetic import (
    ShapeWorld,
    demo_dictionary,
    layouts,
    models,
    pretrain,
    write_coop_layout,
    write_gcd_layout,
)
from clipcore.synthetic.world import COLOURS, SHAPES


@pytest.fixture(scope="session")
def test_bundles(synthetic_cache):
    return {role: models.resolve_synthetic(f"synthetic-{role}-test")
            for role in ("teacher", "student")}


def test_world_has_many_uniquely_named_classes():
    world = ShapeWorld(seed=0)
    assert world.num_classes == len(COLOURS) * len(SHAPES) >= 40
    assert len(set(world.classnames)) == world.num_classes
    assert world.classnames[0] == "red circle"


def test_rendering_is_deterministic_and_varies_with_instance():
    a, b = ShapeWorld(seed=3), ShapeWorld(seed=3)
    img = np.asarray(a.render(5, 11))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, np.asarray(b.render(5, 11)))
    assert not np.array_equal(img, np.asarray(a.render(5, 12)))
    assert not np.array_equal(img, np.asarray(ShapeWorld(seed=4).render(5, 11)))
    assert a.caption(5, 11) == b.caption(5, 11)


def test_shape_colour_is_visible():
    # A large solid shape on a plain background: the centre pixel carries the class colour.
    world = ShapeWorld(seed=0)
    red = world.classnames.index("red square")
    for seed in range(200):
        inst = world.instance(red, seed)
        if (inst.size, inst.texture, inst.background) == ("large", "solid", "plain"):
            x, y = (int(round(v)) for v in inst.centre)
            r, g, b = np.asarray(world.render(red, seed))[y, x].astype(int)
            assert r > 180 and g < 70 and b < 70
            return
    pytest.fail("no large solid plain red square in 200 instances")


def test_captions_describe_the_instance():
    world = ShapeWorld(seed=0)
    inst = world.instance(7, 42)
    caps = world.captions(7, 42)
    assert caps[0] == f"a photo of a {world.classnames[7]}."
    joined = " ".join(caps)
    for word in (inst.colour, inst.shape, inst.size, inst.texture, inst.background):
        assert word in joined
    assert world.caption(7, 42) in caps


def test_demo_dictionary_contains_classes_and_distractors():
    words = demo_dictionary()
    assert len(words) == len(set(words)) >= 200 + 48
    assert words[:48] == ShapeWorld().classnames and "giraffe" in words


def test_coop_layout_is_readable_and_idempotent(tmp_path):
    world = ShapeWorld(seed=1)
    root = write_coop_layout(tmp_path, world, n_train_per_class=2, n_val=1, n_test=1)
    split = json.loads((root / layouts.COOP_SPLIT_FILE).read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 96, "val": 48, "test": 48}
    for rel, label, name in split["train"] + split["test"]:
        assert (root / "images" / rel).is_file()
        assert world.classnames[label] == name and rel.startswith(name.replace(" ", "_") + "/")
    rel, label, _ = split["test"][0]
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(root / "images" / rel)),
                                  np.asarray(world.render(label, world.instance_seeds("test", 1)[0])))
    mtime = (root / layouts.MARKER).stat().st_mtime_ns
    assert write_coop_layout(tmp_path, world, 2, 1, 1) == root
    assert (root / layouts.MARKER).stat().st_mtime_ns == mtime  # untouched: no rewrite
    write_coop_layout(tmp_path, world, 3, 1, 1)  # new parameters replace the stale tree
    assert len(json.loads((root / layouts.COOP_SPLIT_FILE).read_text())["train"]) == 144


def test_layout_refuses_foreign_directory(tmp_path):
    (tmp_path / "shapeworld").mkdir()
    (tmp_path / "shapeworld" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not written by clipcore.synthetic"):
        write_coop_layout(tmp_path, ShapeWorld(), 1, 1, 1)
    assert (tmp_path / "shapeworld" / "mine.txt").read_text() == "user data"


def test_gcd_layout_matches_imagefolder_order(tmp_path):
    from torchvision.datasets import ImageFolder

    world = ShapeWorld(seed=2)
    root = write_gcd_layout(tmp_path, world, n_train_per_class=2, n_test_per_class=1)
    splits = json.loads((root / layouts.GCD_SPLIT_FILE).read_text())
    known, unknown = splits["known_classes"], splits["unknown_classes"]
    assert len(known) == len(unknown) == 24 and not set(known) & set(unknown)
    train = ImageFolder(str(root / "train"))
    assert train.classes == splits["classes"] and len(train) == 96
    assert len(ImageFolder(str(root / "test"))) == 48
    path, label = train.samples[0]
    assert splits["classnames"][label].replace(" ", "_") == Path(path).parent.name


def test_test_profile_bundles_load_and_teacher_beats_student(test_bundles):
    world = ShapeWorld(seed=models.SYNTHETIC_MODELS["synthetic-teacher-test"].world_seed)
    acc = {}
    for role, path in test_bundles.items():
        model = open_clip.create_model("local-dir:" + str(path))
        preprocess = open_clip.get_model_preprocess_cfg(model)
        assert preprocess["mean"] == pytest.approx(pretrain.IMAGE_MEAN)
        assert preprocess["size"] in (32, (32, 32))
        acc[role] = pretrain.zero_shot_accuracy(model, world, n_per_class=10)
        recorded = json.loads((path / pretrain.METRICS_FILE).read_text())
        assert recorded["zero_shot_top1_test"] == pytest.approx(acc[role])  # same eval, reloaded
    chance = 1 / world.num_classes
    assert acc["teacher"] > 5 * chance
    assert acc["student"] > chance
    assert acc["teacher"] > acc["student"] + 0.05


def test_cache_is_reused_and_keyed_by_settings(test_bundles, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("cached bundle was rebuilt")

    monkeypatch.setattr(models, "build_bundle", fail)
    assert models.resolve_synthetic("synthetic-teacher-test") == test_bundles["teacher"]
    settings = models.SYNTHETIC_MODELS["synthetic-teacher-test"]
    changed = dataclasses.replace(settings, steps=settings.steps + 1)
    assert changed.cache_key() != settings.cache_key()
    with pytest.raises(ValueError, match="unknown synthetic model"):
        models.resolve_synthetic("synthetic-nope")


def test_compact_embedding_training_matches_encode_text():
    # The pretraining text path (truncated, from embeddings) equals open_clip's encode_text.
    torch.manual_seed(0)
    model = open_clip.CLIP(**models.SYNTHETIC_MODELS["synthetic-student-test"].model_cfg).eval()
    tokens = open_clip.tokenize(["a red star", "a photo of a small blue ring on a noisy background"])
    length = int((tokens != 0).sum(-1).max())
    ours = pretrain._encode_text(model, model.token_embedding(tokens[:, :length]), tokens[:, :length])
    torch.testing.assert_close(ours, model.encode_text(tokens, normalize=True), atol=1e-5, rtol=1e-5)


def test_colour_cast_scales_channels_clips_and_keys_the_cache():
    images = np.array([[[[200, 100, 50], [255, 255, 255]]]], dtype=np.uint8)
    cast = pretrain.apply_colour_cast(images, (1.5, 0.5, 1.0))
    assert cast.dtype == np.uint8
    assert cast[0, 0, 0].tolist() == [255, 50, 50]  # 300 clipped to 255
    assert cast[0, 0, 1].tolist() == [255, 128, 255]  # 127.5 rounds half to even: 128
    with pytest.raises(ValueError, match="three non-negative RGB gains"):
        pretrain.apply_colour_cast(images, (1.0, 0.5))
    settings = models.SYNTHETIC_MODELS["synthetic-student-test"]
    assert settings.colour_cast is not None
    neutral = dataclasses.replace(settings, colour_cast=None)
    assert neutral.cache_key() != settings.cache_key()


def test_cast_on_some_classes_leaves_the_others_neutral_and_keys_the_cache():
    images = np.full((3, 1, 1, 3), 200, dtype=np.uint8)
    labels = np.array([0, 5, 30])
    cast = pretrain.cast_classes(images, labels, (1.0, 0.5, 0.0), classes=(0, 5))
    assert cast[:, 0, 0].tolist() == [[200, 100, 0], [200, 100, 0], [200, 200, 200]]
    assert images[0, 0, 0].tolist() == [200, 200, 200]  # the input is not modified
    every = pretrain.cast_classes(images, labels, (1.0, 0.5, 0.0), classes=None)
    assert every[:, 0, 0].tolist() == [[200, 100, 0]] * 3
    # The full student casts the base half of the base-to-novel split only.
    student = models.SYNTHETIC_MODELS["synthetic-student"]
    world = ShapeWorld(student.world_seed, student.image_size)
    assert student.colour_cast_classes == tuple(range(math.ceil(world.num_classes / 2)))
    assert dataclasses.replace(student, colour_cast_classes=None).cache_key() != student.cache_key()
    # Unset, the field leaves the key as before it existed, so the teacher's cached bundle stays valid.
    teacher = models.SYNTHETIC_MODELS["synthetic-teacher"]
    fields = dataclasses.asdict(teacher)
    del fields["colour_cast_classes"]
    blob = json.dumps({"settings": fields, "world": world.params()}, sort_keys=True)
    assert teacher.cache_key() == hashlib.sha256(blob.encode()).hexdigest()[:12]


def test_confidence_matched_scale_makes_mean_confidence_equal_accuracy():
    torch.manual_seed(0)
    labels = torch.arange(200) % 10
    # Cosines where the true class is favoured just enough that about half the argmaxes are right.
    cosines = torch.randn(200, 10) * 0.05
    cosines[torch.arange(200), labels] += 0.04
    accuracy = float((cosines.argmax(-1) == labels).double().mean())
    assert 0.2 < accuracy < 0.9
    scale = pretrain.confidence_matched_scale(cosines, labels)
    confidence = (scale * cosines.double()).softmax(-1).max(-1).values.mean()
    assert float(confidence) == pytest.approx(accuracy, abs=1e-6)
    over = (2 * scale * cosines.double()).softmax(-1).max(-1).values.mean()
    assert float(over) > accuracy + 0.05  # a larger scale is over-confident
    # A match outside the bounds returns the bound: every argmax right, confidence never reaches 1.
    perfect = torch.eye(10).repeat(20, 1)
    assert pretrain.confidence_matched_scale(perfect * 0.01, labels, high=50.0) == 50.0


def test_calibration_sets_the_frozen_logit_scale_and_keys_the_cache():
    torch.manual_seed(0)
    settings = models.SYNTHETIC_MODELS["synthetic-student-test"]
    model = open_clip.CLIP(**settings.model_cfg)
    world = ShapeWorld(settings.world_seed, settings.image_size)
    measured = pretrain.calibrate_logit_scale(model, world, n_per_class=2)
    assert measured["calibration_images"] == 2 * world.num_classes
    assert measured["learned_logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init
    assert float(model.logit_scale.detach().exp()) == pytest.approx(measured["calibrated_logit_scale"], rel=1e-5)
    assert dataclasses.replace(settings, calibration_per_class=10).cache_key() != settings.cache_key()
    # The calibration images are their own instance range, apart from every split written to disk.
    calibration = world.instance_seeds("calibration", 10)
    for split in ("pretrain", "train", "val", "test"):
        assert not set(calibration) & set(world.instance_seeds(split, 100_000))


def test_test_student_features_separate_colours_its_zero_shot_prompts_misname(test_bundles):
    """The room prompt learning fills: a colour probe on the student's image features beats its
    zero-shot prompts' colours by a wide margin (pretrained under a cast, tested on neutral)."""
    world = ShapeWorld(seed=models.SYNTHETIC_MODELS["synthetic-student-test"].world_seed)
    model = open_clip.create_model("local-dir:" + str(test_bundles["student"])).eval()
    features = {}
    with torch.no_grad():
        for split, n in (("train", 8), ("test", 10)):
            images, labels = world.render_array(split, n)
            features[split] = (model.encode_image(pretrain._to_input(torch.from_numpy(images)), normalize=True),
                               torch.from_numpy(labels) // len(SHAPES))
        text = model.encode_text(open_clip.tokenize([f"a photo of a {c}." for c in world.classnames]),
                                 normalize=True)
    x_test, colour_test = features["test"]
    zero_shot_colour = float(((x_test @ text.t()).argmax(-1) // len(SHAPES) == colour_test).float().mean())
    x_train, colour_train = features["train"]
    probe = torch.nn.Linear(x_train.shape[1], len(COLOURS))
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(probe(10 * x_train), colour_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        probe_colour = float((probe(10 * x_test).argmax(-1) == colour_test).float().mean())
    assert probe_colour > 0.85, probe_colour
    assert probe_colour > zero_shot_colour + 0.25, (probe_colour, zero_shot_colour)
