"""Every shipped YAML file validates, and the method files carry the reference hyper-parameters
of kdpl spec §1.6 (SGD 0.9 / 5e-4, one warm-up epoch at 1e-5, cosine)."""
from __future__ import annotations

import math

import open_clip
import pytest

from clipcore.config import load_config
from clipcore.data import get_dataset
from clipcore.schedule import epoch_lr
from clipdistill.app import CONFIG_DIR, register_methods
from kdpl.datasets import COOP_DATASETS, IMAGENET_VARIANTS

register_methods()

SHIPPED = sorted(CONFIG_DIR.rglob("*.yaml"))
# method file: (batch, lr, epochs, prompt settings) of spec §1.6.
REFERENCE = {
    "coop": (32, 0.002, 50, {"n_ctx": None, "ctx_init": "a photo of a"}),
    "cocoop": (1, 0.002, 10, {"n_ctx": None, "ctx_init": "a photo of a", "meta_net_ratio": 16}),
    "vpt": (4, 0.0025, 5, {"depth": 12, "vision_ctx": 8}),
    "maple": (4, 0.0035, 5, {"n_ctx": 2, "depth": 9}),
    "promptsrc": (4, 0.0025, 20, {"n_ctx": 4, "depth": 9, "vision_ctx": 4, "gpa_mean": 15.0, "gpa_std": 1.0}),
    "promptsrc_xd": (4, 0.0025, 20, {"n_ctx": 4, "depth": 3, "vision_ctx": 4, "gpa_mean": 6.0, "gpa_std": 10.0}),
    # KgCoOp's vit_b16_ep100_ctxv1.yaml and base2new_train.sh (W = 8.0, the paper's lambda).
    "kgcoop": (128, 0.002, 100, {"n_ctx": None, "ctx_init": "a photo of a", "weight": 8.0, "template": None}),
}


def test_config_tree_is_complete():
    names = {str(p.relative_to(CONFIG_DIR)) for p in SHIPPED}
    for group, expected in {
        "method": REFERENCE,
        "objective": ("supervised", "kdpl", "kdpl_ca", "upl", "promptkd"),
        "eval": ("tpt",),
        "backbone": ("vit_b32", "rn50"),
        "data": COOP_DATASETS + IMAGENET_VARIANTS,
    }.items():
        assert {f"{group}/{name}.yaml" for name in expected} <= names


# Fragments whose keys belong to some methods only are checked composed with one of them.
CONTEXT = {"objective": [CONFIG_DIR / "method" / "coop.yaml"], "eval": [CONFIG_DIR / "method" / "coop.yaml"]}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_yaml_validates(path):
    cfg = load_config([*CONTEXT.get(path.parent.name, []), path])
    if path.parent.name == "data" and path.stem in COOP_DATASETS + IMAGENET_VARIANTS:
        assert get_dataset(cfg.data.name).name == path.stem and cfg.data.num_shots == 16


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_method_files_match_the_reference(name):
    batch, lr, epochs, prompt = REFERENCE[name]
    cfg = load_config([CONFIG_DIR / "method" / f"{name}.yaml"])
    assert cfg.method == name.removesuffix("_xd")
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.trainer.max_epochs) == (batch, lr, epochs)
    o = cfg.optim
    assert (o.momentum, o.weight_decay, o.warmup_epochs, o.warmup_lr, o.eta_min_ratio) == (0.9, 5e-4, 1, 1e-5, 0.0)
    assert {k: cfg.prompt[k] for k in prompt} == prompt


def test_maple_schedule_matches_spec_invariant_13():
    cfg = load_config([CONFIG_DIR / "method" / "maple.yaml"])
    o, epochs = cfg.optim, cfg.trainer.max_epochs
    rates = [epoch_lr(e, o.lr, epochs, o.warmup_epochs, o.warmup_lr) for e in range(epochs)]
    assert rates == pytest.approx([1e-5, 3.5e-3, 3.166e-3, 2.291e-3, 1.209e-3], rel=1e-3)
    assert rates[-1] == pytest.approx(0.5 * o.lr * (1 + math.cos(math.pi * 3 / 5)))


def test_objectives_and_backbones_name_existing_open_clip_weights():
    coop = CONFIG_DIR / "method" / "coop.yaml"
    kdpl, ca = (load_config([coop, CONFIG_DIR / "objective" / f"{n}.yaml"]) for n in ("kdpl", "kdpl_ca"))
    assert load_config([coop, CONFIG_DIR / "objective" / "supervised.yaml"]).objective.name == "supervised"
    assert (kdpl.objective.name, ca.objective.name, ca.objective.k_max) == ("kdpl", "kdpl_ca", 1000)
    assert ca.objective.dictionary == "spectralgcd/openimages_dictionary.csv"
    pairs = {(c.teacher.name, c.teacher.pretrained) for c in (kdpl, ca)}
    pairs |= {(c.student.name, c.student.pretrained)
              for c in (load_config([CONFIG_DIR / "backbone" / f"{n}.yaml"]) for n in ("vit_b32", "rn50"))}
    assert pairs == {("ViT-H-14-quickgelu", "dfn5b"), ("ViT-B-32-quickgelu", "openai"), ("RN50-quickgelu", "openai")}
    for name, tag in pairs:
        assert tag in open_clip.list_pretrained_tags_by_model(name)
