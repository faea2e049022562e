"""clipcore.compute_dtype: which frozen weights get compute-dtype copies, and the swap."""
import torch

from clipcore.backbone import load_backbone
from clipcore.compute_dtype import FrozenComputeCopies, matmul_weights


def test_only_the_frozen_weights_autocast_would_cast_are_copied(tiny_clip_config):
    backbone = load_backbone("tiny", config=tiny_clip_config).freeze()
    backbone.unfreeze_last_vision_blocks(1)  # trained: autocast caches its casts, keep it fp32
    model = backbone.model
    names = {name for name, p in model.named_parameters() if any(p is q for q in matmul_weights(model))}
    assert "text_projection" in names and "visual.proj" in names and "visual.conv1.weight" in names
    assert "transformer.resblocks.0.attn.in_proj_weight" in names
    assert "transformer.resblocks.0.attn.out_proj.bias" in names
    assert "transformer.resblocks.1.mlp.c_proj.weight" in names
    kept = {"logit_scale", "positional_embedding", "token_embedding.weight", "ln_final.weight",
            "visual.class_embedding", "visual.ln_pre.weight", "transformer.resblocks.0.ln_1.weight",
            "visual.transformer.resblocks.1.mlp.c_fc.weight"}
    assert not names & kept


def test_the_swap_replaces_and_restores_the_same_storage(tiny_clip_config):
    backbone = load_backbone("tiny", config=tiny_clip_config).freeze()
    weight = backbone.model.visual.conv1.weight
    original = weight.data
    copies = FrozenComputeCopies([backbone.model], torch.bfloat16)
    assert copies.nbytes == sum(p.numel() * 2 for p in matmul_weights(backbone.model))
    copies.swap_in()
    assert weight.dtype == torch.bfloat16 and torch.equal(weight.data, original.to(torch.bfloat16))
    copies.swap_out()
    assert weight.data_ptr() == original.data_ptr() and weight.dtype == torch.float32
