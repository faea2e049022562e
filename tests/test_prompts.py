"""Prompt learners (kdpl/prompts): counts, zero-shot identities, gradients, class selection,
class-list changes, learned-state round trips, PromptSRC's L_SCL and GPA (spec kdpl.md §1, §7)."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipcore.backbone import load_backbone
from clipcore.config import ConfigError
from clipcore.templates import PROMPTSRC_TEMPLATES
from kdpl.prompts import PROMPT_LEARNERS, build_prompt_learner, gaussian_weights
from kdpl.prompts.gpa import PromptAggregator
from kdpl.prompts.hooks import deep_text_hook, deep_vision_hook

CLASSNAMES = ["cat", "golden_retriever", "sea lion", "hot-air balloon", "x"]
ALL = sorted(PROMPT_LEARNERS)


@pytest.fixture(scope="module")
def tiny(tiny_clip_config):
    torch.manual_seed(0)
    return load_backbone("tiny", config=tiny_clip_config).freeze().eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def build(name, backbone, classnames=CLASSNAMES, seed=0, **overrides):
    torch.manual_seed(seed)
    # Each learner's own settings for the 2-block tiny towers (deep prompts go 2 deep).
    return build_prompt_learner(name, backbone, classnames, {**PROMPT_LEARNERS[name].tiny_test_settings, **overrides})


def perturb(learner, seed=2):
    """Move every learned tensor away from its init so that equalities are not coincidental."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return learner


def zero_shot_logits(backbone, images, classnames, template="a photo of a {}."):
    with torch.no_grad():
        text = backbone.encode_text(backbone.tokenize([template.format(c.replace("_", " ")) for c in classnames]))
        img = F.normalize(backbone.encode_image(images).float(), dim=-1)
        return backbone.logit_scale.exp() * img @ F.normalize(text.float(), dim=-1).t()


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ----- counts (invariant 10) -----
@pytest.fixture(scope="module")
def vit_b32():
    return load_backbone("ViT-B-32-quickgelu", None).freeze().eval()


@pytest.mark.parametrize("name,cfg,expected", [
    ("coop", {}, 2_048),
    ("cocoop", {}, 35_360),
    ("vpt", {}, 73_728),
    ("maple", {}, 3_555_072),
    ("promptsrc", {}, 46_080),
    ("promptsrc", {"depth": 3}, 15_360),
])
def test_trainable_counts_match_reference_for_vit_b32(vit_b32, name, cfg, expected):
    learner = build_prompt_learner(name, vit_b32, ["cat"], cfg)
    assert n_params(learner) == expected
    assert all(p.dtype == torch.float32 for p in learner.parameters())


def test_learners_own_no_backbone_weights(tiny):
    backbone_ids = {id(p) for p in tiny.parameters()}
    for name in ALL:
        learner = build(name, tiny)
        assert not backbone_ids & {id(p) for p in learner.parameters()}
        assert not any(k.startswith(("_backbone", "model.")) for k in learner.state_dict())


# ----- identities with the frozen model (invariant 9) -----
def test_coop_at_init_is_zero_shot_clip(tiny, images):
    learner = build("coop", tiny).eval()
    assert learner.ctx.shape == (4, tiny.text_width)  # n_ctx from the 4 tokens of "a photo of a"
    with torch.no_grad():
        logits = learner(images).logits
    torch.testing.assert_close(logits, zero_shot_logits(tiny, images, CLASSNAMES), rtol=0, atol=1e-5)


