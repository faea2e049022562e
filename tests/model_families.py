"""Random-init open_clip architectures of every family a teacher may be, shrunk where open_clip
lets a config shrink them (the timm vision towers of SigLIP and EVA keep their size: open_clip
does not pass sizes to timm). Text towers use the BPE tokenizer that ships with open_clip
(vocabulary 49408), so nothing is downloaded; the Hugging Face tower is a 1-layer BERT built
from a local ``config.json``."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip

FAMILIES = ("siglip", "siglip2", "coca", "eva", "hf")
SIGLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "size": 224}


def _text(cfg: dict, context: int = 16) -> dict:
    cfg = dict(cfg)
    cfg.pop("hf_tokenizer_name", None)
    cfg.pop("tokenizer_kwargs", None)
    cfg.update(width=32, heads=2, layers=1, vocab_size=49408, context_length=context)
    return cfg


def family_config(family: str, folder: Path) -> Path:
    """An open_clip config JSON for ``family`` written under ``folder`` (returned)."""
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = None
    if family in ("siglip", "siglip2", "eva"):
        name = {"siglip": "ViT-B-16-SigLIP", "siglip2": "ViT-B-16-SigLIP2", "eva": "EVA02-B-16"}[family]
        cfg = copy.deepcopy(open_clip.get_model_config(name))
        cfg["text_cfg"] = _text(cfg["text_cfg"])
        if family == "eva":
            cfg["embed_dim"] = 32
        else:  # the timm trunk has no projection: its width is the embedding width
            preprocess = SIGLIP_PREPROCESS
    elif family == "coca":
        cfg = copy.deepcopy(open_clip.get_model_config("coca_ViT-B-32"))
        cfg["embed_dim"] = 32
        cfg["vision_cfg"].update(image_size=32, layers=1, width=64, patch_size=8, attn_pooler_heads=2, head_width=32)
        cfg["text_cfg"] = _text(cfg["text_cfg"])
        cfg["multimodal_cfg"].update(width=32, heads=2, layers=1, attn_pooler_heads=2, context_length=16)
    elif family == "hf":
        hf_dir = folder / "hf-bert"
        hf_dir.mkdir(exist_ok=True)
        (hf_dir / "config.json").write_text(json.dumps({
            "model_type": "bert", "vocab_size": 49408, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}))
        cfg = copy.deepcopy(open_clip.get_model_config("xlm-roberta-base-ViT-B-32"))
        cfg["embed_dim"] = 32
        cfg["vision_cfg"].update(image_size=32, layers=1, width=64, patch_size=8, head_width=32)
        cfg["text_cfg"] = {"hf_model_name": str(hf_dir), "hf_pooler_type": "mean_pooler", "context_length": 16}
    else:
        raise ValueError(family)
    path = folder / f"{family}.json"
    body = {"model_cfg": cfg, "preprocess_cfg": preprocess} if preprocess else cfg
    path.write_text(json.dumps(body))
    return path
