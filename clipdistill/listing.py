"""``clipdistill list``: what the tool knows about.

    clipdistill list methods       the methods (method=...) and the objectives of the prompt learners
    clipdistill list datasets      classification (data.name=...) and GCD datasets, with their layouts
    clipdistill list models        open_clip models and pretrained tags (student.name / teacher.name)
    clipdistill list templates     the shipped template sets (zeroshot.templates=<set>)
    clipdistill list configs       the shipped configs that -c accepts by name
"""
from __future__ import annotations

import argparse
import sys

WHAT = ("methods", "datasets", "models", "templates", "configs")


def list_methods() -> list[str]:
    from clipcore.config_schema import family_of
    from clipcore.registry import list_methods as registered
    from kdpl.config import declared_objectives

    lines = []
    for method in registered():
        lines.append(f"{method:<12} ({family_of(method).name})")
    lines.append("")
    lines.append("objectives of the prompt learners (objective.name=...): " + ", ".join(sorted(declared_objectives())))
    return lines


def list_datasets() -> list[str]:
    from clipcore.data import get_dataset
    from clipcore.data import list_datasets as classification
    from gcd.dataset_registry import get_gcd_dataset, list_gcd_datasets

    lines = ["classification (zero-shot and the prompt learners):"]
    for name in classification():
        info = get_dataset(name)
        lines.append(f"  {name:<16} template {info.template!r}\n  {'':<16} layout   {info.layout}")
    lines.append("GCD (spectralgcd, simgcd):")
    for name in list_gcd_datasets():
        lines.append(f"  {name:<16} {get_gcd_dataset(name).layout}")
    return lines


def list_models() -> list[str]:
    import open_clip

    from clipcore.backbone import text_tower_kind

    lines = ["open_clip models: name (tags); '*' = a teacher or zero-shot model only (no OpenAI-style text "
             "tower for prompt learning). Any name also loads random weights with pretrained=null."]
    for name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name)
        cfg = open_clip.get_model_config(name) or {}
        mark = "*" if text_tower_kind(cfg) else " "
        lines.append(f"{mark} {name}" + (f"  ({', '.join(tags)})" if tags else ""))
    lines.append("Also: local-dir:/path/to/bundle, a weights file as pretrained=, or config=<arch.json>.")
    return lines


def list_templates() -> list[str]:
    from clipcore.templates import DATASET_SET, TEMPLATE_SETS

    lines = [f"{DATASET_SET:<12} 1 template: the dataset's own (data.template, else the registered one)"]
    for name, templates in TEMPLATE_SETS.items():
        lines.append(f"{name:<12} {len(templates)} templates, e.g. {templates[0]!r}, {templates[-1]!r}")
    lines.append("Or a list: zeroshot.templates='[\"a photo of a {}.\",\"a drawing of a {c}.\"]'")
    return lines


def list_configs() -> list[str]:
    from clipdistill.app import CONFIG_DIR

    return [str(p.relative_to(CONFIG_DIR)) for p in sorted(CONFIG_DIR.glob("*/*.yaml"))]


def main(argv: list[str] | None = None, prog: str = "clipdistill list") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=WHAT)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from clipdistill.app import register_config_sections, register_methods

    register_config_sections()
    if args.what in ("methods", "datasets"):
        register_methods()
    lines = {"methods": list_methods, "datasets": list_datasets, "models": list_models,
             "templates": list_templates, "configs": list_configs}[args.what]()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