@pytest.mark.parametrize("position,template", [("front", "{} a photo of a."), ("middle", "a photo {} of a.")])
def test_coop_class_token_positions_place_the_name(tiny, images, position, template):
    learner = build("coop", tiny, class_token_position=position).eval()
    with torch.no_grad():
        logits = learner(images).logits
    torch.testing.assert_close(logits, zero_shot_logits(tiny, images, CLASSNAMES, template), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,cfg", [("vpt", {"vision_ctx": 0}), ("promptsrc", {"vision_ctx": 0, "depth": 1})])
def test_identity_configurations_reproduce_the_frozen_model(tiny, images, name, cfg):
    learner = build(name, tiny, **cfg).eval()
    with torch.no_grad():
        logits = learner(images).logits
    torch.testing.assert_close(logits, zero_shot_logits(tiny, images, CLASSNAMES), rtol=0, atol=1e-5)
    # ... and the prompts are not inert once present.
    with torch.no_grad():
        prompted = build(name, tiny, **{**cfg, "vision_ctx": 2}).eval()(images).logits
    assert (prompted - logits).abs().max() > 1e-3


def test_maple_keeps_the_whole_init_phrase(tiny):
    learner = build("maple", tiny)
    assert learner.ctx.shape[0] == 2 and learner.prompt_prefix == "a photo of a"
    phrase = tiny.token_embedding(tiny.tokenize(["a photo of a"]))[0, 1:3]
    torch.testing.assert_close(learner.ctx.detach(), phrase, rtol=0, atol=0)


# ----- deep prompts against the reference formulation (KDPL src/clip/model.py) -----
def reference_image_features(backbone, images, layer_prompts):
    """Reference ViT: prompts appended after the positional embedding and *before* ln_pre,
    replacing the last n tokens before blocks 1..len-1 (written here batch-first)."""
    v = backbone.model.visual
    x = v.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1) + v.positional_embedding
    n = layer_prompts[0].shape[0]
    x = v.ln_pre(torch.cat([x, layer_prompts[0].expand(x.shape[0], -1, -1)], dim=1))
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i < len(layer_prompts):
            x = torch.cat([x[:, :-n], layer_prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


def reference_text_features(backbone, classnames, prefix, ctx, deep):
    """Reference text encoder: [SOT][ctx][rest] + positional embedding, deep[i-1] replacing
    tokens 1..n before block i, full 77 tokens, argmax pooling."""
    m = backbone.model
    tokens = backbone.tokenize([f"{prefix} {c.replace('_', ' ')}." for c in classnames])
    emb = m.token_embedding(tokens)
    n = ctx.shape[0]
    x = torch.cat([emb[:, :1], ctx.expand(len(classnames), -1, -1), emb[:, 1 + n:]], dim=1) + m.positional_embedding
    for i, block in enumerate(m.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n:]], dim=1)
        x = block(x, attn_mask=m.attn_mask)
    return m.ln_final(x)[torch.arange(len(classnames)), tokens.argmax(-1)] @ m.text_projection


@pytest.mark.parametrize("name", ["vpt", "maple", "promptsrc"])
def test_deep_prompts_match_the_reference_formulation(tiny, images, name):
    learner = perturb(build(name, tiny)).eval()
    with torch.no_grad():
        if name == "vpt":
            vision = list(learner.vision_prompts)
            text = tiny.encode_text(tiny.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES]))
        elif name == "maple":
            deep = list(learner.compound_prompts_text)
            vision = [learner.proj(learner.ctx)] + [f(p) for f, p in zip(learner.compound_projections, deep)]
            text = reference_text_features(tiny, CLASSNAMES, "a photo of a", learner.ctx, deep)
        else:
            vision = list(learner.vision_prompts)
            text = reference_text_features(tiny, CLASSNAMES, "a photo of a", learner.ctx, list(learner.text_prompts))
        image = reference_image_features(tiny, images, vision)
        expected = tiny.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        torch.testing.assert_close(learner(images).logits, expected, rtol=0, atol=1e-4)


# ----- gradients reach exactly the learned tensors -----
@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_exactly_the_learned_parameters(tiny, images, name):
    # Perturbed: at CLIP-LoRA's init B = 0, so A's gradient is zero by construction.
    learner = perturb(build(name, tiny)).train()
    output = learner(images)
    reg, _ = learner.regularization_loss(output)
    loss = F.cross_entropy(output.logits, torch.tensor([0, 1, 2])) + reg
    loss.backward()
    for key, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, key
    assert all(p.grad is None for p in tiny.parameters())


@pytest.mark.parametrize("name", ALL)
def test_learners_run_under_bf16_autocast_with_fp32_logits_and_grads(tiny, images, name):
    learner = build(name, tiny).train()
    with torch.no_grad():
        reference = learner(images).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = learner(images)
        reg, _ = learner.regularization_loss(output)
    assert output.logits.dtype == torch.float32 and output.text_features.dtype == torch.float32
    assert (output.logits - reference).abs().max() < 1.0  # bf16 towers, logits scale ~14
    (F.cross_entropy(output.logits, torch.tensor([0, 1, 2])) + reg).backward()
    for key, p in learner.named_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), key


