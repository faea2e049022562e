"""Config classes read from source (clipcore.declarations) equal the classes the modules define."""
import dataclasses
import typing

import pytest

from clipcore.config_schema import value_ranges
from clipcore.declarations import DeclarationError, find_declarations
from kdpl.config import declared_learners, declared_objectives
from kdpl.objectives.registry import objective_class
from kdpl.prompts.registry import learner_class


def signature(cls) -> list[tuple]:
    """Fields (name, type, default) and the bounds the class declares for them."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.default, f.default_factory) for f in dataclasses.fields(cls)] + [
        ("value_ranges", value_ranges(cls))]


@pytest.mark.parametrize("name", sorted(declared_learners()))
def test_learner_configs_read_from_source_equal_the_real_ones(name):
    assert signature(declared_learners()[name].config) == signature(learner_class(name).config_class)


@pytest.mark.parametrize("name", sorted(declared_objectives()))
def test_objective_configs_read_from_source_equal_the_real_ones(name):
    assert signature(declared_objectives()[name].config) == signature(objective_class(name).config_class)


def test_what_cannot_be_read_statically_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass BadConfig:\n    size: int = compute()\n\n"
        "@register('bad', config=BadConfig)\nclass Bad:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DeclarationError, match=r"bad.py:5: the default of size must be a literal"):
        find_declarations("plugins", "register")


def test_declared_bounds_are_read_from_source():
    assert value_ranges(declared_objectives()["kdpl_ca"].config)["k_max"] == (1, None, True)
