"""YAML composition through ``defaults:`` lists, with the source of every value tracked.

Precedence is list order, later wins:
``configs/default.yaml`` < ``configs/{data,model}/X.yaml`` < ``configs/experiment/Y.yaml``
< environment (``RIGOR__SECTION__KEY``) < ``--set section.key=value`` < sweep overrides.

A ``defaults:`` entry is one of:
- ``/name`` : the file ``<config_root>/name.yaml``, where the config root is the nearest
  ancestor folder of the listing file that holds ``default.yaml``;
- ``rel/path.yaml`` : a file relative to the file that lists it;
- ``{group: name}`` : ``<config_root>/<group>/<name>.yaml`` placed under the key ``group``;
  when a group is selected twice, the later selection replaces the earlier one;
- ``_self_`` : where the file's own body goes (default: last, so the file overrides its
  defaults).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rigor.errors import ConfigError

Origins = dict[tuple[str, ...], str]
KEY_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
_FLOAT_PATTERN = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")
ENV_PREFIX = "RIGOR__"


@dataclass
class Layer:
    """One source of values: a file body, mounted under a group key or at the top."""

    source: str
    body: dict[str, Any]
    group: str | None = None


@dataclass
class Composed:
    """The merged values and, per leaf path, the source that set it last."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: Origins = field(default_factory=dict)

    def merge(self, body: Mapping[str, Any], source: str, prefix: tuple[str, ...] = ()) -> None:
        """Deep-merge ``body`` under ``prefix``; mappings merge, everything else replaces."""
        target = self.values
        for key in prefix:
            target = target.setdefault(key, {})
        _merge_into(target, body, prefix, source, self.origins)

    def set_path(self, path: tuple[str, ...], value: Any, source: str) -> None:
        """Set one dotted path (an override); intermediate sections are created."""
        target = self.values
        for depth, key in enumerate(path[:-1]):
            node = target.setdefault(key, {})
            if not isinstance(node, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(
                    f"{source}: cannot set {'.'.join(path)}: {where} is not a section"
                )
            target = node
        if isinstance(value, dict):
            target[path[-1]] = {}
            _merge_into(target[path[-1]], value, path, source, self.origins)
        else:
            target[path[-1]] = copy.deepcopy(value)
        self.origins[path] = source

    def knows(self, loc: Iterable[Any]) -> bool:
        """Whether some layer set ``loc`` or a section above it."""
        parts = tuple(str(part) for part in loc)
        return any(parts[:end] in self.origins for end in range(len(parts), 0, -1))

    def origin_of(self, loc: Iterable[Any]) -> str:
        """The source of the deepest known prefix of ``loc`` (a pydantic error location)."""
        parts = tuple(str(part) for part in loc)
        for end in range(len(parts), 0, -1):
            if parts[:end] in self.origins:
                return self.origins[parts[:end]]
        return "not set by any config layer"


def _merge_into(
    target: dict[str, Any],
    body: Mapping[str, Any],
    prefix: tuple[str, ...],
    source: str,
    origins: Origins,
) -> None:
    for key, value in body.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value, path, source, origins)
        elif isinstance(value, Mapping):
            target[key] = {}
            _merge_into(target[key], value, path, source, origins)
            origins[path] = source
        else:
            target[key] = copy.deepcopy(value)
            origins[path] = source


def find_config_root(path: Path) -> Path:
    """The nearest ancestor directory of ``path`` that holds ``default.yaml``."""
    for parent in path.resolve().parents:
        if (parent / "default.yaml").is_file():
            return parent
    return path.resolve().parent


def display(path: Path) -> str:
    """A path as users typed it: relative to the working directory when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML file that must hold a mapping (an empty file is an empty mapping)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {display(path)}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{display(path)}:{where}: invalid YAML: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{display(path)}: top level must be a mapping, got {type(data).__name__}"
        )
    return data


def expand_layers(path: Path, root: Path | None, stack: tuple[Path, ...] = ()) -> list[Layer]:
    """Expand ``path`` and its ``defaults:`` into ordered layers (later wins).

    ``/name`` and group entries resolve under ``root`` or, when it is None, under the
    config tree of the file that lists them (see :func:`find_config_root`).
    """
    path = path.resolve()
    here = root or find_config_root(path)
    if path in stack:
        chain = " -> ".join(display(p) for p in (*stack, path))
        raise ConfigError(f"cycle in defaults: {chain}")
    body = read_yaml(path)
    entries = body.pop("defaults", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{display(path)}: defaults must be a list, got {type(entries).__name__}")
    layers: list[Layer] = []
    own = Layer(display(path), body)
    placed_self = False
    for entry in entries:
        if entry == "_self_":
            layers.append(own)
            placed_self = True
        elif isinstance(entry, str):
            target = here / entry[1:] if entry.startswith("/") else path.parent / entry
            if target.suffix not in (".yaml", ".yml"):
                target = target.with_suffix(".yaml")
            layers.extend(expand_layers(target, root, (*stack, path)))
        elif isinstance(entry, dict) and len(entry) == 1:
            group, name = next(iter(entry.items()))
            if not isinstance(group, str) or not isinstance(name, str) or not group.isidentifier():
                raise ConfigError(f"{display(path)}: bad defaults entry {entry!r}")
            group_layers = expand_layers(here / group / f"{name}.yaml", root, (*stack, path))
            layers = [layer for layer in layers if layer.group != group]
            layers.extend(Layer(layer.source, layer.body, group) for layer in group_layers)
        else:
            raise ConfigError(
                f"{display(path)}: bad defaults entry {entry!r} "
                "(expected '/name', 'relative.yaml', '_self_' or {group: name})"
            )
    if not placed_self:
        layers.append(own)
    return layers


def compose_files(path: Path, root: Path | None = None) -> Composed:
    """Merge ``path`` with everything its ``defaults:`` lists, in precedence order."""
    composed = Composed()
    for layer in expand_layers(path, root):
        prefix = (layer.group,) if layer.group else ()
        composed.merge(layer.body, layer.source, prefix)
    return composed


def parse_value(text: str) -> Any:
    """Parse an override value as YAML; ``3e-4`` is a float even though YAML 1.1 disagrees."""
    if _FLOAT_PATTERN.match(text.strip()):
        return float(text)
    return yaml.safe_load(text)


def parse_set(item: str) -> tuple[tuple[str, ...], Any]:
    """Parse one ``--set section.key=value``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not KEY_PATTERN.match(key):
        raise ConfigError(
            f"malformed override --set {item!r}: expected section.key=value "
            "with a dotted lower-case key"
        )
    try:
        value = parse_value(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed override --set {item!r}: value is not valid YAML") from err
    return tuple(key.split(".")), value


def parse_env(environ: Mapping[str, str]) -> list[tuple[str, tuple[str, ...], Any]]:
    """Collect ``RIGOR__SECTION__KEY=value`` variables as (name, path, value), sorted."""
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if not parts or not KEY_PATTERN.match(".".join(parts)):
            raise ConfigError(
                f"malformed environment override {name}: expected RIGOR__SECTION__KEY"
            )
        try:
            value = parse_value(environ[name])
        except yaml.YAMLError as err:
            raise ConfigError(
                f"malformed environment override {name}: value is not valid YAML"
            ) from err
        found.append((name, parts, value))
    return found