# ----- class selection -----
@pytest.mark.parametrize("name", ALL)
def test_class_selection_equals_indexed_full_logits(tiny, images, name):
    learner = perturb(build(name, tiny)).eval()
    idx = torch.tensor([3, 0, 4])
    with torch.no_grad():
        full = learner(images).logits
        selected = learner(images, idx).logits
    assert selected.shape == (3, 3)
    torch.testing.assert_close(selected, full[:, idx], rtol=0, atol=1e-5)


def test_cocoop_batched_equals_a_per_image_per_class_loop(tiny, images):
    learner = perturb(build("cocoop", tiny)).eval()
    learner.cfg.text_chunk_size = 4  # 3 images × 5 classes: several chunks
    with torch.no_grad():
        batched = learner(images).logits
        feats = F.normalize(tiny.encode_image(images), dim=-1)
        bias = learner.meta_net(feats)
        expected = torch.empty(3, len(CLASSNAMES))
        for b in range(3):
            for c, name in enumerate(CLASSNAMES):
                tokens = tiny.tokenize([f"a photo of a {name.replace('_', ' ')}."])
                emb = tiny.token_embedding(tokens).clone()
                emb[0, 1:5] = learner.ctx + bias[b]
                text = tiny.encode_text_embeddings(emb, tiny.eot_index(tokens), truncate=False)
                expected[b, c] = tiny.logit_scale.exp() * feats[b] @ F.normalize(text, dim=-1)[0]
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-4)


# ----- class lists and learned state -----
@pytest.mark.parametrize("name", ALL)
def test_set_classnames_keeps_learned_state_and_transfers(tiny, images, name):
    learner = perturb(build(name, tiny)).eval()
    before = learner.learned_state()
    learner.set_classnames(["dog", "sea_lion"])
    assert all(torch.equal(v, learner.learned_state()[k]) for k, v in before.items())
    fresh = build(name, tiny, classnames=["dog", "sea_lion"], seed=5).eval()
    fresh.load_learned_state(before)
    with torch.no_grad():
        logits = learner(images).logits
        torch.testing.assert_close(logits, fresh(images).logits, rtol=0, atol=1e-6)
    assert logits.shape == (3, 2)


@pytest.mark.parametrize("name", ALL)
def test_learned_state_round_trip_reproduces_logits(tiny, images, name):
    source = perturb(build(name, tiny)).eval()
    state = source.learned_state()
    assert set(state) == {k for k, _ in source.named_parameters()}  # no class buffers, no backbone
    target = build(name, tiny, seed=9).eval()
    with torch.no_grad():
        assert not torch.allclose(target(images).logits, source(images).logits)
        target.load_learned_state(state)
        torch.testing.assert_close(target(images).logits, source(images).logits, rtol=0, atol=0)
    with pytest.raises(KeyError):
        target.load_learned_state({**state, "bogus": torch.zeros(1)})


def test_class_specific_coop_is_tied_to_its_class_count(tiny, images):
    learner = build("coop", tiny, class_specific=True)
    assert learner.ctx.shape == (len(CLASSNAMES), 4, tiny.text_width)
    with torch.no_grad():  # same init for every class: still zero-shot
        torch.testing.assert_close(learner.eval()(images).logits, zero_shot_logits(tiny, images, CLASSNAMES),
                                   rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="class-specific"):
        learner.set_classnames(["dog", "cat"])
    other = build("coop", tiny, classnames=["dog", "cat"], class_specific=True)
    with pytest.raises(ValueError, match="shape"):
        other.load_learned_state(learner.learned_state())


def test_random_context_and_config_errors(tiny):
    learner = build("coop", tiny, ctx_init=None, n_ctx=16)
    assert learner.ctx.shape == (16, tiny.text_width) and learner.prompt_prefix == " ".join(["X"] * 16)
    assert 0.015 < learner.ctx.std().item() < 0.025
    with pytest.raises(ValueError, match="n_ctx"):
        build("coop", tiny, n_ctx=5)  # more tokens than "a photo of a" has
    with pytest.raises(ConfigError, match=r"coop: unknown prompt config keys \['n_cxt'\]"):
        build("coop", tiny, n_cxt=4)
    with pytest.raises(ConfigError, match="unknown prompt config keys.*class_specific"):
        build("maple", tiny, class_specific=True)  # only CoOp has class-specific contexts
    with pytest.raises(ValueError, match="depth"):
        build("maple", tiny, depth=3)  # the tiny towers have 2 blocks
    with pytest.raises(ConfigError, match="available"):
        build_prompt_learner("nope", tiny, CLASSNAMES)


