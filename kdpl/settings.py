"""A learner's settings from a run config (shared by the method builder and the export loader)."""
from __future__ import annotations

from clipcore.config import to_plain
from clipcore.data.from_config import dataset_template


def learner_settings(cfg) -> dict:
    """The ``prompt`` section; a learner's ``template: null`` is the dataset's template."""
    settings = to_plain(cfg.prompt)
    if "template" in settings and settings["template"] is None:
        settings["template"] = dataset_template(cfg)
    return settings
