"""Config classes read from source files, without importing the modules that declare them.

A plug-in (a prompt learner, an objective) is one file that declares its own config dataclass
and registers itself with a decorator naming it::

    @dataclass
    class CoOpConfig(ContextConfig):
        class_specific: bool = False

    @register_prompt_learner("coop", config=CoOpConfig)
    class CoOp(PromptLearner): ...

Importing that file imports torch (seconds). Validating a config must not (a typo is reported in
a fraction of a second), so :func:`find_declarations` reads the files with ``ast`` instead: it
finds every class decorated with ``@<decorator>("<name>", config=<Class>)`` and rebuilds the
config class from its annotated fields. Field types are plain type expressions (``int``,
``Optional[str]``, ``list`` ...), defaults are literals or ``field(default_factory=list|dict)``,
and base classes are config classes of the same file, of another plug-in file of the package
(read the same way, e.g. KgCoOp's config extends CoOp's), or of a module that imports no heavy
dependency. A test checks that the rebuilt class equals the real one for every
declaration, so the two cannot drift.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TYPE_NAMES: dict[str, Any] = {name: getattr(typing, name) for name in
                               ("Any", "Optional", "Union", "List", "Dict", "Tuple", "Literal")}
_TYPE_NAMES.update({"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
                    "tuple": tuple, "None": None})


class DeclarationError(TypeError):
    """A plug-in file declares its config in a form that cannot be read statically."""


@dataclass(frozen=True)
class Declaration:
    name: str      # the registry name, e.g. "coop"
    module: str    # the module that declares it, e.g. "kdpl.prompts.coop"
    path: Path
    config: type   # a dataclass with the fields of the module's config class


def package_files(package: str) -> list[Path]:
    """The ``.py`` files of ``package`` (found without running its ``__init__``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {package!r}")
    return sorted(p for folder in spec.submodule_search_locations for p in Path(folder).glob("*.py")
                  if p.name != "__init__.py")


@functools.lru_cache(maxsize=None)
def find_declarations(package: str, decorator: str) -> dict[str, Declaration]:
    """``{name: Declaration}`` of every ``@<decorator>(name, config=...)`` class in ``package``."""
    found: dict[str, Declaration] = {}
    for path in package_files(package):
        tree = ast.parse(path.read_text(), filename=str(path))
        module = f"{package}.{path.stem}"
        classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        for node in classes.values():
            for call in node.decorator_list:
                if not (isinstance(call, ast.Call) and _name(call.func) == decorator):
                    continue
                name, config_name = _registration(call, path)
                if name in found:
                    raise DeclarationError(f"{path}: {decorator}({name!r}) is already declared in "
                                           f"{found[name].path}")
                if config_name not in classes:
                    raise DeclarationError(f"{path}: config class {config_name!r} of {name!r} must be "
                                           f"defined in the same file")
                config = _build(classes[config_name], classes, tree, module, path, {})
                found[name] = Declaration(name, module, path, config)
    return found


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _registration(call: ast.Call, path: Path) -> tuple[str, str]:
    if not call.args or not isinstance(call.args[0], ast.Constant) or not isinstance(call.args[0].value, str):
        raise DeclarationError(f"{path}:{call.lineno}: the registry name must be a string literal")
    config = next((k.value for k in call.keywords if k.arg == "config"), None)
    if not isinstance(config, ast.Name):
        raise DeclarationError(f"{path}:{call.lineno}: pass config=<ConfigClass> to the decorator")
    return call.args[0].value, config.id


def _imported_names(tree: ast.Module) -> dict[str, tuple[str, str]]:
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name)
    return names


def _sibling_file(source: str, module: str):
    """The file of ``source`` when it is a plug-in module of ``module``'s package (its imports
    may be heavy), else None."""
    package, _, _ = module.rpartition(".")
    if source.rpartition(".")[0] != package:
        return None
    candidate = next((f for f in package_files(package) if f.stem == source.rpartition(".")[2]), None)
    return candidate


def _build(node: ast.ClassDef, classes: dict, tree: ast.Module, module: str, path: Path, done: dict) -> type:
    if node.name in done:
        return done[node.name]
    bases = []
    imported = _imported_names(tree)
    for base in node.bases:
        base_name = _name(base)
        if base_name in classes:
            bases.append(_build(classes[base_name], classes, tree, module, path, done))
        elif base_name in imported:
            source, attribute = imported[base_name]
            sibling = _sibling_file(source, module)
            if sibling is not None:  # another plug-in file (CoOpConfig for KgCoOp): read, not imported
                sibling_tree = ast.parse(sibling.read_text(), filename=str(sibling))
                sibling_classes = {n.name: n for n in sibling_tree.body if isinstance(n, ast.ClassDef)}
                if attribute not in sibling_classes:
                    raise DeclarationError(f"{path}:{node.lineno}: {source} defines no class {attribute!r}")
                bases.append(_build(sibling_classes[attribute], sibling_classes, sibling_tree, source, sibling, {}))
            else:
                bases.append(getattr(importlib.import_module(source), attribute))
        else:
            raise DeclarationError(f"{path}:{node.lineno}: base {base_name!r} of {node.name} is neither a "
                                   f"class of this file nor imported with 'from <module> import'")
    fields, class_values = [], {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        annotation = ast.unparse(stmt.annotation)
        if annotation.startswith(("ClassVar", "typing.ClassVar")):
            # Not a field, but what the class says of its fields (e.g. value_ranges): a literal.
            try:
                class_values[stmt.target.id] = ast.literal_eval(stmt.value) if stmt.value is not None else None
            except ValueError as exc:
                raise DeclarationError(f"{path}:{stmt.lineno}: the value of {node.name}.{stmt.target.id} "
                                       f"must be a literal") from exc
            continue
        try:
            kind = eval(annotation, {"__builtins__": {}}, dict(_TYPE_NAMES))  # names above only
        except Exception as exc:
            raise DeclarationError(f"{path}:{stmt.lineno}: type {annotation!r} of {node.name}."
                                   f"{stmt.target.id} is not a plain type expression") from exc
        fields.append((stmt.target.id, kind, _default(stmt, path)))
    built = dataclasses.make_dataclass(node.name, fields, bases=tuple(bases))
    for name, value in class_values.items():
        setattr(built, name, value)
    built.__module__ = module
    built.__doc__ = ast.get_docstring(node)
    done[node.name] = built
    return built


def _default(stmt: ast.AnnAssign, path: Path):
    if stmt.value is None:
        return dataclasses.field()
    value = stmt.value
    if isinstance(value, ast.Call) and _name(value.func) == "field":
        factory = next((k.value for k in value.keywords if k.arg == "default_factory"), None)
        if isinstance(factory, ast.Name) and factory.id in ("list", "dict"):
            return dataclasses.field(default_factory={"list": list, "dict": dict}[factory.id])
        raise DeclarationError(f"{path}:{stmt.lineno}: only field(default_factory=list|dict) is supported")
    try:
        return dataclasses.field(default=ast.literal_eval(value))
    except ValueError as exc:
        raise DeclarationError(f"{path}:{stmt.lineno}: the default of {ast.unparse(stmt.target)} must be "
                               f"a literal") from exc