# ----- hooks -----
def test_deep_hooks_insert_and_replace_the_right_tokens():
    x = torch.zeros(2, 6, 3)
    text = [torch.full((2, 3), 7.0)]
    hook = deep_text_hook(text)
    assert torch.equal(hook(0, x), x) and torch.equal(hook(2, x), x)
    y = hook(1, x)
    assert y.shape == x.shape and (y[:, 1:3] == 7).all() and (y[:, [0, 3, 4, 5]] == 0).all()
    vision = [torch.full((2, 3), 1.0), torch.full((2, 3), 5.0)]
    hook = deep_vision_hook(vision, pre_norm=lambda p: p * 2)
    y = hook(0, x)
    assert y.shape == (2, 8, 3) and (y[:, 6:] == 2).all() and (y[:, :6] == 0).all()
    z = hook(1, y)
    assert z.shape == (2, 8, 3) and (z[:, 6:] == 5).all() and (z[:, :6] == 0).all()
    assert torch.equal(hook(2, z), z)
    assert torch.equal(deep_vision_hook([torch.zeros(0, 3)], pre_norm=lambda p: p)(0, x), x)


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
    assert math.isclose(float(w.sum()), 1.0)


@pytest.mark.parametrize("name", ["coop", "cocoop", "maple", "promptsrc"])
def test_untruncated_text_tower_gives_the_same_logits(tiny, images, name):
    """`truncate_text=False` (the reference's full-context text tower, used by the benchmark)
    runs every token yet pools the same features: the causal mask hides what truncation drops."""
    learner = perturb(build(name, tiny))
    idx = torch.tensor([3, 0, 4])
    cut = learner(images, class_indices=idx).logits
    learner.truncate_text = False
    full = learner(images, class_indices=idx).logits
    assert learner._selected_tokens(idx)[0].shape[1] == tiny.context_length
    torch.testing.assert_close(full, cut, rtol=1e-4, atol=1e-4)


FLOOR_CASES = [(n, {}) for n in ALL] + [
    ("coop", {"class_token_position": "middle"}), ("coop", {"class_token_position": "front"}),
    ("coop", {"class_specific": True}), ("cocoop", {"text_chunk_size": 4})]
TEXT_LEARNERS = sorted(set(ALL) - {"vpt", "clip_lora"})  # VPT's text is fixed; CLIP-LoRA's is padded


def _step(learner, images, idx):
    out = learner(images, class_indices=idx)
    (out.logits.square().mean() + learner.regularization_loss(out)[0]).backward()
    return out.logits.detach(), {k: p.grad for k, p in learner.named_parameters()}


@pytest.mark.parametrize("selected", [False, True], ids=["all-classes", "selected"])
@pytest.mark.parametrize("name,cfg", FLOOR_CASES, ids=[f"{n}{cfg or ''}" for n, cfg in FLOOR_CASES])
def test_text_at_its_floor_gives_the_padded_logits_and_gradients(tiny, images, name, cfg, selected):
    """Prompts grouped by length with the prefix they share encoded once (the default) give the
    logits and gradients of every prompt padded to the longest (`bucket_text=False`)."""
    idx = torch.tensor([3, 0, 4]) if selected else None

    def run(bucket_text):
        learner = perturb(build(name, tiny, **cfg)).train()
        learner.bucket_text = bucket_text
        return _step(learner, images, idx)

    (floor, floor_grads), (padded, padded_grads) = run(True), run(False)
    torch.testing.assert_close(floor, padded, rtol=1e-5, atol=1e-5)
    for key, grad in padded_grads.items():
        torch.testing.assert_close(floor_grads[key], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))


