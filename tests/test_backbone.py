"""clipcore.backbone: loading paths, tower equivalences, hooks, gradients, fingerprints, errors."""
import json
import time

import pytest
import torch

from clipcore.backbone import BackboneLoadError, ClipBackbone, load_backbone
from clipcore.bundle import save_local_dir

ATOL = 1e-5


@pytest.fixture(scope="module")
def backbone(tiny_clip_config) -> ClipBackbone:
    torch.manual_seed(0)
    bb = load_backbone("tiny", config=tiny_clip_config)
    return bb.eval()


@pytest.fixture(scope="module")
def tokens(backbone):
    return backbone.tokenize(["a photo of a dog.", "a tiny red car parked outside a house", "x"])


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_attributes(backbone, tiny_clip_config):
    assert backbone.embed_dim == 32 and backbone.text_width == 32 and backbone.vision_width == 64
    assert backbone.context_length == 77 and backbone.image_size == 32
    assert backbone.n_text_blocks == 2 and backbone.n_vision_blocks == 2
    assert len(backbone.vision_blocks) == 2 and len(backbone.text_blocks) == 2
    assert backbone.logit_scale is backbone.model.logit_scale
    assert len(backbone.image_mean) == 3 and len(backbone.image_std) == 3
    assert backbone.model.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"


def test_tokenize_shape_and_eot(backbone, tokens):
    assert tokens.shape == (3, 77) and tokens.dtype == torch.long
    # "x" -> [SOT, x, EOT]; EOT (49407) is the largest id so argmax finds it.
    assert backbone.eot_index(tokens)[2].item() == 2
    assert tokens[2, 2].item() == 49407


@pytest.mark.parametrize("truncate", [True, False])
@pytest.mark.parametrize("with_hook", [False, True])
def test_text_embeddings_match_encode_text(backbone, tokens, truncate, with_hook):
    calls = []

    def hook(i, x):
        calls.append((i, x.shape[1]))
        return x

    with torch.no_grad():
        ref = backbone.encode_text(tokens)
        out = backbone.encode_text_embeddings(backbone.token_embedding(tokens), tokens.argmax(-1),
                                              hook=hook if with_hook else None, truncate=truncate)
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    if with_hook:
        expected_len = int(tokens.argmax(-1).max()) + 1 if truncate else 77
        assert calls == [(0, expected_len), (1, expected_len)]


def test_text_hook_edit_changes_output(backbone, tokens):
    # A random direction (a constant shift would vanish in the pre-block LayerNorms).
    delta = torch.randn(32, generator=torch.Generator().manual_seed(2))

    def hook(i, x):
        x = x.clone()
        x[:, 1] = x[:, 1] + delta  # token 1 precedes every EOT, so it must matter
        return x

    with torch.no_grad():
        ref = backbone.encode_text(tokens)
        out = backbone.encode_text_embeddings(backbone.token_embedding(tokens), tokens.argmax(-1), hook=hook)
    assert (out - ref).abs().max() > 1e-3


def test_a_shared_prefix_encoded_once_gives_every_prompts_features(backbone):
    """Prompts that share their first p tokens: the prefix through every block once, then each
    prompt's own tokens against its cached keys/values equal the whole prompt encoded alone,
    hook included (it edits a prefix token), for one prefix group and for one group per image."""
    tokens = backbone.tokenize(["a photo of a dog.", "a photo of a red car parked outside.", "a photo of a x"])
    eot = backbone.eot_index(tokens)
    emb = backbone.token_embedding(tokens)
    delta = torch.randn(32, generator=torch.Generator().manual_seed(3))

    def hook(i, x):
        return torch.cat([x[:, :2], x[:, 2:3] + i * delta, x[:, 3:]], dim=1)

    p = 5  # SOT a photo of a
    with torch.no_grad():
        whole = backbone.encode_text_embeddings(emb, eot, hook=hook)
        prefix = backbone.encode_text_prefix(emb[:1, :p], hook=hook)
        alone = torch.cat([backbone.encode_text_suffix(prefix, emb[i:i + 1, p:int(eot[i]) + 1]) for i in range(3)])
        # Two groups (e.g. two images' contexts); group 1's prefix is shifted, so rows must pick theirs.
        shifted = emb[:1, :p].clone()
        shifted[:, 1] += delta
        groups = backbone.encode_text_prefix(torch.cat([emb[:1, :p], shifted]), hook=hook)
        row = emb[:1, p:int(eot[0]) + 1].expand(2, -1, -1)
        by_group = backbone.encode_text_suffix(groups, row, torch.tensor([1, 0]))
        emb_shifted = emb[:1].clone()
        emb_shifted[:, 1] += delta
        whole_shifted = backbone.encode_text_embeddings(emb_shifted, eot[:1], hook=hook)
    torch.testing.assert_close(alone, whole, atol=ATOL, rtol=0)
    torch.testing.assert_close(by_group[1:], whole[:1], atol=ATOL, rtol=0)
    torch.testing.assert_close(by_group[:1], whole_shifted, atol=ATOL, rtol=0)
    assert (whole_shifted - whole[:1]).abs().max() > 1e-3  # the groups really differ


