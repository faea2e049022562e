"""Load any open_clip model, and drive an OpenAI-style CLIP's towers piece by piece.

This package (with `clipcore.attention`) is the only code that knows open_clip's private structure:
`loading.py` builds models, `clip.py` drives their towers. It offers:

* `load_encoder`: any open_clip model (CLIP, SigLIP, CoCa, EVA, Hugging Face text towers) as a
  `clipcore.encoder.FrozenEncoder`: what teachers and zero-shot evaluation need.
* `load_backbone`: a `ClipBackbone` (a student for prompt learning): the text tower driven from
  token *embeddings* and the vision tower driven block by block with a hook (deep visual
  prompts); only OpenAI-style text towers expose those, other models get an error saying so.

Both take a built-in name + pretrained tag, a local weights file, a `local-dir:` bundle, a name
served by a registered resolver (`register_backbone_resolver`; the offline demo's `synthetic-*`
models register one), or a bare architecture config (random init), failing fast and clearly
when weights are missing offline. `clipcore.bundle.save_local_dir` writes a `local-dir:` bundle.
"""
from clipcore.backbone.clip import TEXT_TOWER_MSG, BackboneLoadError, ClipBackbone, Hook, TextPrefix
from clipcore.backbone.loading import (
    WEIGHT_SUFFIXES,
    load_backbone,
    load_encoder,
    read_model_config,
    register_backbone_resolver,
    text_tower_kind,
)

__all__ = ["TEXT_TOWER_MSG", "WEIGHT_SUFFIXES", "BackboneLoadError", "ClipBackbone", "Hook", "TextPrefix",
           "load_backbone", "load_encoder", "read_model_config", "register_backbone_resolver", "text_tower_kind"]
