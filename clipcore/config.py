"""Typed run configuration: YAML files merged in order, then ``key=value`` overrides.

The schema is a tree of dataclasses and depends on the method (:mod:`clipcore.config_schema`:
the core sections, and the sections each method family adds). So a key the chosen method does
not read is an error, like a typo, and the message says which methods read it. Every merge is validated: an unknown key
lists the valid keys beside it, a value of the wrong type names the key, and both name the file
or override they came from.

A YAML file may start with ``include: [other.yaml, ...]``; included files (paths relative to the
including file, or to the shipped ``configs/``) are merged first, so experiments compose config
groups. An override's value is read as YAML (``5``, ``null``, ``[a,b]``); a value YAML cannot
read, or one that does not fit a string field (``a photo of: "{}"``), is taken as the text.

This module and the family modules import no torch: configs are checked in a fraction of a second.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from clipcore.config_schema import RunConfig, family_of, method_families, shared_schema, value_ranges
from clipcore.errors import ConfigError
from clipcore.io import atomic_write_text

# Folders of shipped configs: ``-c trainer/cpu.yaml`` and ``include:`` entries are looked up
# there when they are not files. The application registers its own (clipdistill/configs).
_CONFIG_DIRS: list[Path] = []


def register_config_dir(path: Path) -> None:
    path = Path(path).resolve()
    if path not in _CONFIG_DIRS:
        _CONFIG_DIRS.append(path)


def config_dirs() -> list[Path]:
    return list(_CONFIG_DIRS)


def find_config_file(name: str | Path, relative_to: Optional[Path] = None) -> Optional[Path]:
    """``name`` as given (or relative to ``relative_to``), else a shipped config of that name."""
    name = Path(name).expanduser()
    candidates = [relative_to / name] if relative_to is not None else [name]
    if not name.is_absolute():
        candidates += [folder / name for folder in _CONFIG_DIRS]
    return next((c.resolve() for c in candidates if c.is_file()), None)


# -- errors -------------------------------------------------------------------------------------
def _valid_keys(cfg: DictConfig, dotted_parent: str) -> list[str]:
    node = OmegaConf.select(cfg, dotted_parent) if dotted_parent else cfg
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _readers_of(full_key: str, cfg: DictConfig) -> list[str]:
    """The methods (and selector settings) whose schema has ``full_key``, ``cfg``'s excluded; a
    method that reads it under every variant is named once."""
    readers = []
    for family in method_families():
        for other in family.methods():
            variants = family.variants(other)
            reading = []
            for variant in variants:
                try:
                    candidate = shared_schema(other, variant)
                except ConfigError:
                    continue
                if OmegaConf.select(candidate, full_key, default=_MISSING) is _MISSING:
                    continue
                selectors = [f"{k}.{kk}={vv}" for k, v in variant.items() for kk, vv in v.items()]
                if other == cfg.method and all(OmegaConf.select(cfg, s.split("=")[0]) == s.split("=")[1]
                                               for s in selectors):
                    continue
                reading.append(selectors)
            if reading and len(reading) == len(variants) and other != cfg.method:
                readers.append(other)
            else:
                readers += [f"{other} ({', '.join(sel)})" if sel else other for sel in reading]
    return readers


_MISSING = object()


def _explain(exc: OmegaConfBaseException, cfg: DictConfig, source: str, key: Optional[str] = None) -> ConfigError:
    full_key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        parent, _, leaf = full_key.rpartition(".")
        readers = _readers_of(full_key, cfg)
        if readers and key and key.startswith(full_key + "."):
            full_key = key  # name the whole override key, not just its unknown section
        if readers:
            shown = ", ".join(readers[:6]) + (f" and {len(readers) - 6} more" if len(readers) > 6 else "")
            return ConfigError(f"{source}: '{full_key}' is not read by method '{cfg.method}' (it is read by "
                               f"{shown}); remove it for this method")
        valid = ", ".join(_valid_keys(cfg, parent)) or "(none)"
        where = f"under '{parent}'" if parent else "at the top level"
        return ConfigError(f"{source}: unknown config key '{full_key}'. Valid keys {where}: {valid}")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{source}: invalid value for '{full_key}': {str(exc.msg).splitlines()[0]}")
    return ConfigError(f"{source}: {exc}")


# -- reading ------------------------------------------------------------------------------------
@dataclass
class _Piece:
    """One source of config values: a YAML file's mapping, a stored config, or an override."""

    mapping: dict
    source: str
    text: Optional[str] = None  # an override's value as typed (used when YAML misreads it)
    key: Optional[str] = None

    def mapping_leaf(self) -> Any:
        """An override's parsed value."""
        node: Any = self.mapping
        for part in (self.key or "").split("."):
            node = node[part] if part else node
        return node


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[_Piece]:
    """The pieces of a file and its includes, includes first."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"{path}: include cycle ({' -> '.join(map(str, seen + (path,)))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    pieces: list[_Piece] = []
    for inc in includes:
        target = find_config_file(inc, relative_to=path.parent)
        if target is None:
            where = ", ".join(str(d) for d in [path.parent, *_CONFIG_DIRS])
            raise ConfigError(f"{path}: included file '{inc}' not found (looked in {where})")
        pieces.extend(_read_yaml(target, seen + (path,)))
    pieces.append(_Piece(data, str(path)))
    return pieces


def _override_piece(item: str) -> _Piece:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected key=value, e.g. trainer.max_epochs=5")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        value = text  # not YAML (quotes, colons, braces): the text itself
    if isinstance(value, dict) and not text.lstrip().startswith("{"):
        # "a photo of: {}" reads as a YAML mapping; on a command line a mapping is written in
        # braces ({a: 1}) or as dotted keys, so this is text (a template with a colon).
        value = text
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return _Piece(nested, f"override '{item}'", text, key)


def _deep_merge(into: dict, new: Mapping) -> dict:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _apply(cfg: DictConfig, piece: _Piece) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, piece.mapping)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        raise _explain(exc, cfg, piece.source, piece.key) from exc
    except OmegaConfBaseException as exc:
        if piece.text is None or isinstance(piece.mapping_leaf(), str):
            raise _explain(exc, cfg, piece.source) from exc
        # YAML read the text as something else (a mapping for "a: b", a number ...): the field
        # may want the text itself, e.g. a template with a colon.
        nested: Any = piece.text
        for part in reversed(piece.key.split(".")):
            nested = {part: nested}
        try:
            return OmegaConf.merge(cfg, nested)
        except OmegaConfBaseException:
            raise _explain(exc, cfg, piece.source) from exc


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                base: DictConfig | Mapping | None = None) -> DictConfig:
    """Merge YAML ``files`` in order, then ``key=value`` ``overrides``, validating each step.

    ``base`` (default: the schema defaults) is what they are merged onto, e.g. the stored config
    of a checkpoint when ``eval.py`` evaluates it on another split.
    """
    pieces: list[_Piece] = []
    if base is not None:
        plain = OmegaConf.to_container(base, resolve=True) if isinstance(base, DictConfig) else dict(base)
        pieces.append(_Piece(upgrade_stored(plain), "stored config"))
    for file in files:
        found = find_config_file(file)
        if found is None:
            shipped = f" or among the shipped configs ({', '.join(map(str, _CONFIG_DIRS))})" if _CONFIG_DIRS else ""
            raise ConfigError(f"config file not found: {file} (looked for it as a path{shipped})")
        pieces.extend(_read_yaml(found))
    pieces.extend(_override_piece(item) for item in overrides)
    raw: dict = {}
    for piece in pieces:
        _deep_merge(raw, piece.mapping)
    method = raw.get("method", RunConfig.method)
    if not isinstance(method, str):
        raise ConfigError(f"config key 'method' must be a method name, got {method!r}")
    # No copy of the shared schema: OmegaConf.merge copies its first argument.
    cfg = merge_pieces(shared_schema(method, raw), pieces, raw)
    _check_templates(cfg)
    _check_ranges(cfg)
    return cfg


def merge_pieces(cfg: DictConfig, pieces: Sequence[_Piece], combined: Mapping) -> DictConfig:
    """``pieces`` merged onto ``cfg`` in order; ``combined`` is their deep merge (later values
    replace earlier ones, mappings merge key by key, as OmegaConf merges).

    One merge of ``combined`` gives the same config as merging the pieces one by one (tested on
    every shipped config) at a fraction of the cost: each OmegaConf merge copies the whole config
    (so ``cfg`` itself is never modified). Only when it fails are the pieces merged one by one, so
    that the error names the file or override at fault (and an override YAML misreads is retried
    as text)."""
    try:
        return OmegaConf.merge(cfg, combined)
    except OmegaConfBaseException:
        pass
    for piece in pieces:
        cfg = _apply(cfg, piece)
    return cfg


def _check_templates(cfg: DictConfig, prefix: str = "") -> None:
    """Every text under a key named ``*template`` is a prompt template, and ``*templates`` a
    template list or set name: a missing placeholder is reported here, before anything runs."""
    from clipcore.templates import check_template, resolve_templates

    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            _check_templates(value, full + ".")
        elif str(key).endswith("templates") and value is not None:
            plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            resolve_templates(plain, "{}", full)
        elif str(key).endswith("template") and isinstance(value, str):
            check_template(value, full)


def _check_ranges(cfg: DictConfig, prefix: str = "") -> None:
    """Every numeric field lies within the bounds its config class declares
    (:func:`clipcore.config_schema.value_ranges`), in every section and subsection."""
    for field_name, (low, high, low_allowed) in value_ranges(OmegaConf.get_type(cfg)).items():
        value = cfg.get(field_name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        above = value >= low if low_allowed else value > low
        if (low is not None and not above) or (high is not None and value > high):
            lower = f"{'>=' if low_allowed else '>'} {low}" if low is not None else ""
            expected = f"{lower} and <= {high}" if lower and high is not None else lower or f"<= {high}"
            raise ConfigError(f"{prefix}{field_name}={value}: expected a value {expected}")
    for key, node in cfg.items():
        if isinstance(node, DictConfig):
            _check_ranges(node, f"{prefix}{key}.")


def upgrade_stored(plain: Mapping) -> dict:
    """A config stored by an earlier version (a run's config.yaml, a checkpoint, an export),
    in this version's keys: the family moves renamed keys, and sections and data keys the
    method does not read are dropped (earlier versions stored every section for every method)."""
    plain = copy.deepcopy(dict(plain))
    method = plain.get("method", RunConfig.method)
    family = family_of(method)
    plain = family.upgrade(plain)
    reference = shared_schema(method, plain)
    for key in [k for k in plain if k not in reference]:
        del plain[key]
    if isinstance(plain.get("data"), dict):
        plain["data"] = {k: v for k, v in plain["data"].items() if k in reference.data}
    return plain


def read_stored(plain: Mapping) -> dict:
    """A stored config as this version would have written it: upgraded, validated, and with
    the defaults of keys added since (for comparing it with a new command line)."""
    return to_plain(load_config(base=plain))


def to_plain(cfg: DictConfig) -> dict:
    """A resolved plain-dict copy (for checkpoints, exports and loggers)."""
    return OmegaConf.to_container(cfg, resolve=True)


def from_plain(data: Mapping) -> DictConfig:
    """Rebuild a validated config from :func:`to_plain` output (e.g. stored in a checkpoint)."""
    return load_config(base=data)


def save_config(cfg: DictConfig, path: Path) -> None:
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