def test_a_shared_prefix_needs_a_causal_text_tower(backbone, tiny_clip_config):
    cfg = json.loads(json.dumps(tiny_clip_config))
    other = load_backbone("tiny-other", config=cfg)
    other.model.attn_mask = None  # a bidirectional text tower: later tokens change earlier ones
    assert backbone.causal_text and not other.causal_text
    with pytest.raises(ValueError, match="not causal"):
        other.encode_text_prefix(other.token_embedding(other.tokenize(["a dog"]))[:, :2])


def test_normalize_flags(backbone, tokens, images):
    with torch.no_grad():
        t = backbone.encode_text_embeddings(backbone.token_embedding(tokens), tokens.argmax(-1), normalize=True)
        v = backbone.encode_image_blocks(images, normalize=True)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("with_hook", [False, True])
def test_image_blocks_match_encode_image(backbone, images, with_hook):
    seen = []

    def hook(i, x):
        seen.append((i, tuple(x.shape)))
        return x

    with torch.no_grad():
        ref = backbone.encode_image(images)
        out = backbone.encode_image_blocks(images, hook=hook if with_hook else None)
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    if with_hook:
        assert seen == [(0, (3, 17, 64)), (1, (3, 17, 64))]  # 1 CLS + (32/8)^2 patches


def test_image_hook_appending_tokens(backbone, images):
    prompts = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    seen = []

    def hook(i, x):
        seen.append(x.shape[1])
        if i == 0:
            return torch.cat([x, prompts.expand(x.shape[0], -1, -1)], dim=1)
        return x

    with torch.no_grad():
        ref = backbone.encode_image(images)
        out = backbone.encode_image_blocks(images, hook=hook)
    assert seen == [17, 19]
    assert out.shape == (3, 32)
    assert (out - ref).abs().max() > 1e-3


def test_grad_from_block(tiny_clip_config, images):
    bb = load_backbone("tiny", config=tiny_clip_config)  # all params require grad
    out = bb.encode_image_blocks(images, grad_from_block=1)
    out.sum().backward()
    block0, block1 = bb.vision_blocks
    assert all(p.grad is None for p in block0.parameters())
    assert bb.model.visual.conv1.weight.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block1.parameters())
    assert bb.model.visual.proj.grad is not None


def test_freeze_and_unfreeze(tiny_clip_config):
    bb = load_backbone("tiny", config=tiny_clip_config).freeze()
    assert not any(p.requires_grad for p in bb.parameters())
    bb.unfreeze_last_vision_blocks(1)
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.visual.transformer.resblocks.1.") for n in trainable)
    assert len(trainable) == len(list(bb.vision_blocks[1].parameters()))


