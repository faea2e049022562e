"""A frozen vision-language encoder: what a teacher (and zero-shot evaluation) needs of a model.

Any open_clip model qualifies: CLIP, SigLIP / SigLIP 2 (custom text tower, a logit bias), CoCa,
EVA (timm vision towers) and Hugging Face text towers. The interface is small on purpose:
``tokenize``, ``encode_image``, ``encode_text``, the model's own ``logit_scale`` and
``logit_bias`` (None for CLIP-style models), its preprocessing, and a ``fingerprint`` of
everything that determines its outputs (which keys caches and guards checkpoints).

A *student* for prompt learning needs more (token embeddings, block-level towers):
:class:`clipcore.backbone.ClipBackbone` extends this class with those entry points.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import open_clip
import torch
from torch import nn

from clipcore.paths import LOCAL_DIR


class FrozenEncoder(nn.Module):
    """An open_clip model used as a frozen function of images and texts."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, pretrained: Optional[str], model_cfg: dict,
                 open_clip_source: Optional[tuple[str, Optional[str]]] = None):
        """``open_clip_source``: ``(model_name, pretrained)`` that plain ``open_clip.create_model``
        loads the same weights from (None when the model was built from a bare config)."""
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.model_cfg = copy.deepcopy(model_cfg)
        self.open_clip_source = open_clip_source
        self._fingerprint: Optional[str] = None
        self.embed_dim = int(model_cfg["embed_dim"])
        self.context_length = int(getattr(model, "context_length", None)
                                  or getattr(tokenizer, "context_length", 77))
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", model_cfg["vision_cfg"].get("image_size", 224))
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.image_mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.image_std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
        self.preprocess_cfg = dict(pp)

    @property
    def family(self) -> str:
        """A short description of the architecture (for logs and errors)."""
        return type(self.model).__name__

    # ----- scoring -----
    @property
    def logit_scale(self) -> nn.Parameter:
        """The model's learned temperature in log space (use `.exp()`)."""
        return self.model.logit_scale

    @property
    def logit_bias(self) -> Optional[torch.Tensor]:
        """SigLIP's learned logit bias (None for softmax-trained models)."""
        return getattr(self.model, "logit_bias", None)

    # ----- towers -----
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids `[N, context_length]` (on CPU)."""
        return self.tokenizer(list(texts)).long()

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=normalize)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_image(images, normalize=normalize)

    # ----- freezing -----
    def freeze(self) -> "FrozenEncoder":
        """Turn off gradients for every parameter."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    # ----- compilation -----
    def compile_blocks(self, backend: str = "inductor") -> int:
        """``torch.compile`` every residual block of both towers, in place; returns how many.

        Regional compilation: one graph per block (a few shapes: the text buckets' lengths), the
        state dict's keys unchanged (``nn.Module.compile`` keeps the module), and whatever runs
        between blocks (deep prompts, hooks) stays eager. A model without residual-block lists
        (e.g. a ResNet tower) is compiled whole.
        """
        lists = [module for name, module in self.model.named_modules()
                 if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("resblocks", "blocks")]
        targets = [block for blocks in lists for block in blocks] or [self.model]
        for target in targets:
            target.compile(backend=backend)
        return len(targets)

    # ----- identity -----
    def fingerprint(self, refresh: bool = False) -> str:
        """sha256 (16 hex chars) of name, tag, architecture and every parameter/buffer byte.

        Computed from the weights at the first call and cached (a frozen model does not
        change); pass `refresh=True` after editing weights. Directory parts of local paths are
        left out so a bundle or file moved to another machine keeps its fingerprint.
        """
        if self._fingerprint is not None and not refresh:
            return self._fingerprint
        h = hashlib.sha256()
        name = self.name
        if name.startswith(LOCAL_DIR):
            name = LOCAL_DIR + Path(name[len(LOCAL_DIR):]).name
        tag = self.pretrained
        if tag is not None and os.path.isfile(tag):
            tag = Path(tag).name
        header = {"name": name, "pretrained": tag, "model_cfg": self.model_cfg}
        h.update(json.dumps(header, sort_keys=True, default=str).encode())
        tensors = dict(self.model.named_parameters())
        tensors.update({f"buffer:{k}": v for k, v in self.model.named_buffers()})
        for key in sorted(tensors):
            t = tensors[key].detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint
