"""CLIP-LoRA against the rules of the reference (MaxZanella/CLIP-LoRA, loralib/layers.py)."""
from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipcore.backbone import load_backbone
from kdpl.prompts import build_prompt_learner

CLASSNAMES = ["cat", "golden_retriever", "sea lion"]


@pytest.fixture(scope="module")
def tiny(tiny_clip_config):
    return load_backbone("tiny", config=tiny_clip_config).freeze().eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def lora(backbone, seed=0, **settings):
    torch.manual_seed(seed)
    return build_prompt_learner("clip_lora", backbone, CLASSNAMES, settings)


def perturbed(backbone, **settings):
    learner = lora(backbone, **settings)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return learner


def zero_shot_logits(model, images, template="a photo of a {}."):
    with torch.no_grad():
        text = F.normalize(model.encode_text(open_clip.tokenize([template.format(c.replace("_", " "))
                                                                 for c in CLASSNAMES])), dim=-1)
        image = F.normalize(model.encode_image(images), dim=-1)
    return model.logit_scale.exp() * image @ text.t()


def test_untrained_adapters_are_the_frozen_model(tiny, images):
    learner = lora(tiny).eval()
    with torch.no_grad():
        logits = learner(images).logits
    torch.testing.assert_close(logits, zero_shot_logits(tiny.model, images), atol=1e-5, rtol=0)


def test_factors_follow_the_reference_shapes_scaling_and_init(tiny):
    learner = lora(tiny, rank=3, alpha=2.0, params="qv")
    names = sorted(learner.factors)
    width = {"text": tiny.text_width, "vision": tiny.vision_width}
    assert len(names) == 2 * 2 * 2 * 2  # towers x blocks x (q, v) x (A, B)
    for name in names:
        tower, _, which, part = name.split("_")
        assert which in "qv"
        shape = (3, width[tower]) if part == "A" else (width[tower], 3)
        assert tuple(learner.factors[name].shape) == shape
        if part == "B":
            assert learner.factors[name].abs().sum() == 0  # zero: the branch starts at 0
        else:  # kaiming_uniform(a=sqrt 5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert learner.factors[name].abs().max() <= 1 / math.sqrt(width[tower]) + 1e-6
    assert learner.scaling == pytest.approx(2.0 / math.sqrt(3))  # alpha / sqrt(r), not alpha / r
    assert {n for n, p in learner.named_parameters()} == {f"factors.{n}" for n in names}


def test_the_adapted_projection_is_w_x_plus_scaled_b_a_x(tiny, images):
    """Merging s * B A into a copy of the weights gives the learner's logits (eval: no dropout),
    and the branch of one projection is x (B A)^T s, by hand."""
    learner = perturbed(tiny, params="qkvo").eval()
    merged = tiny.merged_copy(learner.weight_changes()).eval()
    with torch.no_grad():
        torch.testing.assert_close(learner(images).logits, zero_shot_logits(merged, images), atol=1e-4, rtol=1e-4)
        a, b = learner.factor("vision", 1, "v")
        x = torch.randn(2, 5, tiny.vision_width)
        expected = x @ (b @ a).t() * learner.scaling
        torch.testing.assert_close(learner.deltas["vision"].delta(1, "v", x), expected)
    assert not torch.equal(merged.visual.transformer.resblocks[0].attn.in_proj_weight,
                           tiny.model.visual.transformer.resblocks[0].attn.in_proj_weight)


