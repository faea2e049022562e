"""Prompt templates: the placeholder rule, filling, and the shipped template sets (no torch).

A template holds one placeholder for the class name: ``{}`` (Python's, the CoOp convention) or
``{c}`` (CLIP_benchmark's), e.g. ``a photo of a {}.``. Braces meant literally are doubled
(``{{`` / ``}}``), as in ``str.format``. A template without a placeholder would give every class
the same prompt, so it is refused with the config key that holds it.

Shipped sets (``zeroshot.templates=imagenet80``; ``clipdistill list templates`` shows them):

- ``dataset``: the dataset's own single template (CoOp's per-dataset prompts; the default);
- ``imagenet80``: the 80 prompt-engineering templates of the CLIP paper (OpenAI's
  ``Prompt_Engineering_for_ImageNet`` notebook; open_clip's ``OPENAI_IMAGENET_TEMPLATES``);
- ``cifar18``: the 18 CIFAR-10/100 templates of CLIP's ``data/prompts.md``;
- ``promptsrc60``: the 60 of those 80 that PromptSRC averages for its frozen text features
  (``trainers/imagenet_templates.py`` of muzairkhattak/PromptSRC), order and wording verbatim.
"""
from __future__ import annotations

import string
from collections.abc import Sequence

from clipcore.errors import ConfigError

PLACEHOLDER_HELP = "a class-name placeholder, {} or {c} (e.g. 'a photo of a {}.'; literal braces are doubled: {{ }})"

IMAGENET80_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

CIFAR18_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

PROMPTSRC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)

DATASET_SET = "dataset"
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet80": IMAGENET80_TEMPLATES,
    "cifar18": CIFAR18_TEMPLATES,
    "promptsrc60": PROMPTSRC_TEMPLATES,
}


def _fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # an unmatched brace
        raise ValueError(str(exc)) from None


def check_template(template, key: str) -> str:
    """``template`` if it holds exactly one kind of placeholder, else a ConfigError naming ``key``."""
    if not isinstance(template, str):
        raise ConfigError(f"{key}={template!r}: expected a text with {PLACEHOLDER_HELP}")
    try:
        fields = _fields(template)
    except ValueError as exc:
        raise ConfigError(f"{key}={template!r}: {exc}; expected {PLACEHOLDER_HELP}") from None
    if not fields:
        raise ConfigError(f"{key}={template!r} has no class-name placeholder, so every class would get "
                          f"the same prompt; expected {PLACEHOLDER_HELP}")
    if set(fields) - {"", "c"}:
        odd = sorted(set(fields) - {"", "c"})
        raise ConfigError(f"{key}={template!r}: unknown placeholder(s) {', '.join('{' + f + '}' for f in odd)}; "
                          f"expected {PLACEHOLDER_HELP}")
    if len(set(fields)) > 1:
        raise ConfigError(f"{key}={template!r} mixes {{}} and {{c}}; use one of them")
    return template


def fill(template: str, classname: str) -> str:
    """The prompt of one class: every placeholder replaced by ``classname``."""
    if "c" in _fields(template):
        return template.format(c=classname)
    return template.format(*[classname] * len(_fields(template)))


def resolve_templates(spec, dataset_template: str, key: str) -> list[str]:
    """The template list that ``spec`` names: None or ``dataset`` (the dataset's template), a
    shipped set's name, one template, or a list of templates; each is checked."""
    if spec is None or spec == DATASET_SET:
        return [check_template(dataset_template, "the dataset's template")]
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[spec])
        if not _safe_fields(spec):
            raise ConfigError(f"{key}={spec!r} is neither a template with {PLACEHOLDER_HELP} nor a shipped set "
                              f"({', '.join([DATASET_SET, *TEMPLATE_SETS])})")
        return [check_template(spec, key)]
    if isinstance(spec, Sequence) and not isinstance(spec, (bytes, bytearray)):
        templates = [check_template(t, f"{key}[{i}]") for i, t in enumerate(spec)]
        if not templates:
            raise ConfigError(f"{key}=[]: expected at least one template")
        return templates
    raise ConfigError(f"{key}={spec!r}: expected a template, a list of templates or a set name "
                      f"({', '.join([DATASET_SET, *TEMPLATE_SETS])})")


def _safe_fields(text: str) -> list[str]:
    try:
        return _fields(text)
    except ValueError:
        return ["?"]  # an unmatched brace: let check_template name the problem
