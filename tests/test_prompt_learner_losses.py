"""PromptSRC's references, L_SCL and GPA, and KgCoOp's knowledge-guided loss (spec kdpl.md §7)."""

import pytest
import torch
import torch.nn.functional as F
from prompt_learners import CLASSNAMES, build, perturb

from clipcore.config import ConfigError
from clipcore.templates import PROMPTSRC_TEMPLATES
from kdpl.prompts import gaussian_weights
from kdpl.prompts.gpa import PromptAggregator


# ----- PromptSRC -----
def test_promptsrc_references_and_scl_loss_closed_form(tiny, images):
    learner = perturb(build("promptsrc", tiny)).train()
    assert len(PROMPTSRC_TEMPLATES) == 60 and PROMPTSRC_TEMPLATES[0] == "a photo of a {}."
    with torch.no_grad():
        per_template = torch.stack([
            tiny.encode_text(tiny.tokenize([t.format(c.replace("_", " ")) for c in CLASSNAMES]))
            for t in PROMPTSRC_TEMPLATES])
    torch.testing.assert_close(learner.fixed_embeddings, per_template.mean(0), rtol=0, atol=1e-5)

    idx = torch.tensor([4, 1])
    out = learner(images, idx)
    ex = out.extras
    zs_text = F.normalize(per_template.mean(0)[idx], dim=-1)
    zs_img = F.normalize(tiny.encode_image(images), dim=-1)
    torch.testing.assert_close(ex["zs_text_features"], zs_text, rtol=0, atol=1e-5)
    torch.testing.assert_close(ex["zs_logits"], tiny.logit_scale.exp() * zs_img @ zs_text.t(), rtol=0, atol=1e-4)

    loss, parts = learner.regularization_loss(out)
    p_zs, p_s = ex["zs_logits"].softmax(-1), out.logits.softmax(-1)
    kl = (p_zs * (p_zs.log() - p_s.log())).sum() / p_s.numel()
    text_l1 = (out.text_features - zs_text).abs().mean()
    image_l1 = (out.image_features - zs_img).abs().mean()
    torch.testing.assert_close(parts["scl_logits"], kl.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, 25 * text_l1 + 10 * image_l1 + kl, rtol=1e-4, atol=1e-6)

    with torch.no_grad():
        learner.eval()
        assert learner(images).extras == {}
        with pytest.raises(ValueError, match="training mode"):
            learner.regularization_loss(learner(images))


def test_promptsrc_normalized_template_average_weighs_templates_equally(tiny):
    """template_average=normalized: CLIP's ensembling (normalise, average, renormalise)."""
    learner = build("promptsrc", tiny, template_average="normalized")
    with torch.no_grad():
        per_template = torch.stack([F.normalize(
            tiny.encode_text(tiny.tokenize([t.format(c.replace("_", " ")) for c in CLASSNAMES])), dim=-1)
            for t in PROMPTSRC_TEMPLATES])
    torch.testing.assert_close(learner.fixed_embeddings, F.normalize(per_template.mean(0), dim=-1),
                               rtol=0, atol=1e-5)
    raw = build("promptsrc", tiny).fixed_embeddings  # the default keeps the reference's rule
    assert not torch.allclose(F.normalize(raw, dim=-1), learner.fixed_embeddings, atol=1e-4)
    with pytest.raises(ConfigError, match="prompt.template_average='mean': expected one of raw, normalized"):
        build("promptsrc", tiny, template_average="mean")


# ----- GPA (invariant 12) -----
def test_gaussian_weights_match_the_reference_values():
    w = gaussian_weights(20, 15, 1)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert w[12:17].tolist() == pytest.approx([0.054, 0.242, 0.399, 0.242, 0.054], abs=1e-3)
    assert w[11].item() == pytest.approx(0.0044, abs=1e-4) and w[17].item() == pytest.approx(0.0044, abs=1e-4)
    w = gaussian_weights(20, 6, 10)
    assert w[0].item() == pytest.approx(0.055, abs=5e-4)
    assert int(w.argmax()) == 5 and w[5].item() == pytest.approx(0.0628, abs=1e-4)
    assert w[19].item() == pytest.approx(0.0236, abs=1e-4)


def _epoch_state(e):
    return {"ctx": torch.full((2, 3), float(e)), "deep": torch.full((4,), float(e) ** 2)}


def test_prompt_aggregator_weighted_mean_and_resume():
    epochs = 6
    full = PromptAggregator(epochs, 4, 1.5)
    for e in range(1, epochs + 1):
        full.update(e, _epoch_state(e))
    w = gaussian_weights(epochs, 4, 1.5)
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    out = full.aggregate()
    assert out["ctx"].dtype == torch.float32
    torch.testing.assert_close(out["ctx"], torch.full((2, 3), float((w * e).sum())))
    torch.testing.assert_close(out["deep"], torch.full((4,), float((w * e ** 2).sum())))
    with pytest.raises(ValueError, match="already"):
        full.update(3, _epoch_state(3))

    first = PromptAggregator(epochs, 4, 1.5)
    for e in range(1, 4):
        first.update(e, _epoch_state(e))
    resumed = PromptAggregator(epochs, 4, 1.5)
    resumed.load_state_dict(first.state_dict())
    for e in range(4, epochs + 1):
        resumed.update(e, _epoch_state(e))
    assert resumed.complete
    torch.testing.assert_close(resumed.aggregate(), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mu, sigma"):
        PromptAggregator(epochs, 5, 1.5).load_state_dict(first.state_dict())
    # PromptSRC issue #17: changing mu must change the aggregate.
    other = PromptAggregator(epochs, 2, 1.5)
    for e in range(1, epochs + 1):
        other.update(e, _epoch_state(e))
    assert not torch.allclose(other.aggregate()["ctx"], out["ctx"])


# ----- KgCoOp -----
def test_kgcoop_is_coop_plus_the_knowledge_guided_distance(tiny, images):
    """loss term = weight * (1 - mean_c cos(t_c, t_c^zs)) over the classes of the step (reference
    trainers/kgcoop.py), t^zs the frozen features of the hand-crafted prompt."""
    learner = perturb(build("kgcoop", tiny, template="a sketch of a {}.", weight=3.0)).train()
    coop = build("coop", tiny)
    coop.load_learned_state(learner.learned_state())
    with torch.no_grad():
        zs = F.normalize(tiny.encode_text(tiny.tokenize([f"a sketch of a {c.replace('_', ' ')}." for c in CLASSNAMES])),
                         dim=-1)
    idx = torch.tensor([4, 1])
    out = learner(images, idx)
    torch.testing.assert_close(out.logits, coop.eval()(images, idx).logits)  # CoOp's prompt and logits
    loss, parts = learner.regularization_loss(out)
    expected = 1 - (out.text_features * zs[idx]).sum(-1).mean()
    torch.testing.assert_close(parts["kg_score"], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, 3.0 * expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert [n for n, p in learner.named_parameters()] == ["ctx"] and learner.ctx.numel() == 4 * tiny.text_width
    assert type(learner).text_only  # a baked classifier reproduces it


def test_kgcoop_template_null_is_the_datasets_template():
    from clipcore.config import load_config
    from clipdistill.app import register_config_sections
    from kdpl.methods import learner_settings

    register_config_sections()
    cfg = load_config([], ["method=kgcoop", "data.name=dtd"])
    assert learner_settings(cfg)["template"] == "{} texture."
    cfg = load_config([], ["method=kgcoop", "data.name=dtd", "prompt.template=a photo of a {}, a type of texture."])
    assert learner_settings(cfg)["template"] == "a photo of a {}, a type of texture."
