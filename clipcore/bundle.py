"""Writing open_clip ``local-dir:`` bundles (config JSON + safetensors), atomically."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import open_clip
from torch import nn

from clipcore.backbone import ClipBackbone, read_model_config

log = logging.getLogger(__name__)


def save_local_dir(backbone_or_model: nn.Module, config: Optional[dict], path: str | os.PathLike, *,
                   overwrite: bool = False) -> Path:
    """Write an open_clip `local-dir:` bundle (open_clip_config.json + open_clip_model.safetensors).

    `config` is the model config (`embed_dim`, `vision_cfg`, `text_cfg`, ...; None takes it from a
    `ClipBackbone`). The bundle is written into a temporary sibling folder and renamed into place,
    so a crash never leaves a half-written bundle at `path`. Load it with
    `load_backbone('local-dir:' + str(path))`.
    """
    from safetensors.torch import save_file

    path = Path(path)
    is_backbone = isinstance(backbone_or_model, ClipBackbone)
    model = backbone_or_model.model if is_backbone else backbone_or_model
    if config is None:
        if not is_backbone:
            raise ValueError("config is required when saving a bare open_clip model")
        config = backbone_or_model.model_cfg
    model_cfg, _ = read_model_config(config)
    preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    preprocess.setdefault("size", model_cfg["vision_cfg"].get("image_size", 224))
    preprocess.setdefault("mean", list(open_clip.OPENAI_DATASET_MEAN))
    preprocess.setdefault("std", list(open_clip.OPENAI_DATASET_STD))
    if path.exists() and not overwrite:
        raise FileExistsError(f"Bundle already exists: {path} (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "open_clip_model.safetensors"))
        bundle_cfg = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
        (tmp / "open_clip_config.json").write_text(json.dumps(bundle_cfg, indent=2, default=list))
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "bundle")
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.exists():
                raise
            # Another writer finished first; keep its bundle rather than failing.
            log.warning("Bundle %s was written concurrently; keeping the existing one", path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
