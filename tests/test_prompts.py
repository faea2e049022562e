"""Prompt learners (kdpl/prompts): counts, zero-shot identities, gradients, class selection,
class-list changes, learned-state round trips, deep-prompt hooks (spec kdpl.md §1)."""
import pytest
import torch
import torch.nn.functional as F
from prompt_learners import ALL, CLASSNAMES, build, n_params, perturb, zero_shot_logits

from clipcore.backbone import load_backbone
from clipcore.config import ConfigError
from kdpl.prompts import build_prompt_learner
from kdpl.prompts.hooks import deep_text_hook, deep_vision_hook


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