@pytest.mark.parametrize("name", TEXT_LEARNERS)
def test_text_at_its_floor_runs_fewer_flops(tiny, images, name):
    """The floor path is really taken (not silently padded): fewer FLOPs for the same logits."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for bucket in (True, False):
        learner = perturb(build(name, tiny)).eval()
        learner.bucket_text = bucket
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            learner.encode_class_text(None) if name != "cocoop" else learner(images)
        counts.append(counter.get_total_flops())
    assert counts[0] < 0.9 * counts[1]


@pytest.mark.parametrize("name,cfg,classnames,expected", [
    ("coop", {}, CLASSNAMES, 5),  # SOT + the 4 context vectors ("a photo of a")
    ("coop", {"ctx_init": None, "n_ctx": 3}, CLASSNAMES, 4),
    ("coop", {}, ["golden retriever", "golden eagle"], 6),  # the common first word too
    ("coop", {}, ["cat"], 7),  # one class: everything but its EOT
    ("coop", {"class_token_position": "middle"}, CLASSNAMES, 3),  # SOT + ctx[:2], then the name
    ("coop", {"class_token_position": "front"}, CLASSNAMES, 1),
    ("coop", {"class_specific": True}, CLASSNAMES, 1),  # every class has its own context
    ("maple", {}, CLASSNAMES, 5),  # SOT + 2 context vectors + the frozen "of a"
    ("cocoop", {}, CLASSNAMES, 5),  # per image (its context), shared by its classes
])
def test_the_shared_prefix_is_what_every_prompt_has_in_common(tiny, images, name, cfg, classnames, expected):
    learner = perturb(build(name, tiny, classnames, **cfg))
    assert learner._prompt_layout(None).prefix == expected
    floor = learner(images).logits
    learner.bucket_text = False
    torch.testing.assert_close(floor, learner(images).logits, rtol=1e-5, atol=1e-5)


def test_buckets_group_prompts_by_length_and_restore_the_class_order(tiny):
    learner = build("coop", tiny)
    learner.max_text_buckets = 10  # one bucket per length
    eot = learner.prompt_eot.tolist()
    layout = learner._prompt_layout(torch.tensor([4, 1, 0, 2]))
    assert list(layout.lengths) == sorted({eot[i] + 1 for i in (4, 1, 0, 2)})
    assert sum(layout.counts) == 4
    selected_eot = torch.tensor([eot[i] for i in (4, 1, 0, 2)])
    assert (selected_eot[layout.order] + 1).tolist() == [n for n, c in zip(layout.lengths, layout.counts)
                                                        for _ in range(c)]
    assert (layout.order[layout.inverse] == torch.arange(4)).all()


def test_lengths_are_merged_into_the_buckets_that_pad_the_fewest_tokens():
    """Prompts of 8, 8, 9, 9, 11, 13 tokens after a prefix of 5, in at most 2 buckets: {8, 9} and
    {11, 13} encode (9-5)x4 + (13-5)x2 = 32 tokens; {8} {9, 11, 13} 38, {8, 9, 11} {13} 38."""
    from kdpl.prompts.layout import length_buckets

    eot = torch.tensor([7, 8, 10, 7, 12, 8])  # lengths 8, 9, 11, 8, 13, 9
    lengths, counts, order = length_buckets(eot, prefix=5, max_buckets=2)
    assert (lengths, counts) == ((9, 13), (4, 2))
    assert order.tolist() == [0, 3, 1, 5, 2, 4]
    assert length_buckets(eot, prefix=5, max_buckets=1)[:2] == ((13,), (6,))
    assert length_buckets(eot, prefix=5, max_buckets=8)[:2] == ((8, 9, 11, 13), (2, 2, 1, 1))


@pytest.mark.parametrize("name", ALL)
def test_a_step_over_the_whole_class_list_never_reads_the_device(tiny_clip_config, name):
    """On the meta device tensors have no values, so any host read (int(), .item(), .tolist(), a
    value-dependent shape) raises: forward and backward there prove the step has no host sync
    (what they need is computed on the host when the class list is set)."""
    with torch.device("meta"):
        backbone = load_backbone("tiny-meta", config=tiny_clip_config, device="meta")
    learner = build(name, backbone.freeze().eval()).train()
    out = learner(torch.randn(2, 3, 32, 32, device="meta"))
    (out.logits.logsumexp(-1).mean() + learner.regularization_loss(out)[0]).backward()
    assert out.logits.shape == (2, len(CLASSNAMES)) and out.logits.device.type == "meta"


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
