"""Any open_clip model as a teacher (and zero-shot model): SigLIP, SigLIP 2, CoCa, EVA, HF text.

Every family is built with random weights from its own open_clip config (shrunk, see
``model_families``), so nothing is downloaded.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from image_folders import write_image_folder
from model_families import FAMILIES, family_config
from training_helpers import gcd_overrides, overrides, prompt_method_files, write_class_dictionary

from clipcore.backbone import BackboneLoadError, load_backbone, load_encoder

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("families")
    return {family: family_config(family, folder) for family in FAMILIES}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("photos") / "photos", counts={"train": 4, "test": 2})


def teacher(family: str, configs, **extra) -> dict:
    preprocess = "model" if family.startswith("siglip") else "data"
    return {"teacher__name": f"random-{family}", "teacher__config": str(configs[family]),
            "teacher__pretrained": "null", "teacher__preprocess": preprocess, **extra}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_an_encoder_but_not_a_prompt_student(family, configs):
    encoder = load_encoder(family, config=str(configs[family]))
    images = torch.randn(2, 3, encoder.image_size, encoder.image_size)
    with torch.no_grad():
        image, text = encoder.encode_image(images), encoder.encode_text(encoder.tokenize(["a cat", "a dog"]))
    assert image.shape == text.shape == (2, encoder.embed_dim)
    assert (encoder.logit_bias is not None) == family.startswith("siglip")
    if family.startswith("siglip"):
        assert encoder.image_mean == (0.5, 0.5, 0.5)  # its own preprocessing, from the config
    with pytest.raises(BackboneLoadError, match=f"'{family}' cannot be a prompt-learning student: it has "
                                                f"(a custom|a CoCa|a Hugging Face) text tower"):
        load_backbone(family, config=str(configs[family]))


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_shot_scores_with_the_models_own_logits(family, configs, folder, tmp_path):
    """Zero-shot of each family through the tool equals the same numbers computed by hand."""
    from clipdistill import evaluate

    args = overrides(folder, tmp_path / "runs", method="zeroshot", zeroshot__model="teacher",
                     data__name="image_folder", data__root=str(folder), **teacher(family, configs))
    assert evaluate.main(args + ["--out", str(tmp_path / "zs")]) == 0
    metrics = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    with open(tmp_path / "zs" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))

    from omegaconf import OmegaConf

    from clipcore.build import encoder_from_config
    from clipcore.data.from_config import classification_datamodule
    from clipcore.zeroshot import build_zeroshot
    from clipdistill.app import load_run_config

    cfg = load_run_config([], args)
    encoder = encoder_from_config(cfg.teacher).eval()
    own = family.startswith("siglip")
    dm = classification_datamodule(cfg, encoder.image_size, (encoder.image_mean, encoder.image_std) if own else None)
    dm.setup("test")
    classnames = dm.classnames
    with torch.no_grad():
        text = torch.nn.functional.normalize(encoder.encode_text(encoder.tokenize(
            [f"a photo of a {c}." for c in classnames])).float(), dim=-1)
        logits = torch.cat([encoder.logit_scale.exp() * torch.nn.functional.normalize(
            encoder.encode_image(b["image"]).float(), dim=-1) @ text.t() for b in dm.test_dataloader()])
    if own:
        logits = logits + encoder.logit_bias
    labels = torch.tensor([d.label for d in dm.splits.test])
    predicted = logits.argmax(-1)
    assert [r["prediction"] for r in rows] == [classnames[i] for i in predicted]
    assert metrics["test/acc"] == pytest.approx((predicted == labels).float().mean().item())
    probability = logits.sigmoid() if own else logits.softmax(-1)  # the model's own scoring
    scores = probability.gather(1, predicted[:, None])[:, 0]
    assert [float(r["score"]) for r in rows] == pytest.approx(scores.tolist(), abs=1e-5)
    assert isinstance(build_zeroshot(OmegaConf.create(cfg))[0].encoder, type(encoder))


@pytest.mark.parametrize("family", FAMILIES)
def test_kdpl_distills_from_any_teacher(family, configs, folder, tmp_path):
    from clipdistill import train

    files = [str(f) for f in prompt_method_files("coop", "kdpl")]
    args = overrides(folder, tmp_path / "runs", experiment="kdpl", data__name="image_folder",
                     data__root=str(folder), trainer__max_epochs=1, **teacher(family, configs),
                     objective__text_cache_dir=str(tmp_path / "cache"))
    assert train.main(sum([["-c", f] for f in files], []) + args) == 0
    run = next((tmp_path / "runs" / "kdpl").iterdir())
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    logged = "".join(p.read_text() for p in (run / "metrics").rglob("*.csv"))
    assert "train/kl_forward" in logged


def test_a_siglip_teacher_sees_the_student_batch_in_its_own_input(configs):
    """teacher.preprocess=model: the student's batch is re-expressed in SigLIP's mean/std."""
    from clipcore.data.transforms import CLIP_MEAN, CLIP_STD
    from clipcore.image_adapter import ImageAdapter

    raw = torch.rand(2, 3, 32, 32)
    clip = (raw - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    adapter = ImageAdapter(32, CLIP_MEAN, CLIP_STD, 32, (0.5,) * 3, (0.5,) * 3)
    torch.testing.assert_close(adapter(clip), (raw - 0.5) / 0.5, atol=1e-5, rtol=0)
    same = ImageAdapter(32, CLIP_MEAN, CLIP_STD, 32, CLIP_MEAN, CLIP_STD)
    assert same.is_identity and same(clip) is clip  # the reference setting is untouched
    assert ImageAdapter(32, CLIP_MEAN, CLIP_STD, 64, CLIP_MEAN, CLIP_STD)(clip).shape == (2, 3, 64, 64)


def test_kdpl_ca_and_spectral_gcd_with_a_siglip_teacher(configs, folder, tmp_path):
    """The class-agnostic objective and the GCD teacher (filter + teacher cache) take SigLIP."""
    from gcd_layouts import write_dictionary, write_gcd_image_folder

    import gcd.filter
    from clipdistill import train

    files = [str(f) for f in prompt_method_files("coop", "kdpl_ca")]
    dictionary = write_class_dictionary(tmp_path / "dictionary.csv")
    args = overrides(folder, tmp_path / "runs", experiment="ca", data__name="image_folder", data__root=str(folder),
                     trainer__max_epochs=1, objective__k_max=5, objective__dictionary=str(dictionary),
                     objective__text_cache_dir=str(tmp_path / "cache"), **teacher("siglip", configs))
    assert train.main(sum([["-c", f] for f in files], []) + args) == 0

    gcd_data = write_gcd_image_folder(tmp_path / "gcd", n_train=2, n_test=1)
    concepts = tmp_path / "concepts.csv"
    siglip = [f"{k.replace('__', '.')}={v}" for k, v in teacher("siglip", configs).items()]
    gcd_args = gcd_overrides(tmp_path, gcd_data, write_dictionary(tmp_path / "concepts-dict.csv"),
                             gcd__concepts_csv=concepts, trainer__max_epochs=1) + siglip
    method = str(Path(__file__).resolve().parent.parent / "configs" / "method" / "spectralgcd.yaml")
    assert gcd.filter.main(["-c", method, *gcd_args]) == 0
    assert train.main(["-c", method, *gcd_args]) == 0
    summary = json.loads((concepts.parent / "filter.json").read_text())
    assert summary["teacher"] == "random-siglip" and summary["n_keep"] >= 1
