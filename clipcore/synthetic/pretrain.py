"""Contrastive pretraining of small CLIPs on ShapeWorld (image, caption) pairs, on CPU.

The images are rendered once into a uint8 tensor (pretraining instance seeds, disjoint from the
train/val/test splits written to disk); every step pairs each image with one of its captions drawn
at random. Everything is seeded, so a rebuild with the same settings and the same number of torch
threads reproduces the weights.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipcore.synthetic.world import ShapeWorld

log = logging.getLogger(__name__)

ZERO_SHOT_TEMPLATE = "a photo of a {}."
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP statistics, as open_clip defaults
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE = (  # the first two are open_clip's local-dir names
    "open_clip_config.json", "open_clip_model.safetensors", "metrics.json")


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines a pretrained bundle (and therefore its cache key)."""

    model_cfg: dict = field(hash=False)
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    images_per_class: int = 150
    # Indices into the world's caption templates used for training; None = all of them. A model
    # that never saw "a photo of a {}." pairs is weaker zero-shot and leaves room for prompts.
    caption_templates: tuple[int, ...] | None = None
    # Per-channel RGB gains applied to the pretraining images only (None = the world's own
    # colours). A cast gives the model a pretraining domain unlike the world it is evaluated on,
    # as web photos are unlike a downstream dataset: its zero-shot prompts misname colours that
    # its image features still separate, which is the room prompt learning and distillation fill.
    colour_cast: tuple[float, float, float] | None = None
    # Class indices whose pretraining images get the cast (None = every class). A gap that only
    # some classes have is the one a learned prompt can overfit: fitted to the classes it is
    # trained on, the correction then misleads it on classes that never had the gap.
    colour_cast_classes: tuple[int, ...] | None = None
    # Held-out neutral images per class on which the frozen logit scale is refitted after
    # pretraining (0 = keep the learned one). Pretrained under a cast, a student is confidently
    # wrong on neutral images (mean top-1 probability 0.64 at 34% accuracy); real CLIPs are roughly
    # calibrated on the images they are tested on, and prompt learning behaves as on them only then.
    calibration_per_class: int = 0
    world_seed: int = 0
    train_seed: int = 0
    eval_per_class: int = 20

    def cache_key(self) -> str:
        world = ShapeWorld(self.world_seed, self.image_size).params()
        settings = asdict(self)
        if settings["colour_cast_classes"] is None:  # keys of bundles built before the field
            del settings["colour_cast_classes"]
        blob = json.dumps({"settings": settings, "world": world}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def image_size(self) -> int:
        return int(self.model_cfg["vision_cfg"]["image_size"])


def _tokenize_captions(world: ShapeWorld, labels: np.ndarray, seeds: list[int],
                       templates: tuple[int, ...] | None, context_length: int):
    """Unique caption tokens (U, L) and, per image, the indices of its captions (N, T)."""
    vocab: dict[str, int] = {}
    table = []
    for label, seed in zip(labels.tolist(), seeds):
        caps = world.captions(label, seed)
        caps = caps if templates is None else [caps[t] for t in templates]
        table.append([vocab.setdefault(c, len(vocab)) for c in caps])
    tokens = open_clip.tokenize(list(vocab), context_length=context_length)
    return tokens, torch.tensor(table, dtype=torch.long)


def apply_colour_cast(images_u8: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """uint8 (N, H, W, 3) images with each RGB channel scaled by its gain (clipped, rounded)."""
    if len(gains) != 3 or min(gains) < 0:
        raise ValueError(f"colour_cast must be three non-negative RGB gains, got {gains!r}")
    scaled = images_u8.astype(np.float32) * np.asarray(gains, dtype=np.float32)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def cast_classes(images_u8: np.ndarray, labels: np.ndarray, gains: tuple[float, float, float],
                 classes: tuple[int, ...] | None) -> np.ndarray:
    """``images_u8`` with the colour cast applied to the images whose label is in ``classes``
    (every image when ``classes`` is None)."""
    if classes is None:
        return apply_colour_cast(images_u8, gains)
    out = images_u8.copy()
    chosen = np.isin(labels, classes)
    out[chosen] = apply_colour_cast(images_u8[chosen], gains)
    return out


def _to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W)."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP on L2-normalised features (pair i <-> i is the positive)."""
    logits = logit_scale.exp().clamp(max=100.0) * image_features @ text_features.t()
    target = torch.arange(logits.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@torch.no_grad()
def zero_shot_cosines(model: torch.nn.Module, world: ShapeWorld, n_per_class: int, split: str = "test",
                      template: str = ZERO_SHOT_TEMPLATE) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-text cosines (N, C) of ``n_per_class`` images per class of ``split`` against one
    prompt per class name, and the labels (N,)."""
    model.eval()
    text = model.encode_text(open_clip.tokenize([template.format(c) for c in world.classnames],
                                                context_length=model.context_length), normalize=True)
    images, labels = world.render_array(split, n_per_class)
    cosines = torch.cat([model.encode_image(_to_input(torch.from_numpy(images[i:i + 256])), normalize=True)
                         @ text.t() for i in range(0, len(images), 256)])
    return cosines, torch.from_numpy(labels)


def zero_shot_accuracy(model: torch.nn.Module, world: ShapeWorld, n_per_class: int,
                       split: str = "test", template: str = ZERO_SHOT_TEMPLATE) -> float:
    """Top-1 accuracy of ``model`` on ``split`` with one prompt per class name."""
    cosines, labels = zero_shot_cosines(model, world, n_per_class, split, template)
    return int((cosines.argmax(-1) == labels).sum()) / len(labels)


def confidence_matched_scale(cosines: torch.Tensor, labels: torch.Tensor,
                             low: float = 1.0, high: float = 100.0, iterations: int = 60) -> float:
    """The logit scale at which the mean top-1 softmax probability equals the top-1 accuracy.

    ``cosines``: (N, C) image-text cosine similarities. The accuracy does not depend on the scale
    and the mean top-1 probability rises with it, so the match is found by bisection (on the log
    scale, within ``[low, high]``; a bound is returned when the match lies outside them). This is
    global calibration (confidence = accuracy), which here lies within a few percent of the scale
    minimising the 10-bin expected calibration error.
    """
    accuracy = (cosines.argmax(-1) == labels).double().mean()

    def excess_confidence(scale: float) -> float:
        return float((scale * cosines.double()).softmax(-1).max(-1).values.mean() - accuracy)

    lo, hi = math.log(low), math.log(high)
    if excess_confidence(low) >= 0:
        return low
    if excess_confidence(high) <= 0:
        return high
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess_confidence(math.exp(mid)) < 0 else (lo, mid)
    return math.exp(0.5 * (lo + hi))


@torch.no_grad()
def calibrate_logit_scale(model: torch.nn.Module, world: ShapeWorld, n_per_class: int) -> dict:
    """Set ``model.logit_scale`` to the confidence-matched scale on ``n_per_class`` calibration
    images per class (zero-shot prompts); returns what was measured."""
    cosines, labels = zero_shot_cosines(model, world, n_per_class, "calibration")
    learned = float(model.logit_scale.detach().exp())
    scale = confidence_matched_scale(cosines, labels)
    model.logit_scale.fill_(math.log(scale))
    return {"learned_logit_scale": learned, "calibrated_logit_scale": scale,
            "calibration_images": len(labels)}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay only matrices: gains, biases, embeddings' scale and the temperature stay free.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@contextlib.contextmanager
def _torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain_clip(settings: PretrainSettings, *, progress: bool = False, num_threads: int = 1):
    """Train one CLIP from scratch; returns (model, metrics dict).

    One torch thread by default: these matmuls are too small to gain much from a second core,
    while an oversubscribed CPU (tests or other jobs running alongside) made two threads 4-8x
    slower in measurements; a fixed thread count also keeps rebuilds independent of the core count.
    """
    with _torch_threads(num_threads):
        return _pretrain(settings, progress)


def _pretrain(settings: PretrainSettings, progress: bool):
    start, start_cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(settings.train_seed)
    world = ShapeWorld(settings.world_seed, settings.image_size)
    images, labels = world.render_array("pretrain", settings.images_per_class)
    if settings.colour_cast is not None:
        images = cast_classes(images, labels, settings.colour_cast, settings.colour_cast_classes)
    seeds = list(world.instance_seeds("pretrain", settings.images_per_class)) * world.num_classes
    model = open_clip.CLIP(**settings.model_cfg)
    tokens, caption_ids = _tokenize_captions(world, labels, seeds, settings.caption_templates,
                                             model.context_length)
    # Text runs only up to the longest caption: exact under the causal mask, and ~3x cheaper.
    max_len = int((tokens != 0).sum(-1).max())
    tokens = tokens[:, :max_len]
    # The captions use ~60 of the 49408 vocabulary rows; a dense AdamW step over the full table
    # costs about as much as a forward pass, so train a compact table and write its rows back
    # (rows never seen keep their initialisation, exactly as a full-table AdamW would leave them).
    used, compact_tokens = torch.unique(tokens, return_inverse=True)
    compact = torch.nn.Embedding.from_pretrained(model.token_embedding.weight[used].detach(),
                                                 freeze=False)
    model.token_embedding.weight.requires_grad_(False)
    images_t = torch.from_numpy(images)
    optimizer = torch.optim.AdamW(
        _param_groups(model, settings.weight_decay) + [{"params": compact.parameters(),
                                                        "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        t = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(settings.train_seed)
    model.train()
    bar = tqdm(range(settings.steps), desc="pretrain", disable=not progress, leave=False)
    loss = torch.tensor(float("nan"))
    for _ in bar:
        idx = torch.randint(len(images_t), (settings.batch_size,), generator=generator)
        pick = torch.randint(caption_ids.shape[1], (settings.batch_size,), generator=generator)
        rows = caption_ids[idx, pick]
        image_features = model.encode_image(_to_input(images_t[idx]), normalize=True)
        text_features = _encode_text(model, compact(compact_tokens[rows]), tokens[rows])
        loss = clip_loss(image_features, text_features, model.logit_scale)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite pretraining loss {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    with torch.no_grad():
        model.token_embedding.weight[used] = compact.weight
    model.token_embedding.weight.requires_grad_(True)
    train_seconds = time.perf_counter() - start
    # CPU seconds tell a dedicated machine's wall time when this one was shared with other jobs.
    cpu_seconds = time.process_time() - start_cpu
    calibration = (calibrate_logit_scale(model, world, settings.calibration_per_class)
                   if settings.calibration_per_class else {})
    accuracy = zero_shot_accuracy(model, world, settings.eval_per_class)
    metrics = {"zero_shot_top1_test": accuracy, "chance": 1.0 / world.num_classes,
               "zero_shot_template": ZERO_SHOT_TEMPLATE, "final_loss": loss.item(),
               "train_seconds": round(train_seconds, 2), "train_cpu_seconds": round(cpu_seconds, 2),
               "torch_threads": torch.get_num_threads(),
               "num_params": sum(p.numel() for p in model.parameters()),
               "eval_images": settings.eval_per_class * world.num_classes, **calibration}
    log.info("pretrained %s params in %.1fs: zero-shot top-1 %.3f", metrics["num_params"],
             train_seconds, accuracy)
    return model.eval(), metrics


def _encode_text(model: open_clip.CLIP, embeddings: torch.Tensor, tokens: torch.Tensor):
    """``model.encode_text(normalize=True)`` from token embeddings of the first L positions.

    Equal to the full-length result under the causal mask, since the pooled EOT token attends only
    to earlier positions.
    """
    length = tokens.shape[1]
    x = embeddings + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def write_bundle(model: torch.nn.Module, settings: PretrainSettings, metrics: dict,
                 path: Path) -> Path:
    """Write an open_clip ``local-dir:`` bundle (config + safetensors weights) plus metrics.json."""
    from clipcore.bundle import save_local_dir  # lazy: backbone imports this package lazily too

    open_clip.set_model_preprocess_cfg(model, {
        "size": settings.image_size, "mode": "RGB", "mean": IMAGE_MEAN, "std": IMAGE_STD,
        "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0})
    path = save_local_dir(model, settings.model_cfg, path)
    record = dict(metrics, settings=asdict(settings), cache_key=settings.cache_key())
    (path / METRICS_FILE).write_text(json.dumps(record, indent=2))
    return path