def test_fingerprint(tiny_clip_config, tmp_path):
    torch.manual_seed(0)
    a = load_backbone("tiny", config=tiny_clip_config)
    torch.manual_seed(0)
    b = load_backbone("tiny", config=tiny_clip_config)
    torch.manual_seed(0)
    c = load_backbone("tiny", config=tiny_clip_config)
    with torch.no_grad():
        c.model.visual.proj[0, 0] += 1e-3
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    assert c.fingerprint() != a.fingerprint()
    # Cached after the first call; refresh recomputes from the current weights.
    with torch.no_grad():
        b.model.ln_final.weight[0] += 1.0
    assert b.fingerprint() == a.fingerprint()
    assert b.fingerprint(refresh=True) != a.fingerprint()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_file_round_trip(backbone, tiny_clip_config, tokens, images, tmp_path, suffix):
    state = {k: v.detach().clone().contiguous() for k, v in backbone.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = load_backbone("tiny", pretrained=str(path), config=tiny_clip_config).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens), backbone.encode_text(tokens), atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_image(images), backbone.encode_image(images), atol=0, rtol=0)


def test_local_dir_round_trip(backbone, tokens, images, tmp_path):
    bundle = save_local_dir(backbone, backbone.model_cfg, tmp_path / "bundle")
    cfg = json.loads((bundle / "open_clip_config.json").read_text())
    assert set(cfg) == {"model_cfg", "preprocess_cfg"} and cfg["model_cfg"]["embed_dim"] == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir cleaned up
    loaded = load_backbone(f"local-dir:{bundle}").eval()
    assert loaded.image_size == 32 and loaded.image_mean == backbone.image_mean
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens), backbone.encode_text(tokens), atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_image(images), backbone.encode_image(images), atol=0, rtol=0)
    assert loaded.fingerprint() != backbone.fingerprint()  # names differ
    with pytest.raises(FileExistsError):
        save_local_dir(backbone, None, bundle)
    save_local_dir(backbone.model, backbone.model_cfg, bundle, overwrite=True)
    assert load_backbone(f"local-dir:{bundle}").fingerprint() == loaded.fingerprint()


def test_config_json_path(tiny_clip_config, tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(tiny_clip_config))
    bb = load_backbone("from-json", config=str(path))
    assert bb.embed_dim == 32 and bb.n_vision_blocks == 2 and bb.name == "from-json"


def test_offline_missing_weights_fail_fast():
    start = time.monotonic()
    with pytest.raises(BackboneLoadError) as err:
        load_backbone("ViT-B-32-quickgelu", "openai")
    assert time.monotonic() - start < 20
    msg = str(err.value)
    assert "ViT-B-32-quickgelu" in msg and "openai" in msg and "local-dir:" in msg
    assert "pretrained=" in msg


def test_unknown_tag_lists_tags():
    with pytest.raises(BackboneLoadError, match="unknown pretrained tag.*openai"):
        load_backbone("ViT-B-32-quickgelu", "no-such-tag")


def test_quickgelu_mismatch_warns():
    with pytest.warns(UserWarning, match="QuickGELU"), pytest.raises(BackboneLoadError):
        load_backbone("ViT-B-32", "openai")


def test_custom_text_tower_refused(tiny_clip_config):
    cfg = dict(tiny_clip_config, custom_text=True)
    with pytest.raises(BackboneLoadError, match="'custom' cannot be a prompt-learning student: it has a custom "
                                                "text tower.*It can still be a teacher"):
        load_backbone("custom", config=cfg)
    with pytest.raises(BackboneLoadError, match="'ViT-B-16-SigLIP' cannot be a prompt-learning student"):
        load_backbone("ViT-B-16-SigLIP")
    with pytest.raises(BackboneLoadError, match="'coca_ViT-B-32' cannot be a prompt-learning student: it has a CoCa"):
        load_backbone("coca_ViT-B-32")
    with pytest.raises(BackboneLoadError, match="Hugging Face text tower \\(xlm-roberta-base\\)"):
        load_backbone("xlm-roberta-base-ViT-B-32")


def test_registered_resolvers_serve_their_names(backbone, tokens, tmp_path, monkeypatch):
    from clipcore.backbone import loading as backbone_module

    bundle = save_local_dir(backbone, None, tmp_path / "zoo-student")
    calls = []
    monkeypatch.setattr(backbone_module, "_RESOLVERS", {})
    backbone_module.register_backbone_resolver("zoo-", lambda name: calls.append(name) or bundle)
    loaded = load_backbone("zoo-student")
    assert loaded.name == "zoo-student" and loaded.pretrained is None and calls == ["zoo-student"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens), backbone.encode_text(tokens), atol=0, rtol=0)