def test_dropout_acts_in_training_only_and_frozen_weights_stay_unchanged(tiny, images):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    learner = perturbed(tiny)
    with torch.no_grad():
        eval_logits = [learner.eval()(images).logits for _ in range(2)]
        train_logits = learner.train()(images).logits
    assert torch.equal(*eval_logits) and not torch.allclose(train_logits, eval_logits[0])
    loss = F.cross_entropy(learner.train()(images).logits, torch.tensor([0, 1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in learner.parameters())
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    assert all(not p.requires_grad for p in tiny.parameters())


def test_one_tower_and_some_blocks(tiny, images):
    text_only = lora(tiny, encoder="text", blocks=[1])
    assert sorted({n.split("_")[0] + n.split("_")[1] for n in text_only.factors}) == ["text1"]
    from clipcore.config import ConfigError

    with pytest.raises(ConfigError, match=r"prompt.blocks=\[5\]: the text tower of 'tiny' has blocks 0..1"):
        lora(tiny, encoder="text", blocks=[5])
    with pytest.raises(ConfigError, match="prompt.params='qx'"):
        lora(tiny, params="qx")


def test_parameter_count_at_vit_b16_follows_the_reference_rule():
    """ViT-B/16: 12 blocks x 3 projections x (A r x E + B E x r), E = 512 (text) and 768 (vision), r = 2."""
    config = open_clip.get_model_config("ViT-B-16")
    backbone = load_backbone("ViT-B-16", config=config, device="meta")  # shapes only, no weights
    learner = build_prompt_learner("clip_lora", backbone, ["a"], {})
    assert sum(p.numel() for p in learner.parameters()) == 184_320


def test_adamw_with_a_per_step_cosine_is_the_references_schedule():
    from omegaconf import OmegaConf

    from clipcore.config import load_config
    from clipcore.schedule import optimizer_with_schedule
    from clipdistill.app import CONFIG_DIR, register_config_sections

    register_config_sections()
    optim = load_config([CONFIG_DIR / "method" / "clip_lora.yaml"]).optim
    param = torch.nn.Parameter(torch.zeros(3))
    ours = optimizer_with_schedule({"prompt": [param]}, optim, max_epochs=-1, max_steps=50)
    reference_param = torch.nn.Parameter(torch.zeros(3))
    reference = torch.optim.AdamW([reference_param], weight_decay=1e-2, betas=(0.9, 0.999), lr=2e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, 50, eta_min=1e-6)
    assert isinstance(ours["optimizer"], torch.optim.AdamW) and ours["lr_scheduler"]["interval"] == "step"
    for _ in range(50):
        assert ours["optimizer"].param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9)
        ours["optimizer"].step(), reference.step()
        ours["lr_scheduler"]["scheduler"].step(), cosine.step()
    with pytest.raises(Exception, match="optim.interval=step schedules over trainer.max_steps"):
        optimizer_with_schedule({"prompt": [param]}, OmegaConf.create(dict(optim)), max_epochs=5, max_steps=-1)


def test_merged_export_is_a_plain_open_clip_model(tmp_path, tiny_clip_config):
    """`clipdistill export --merged` after a short CLIP-LoRA run: open_clip alone reproduces the
    learner's logits."""
    from image_folders import write_image_folder
    from training_helpers import overrides, prompt_method_files

    from clipcore import runner
    from clipdistill import cli, train

    folder = write_image_folder(tmp_path / "photos")
    files = [str(f) for f in prompt_method_files("clip_lora", "supervised")]
    args = overrides(folder, tmp_path / "runs", method="clip_lora", experiment="lora", data__name="image_folder",
                     data__root=str(folder), trainer__max_epochs=1, trainer__max_steps=3, optim__lr=0.01)
    assert train.main(sum([["-c", f] for f in files], []) + args) == 0
    run = next((tmp_path / "runs" / "lora").iterdir())
    ckpt = run / "checkpoints" / "last.ckpt"
    assert cli.main(["export", "--ckpt", str(ckpt), "--merged", "--out", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "open_clip_config.json").read_text())["model_cfg"] == tiny_clip_config

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'merged'}")
    _, module, dm = runner.module_from_checkpoint(ckpt)
    module.eval()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        expected = module.learner(batch["image"]).logits
    names = [c.replace("_", " ") for c in dm.classnames]
    with torch.no_grad():
        text = F.normalize(model.encode_text(open_clip.tokenize([f"a photo of a {c}." for c in names])), dim=-1)
        logits = model.logit_scale.exp() * F.normalize(model.encode_image(batch["image"]), dim=-1) @ text.t()
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(k.startswith("learner.factors.") for k in state)
    assert any(k.endswith("_B") and v.abs().sum() > 0 for k, v in state.items())  # training moved the factors
