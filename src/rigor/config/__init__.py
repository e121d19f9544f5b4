"""Config system: compose YAML, apply overrides, validate all at once, emit the schema."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rigor.config.compose import Composed, compose_files, display, parse_env, parse_set
from rigor.config.models import Config
from rigor.errors import ConfigError
from rigor.io import sha256_json

__all__ = ["Config", "ResolvedConfig", "load_config", "config_json_schema", "config_hash"]

# Settings that say where a run is written or mirrored, not what it computes: left out of
# the hash.
_HASH_EXCLUDED = (("run", "output_root"), ("logging", "mlflow"))


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated config and how it came to be."""

    config: Config
    raw: dict[str, Any]
    sources: list[str]
    config_file: str
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)  # key -> layer

    @property
    def resolved(self) -> dict[str, Any]:
        """The validated config as plain JSON-able data."""
        return self.config.model_dump(mode="json")

    @property
    def hash(self) -> str:
        """sha256 of the resolved config without where it is written or mirrored."""
        return config_hash(self.resolved)


def config_hash(resolved: Mapping[str, Any]) -> str:
    """sha256 of a resolved config dict, ignoring where the run is written or mirrored."""
    data = copy.deepcopy(dict(resolved))
    for path in _HASH_EXCLUDED:
        node = data
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return sha256_json(data)


def load_config(
    path: str | Path,
    sets: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    sweep: Mapping[str, Any] | None = None,
    config_root: str | Path | None = None,
) -> ResolvedConfig:
    """Compose ``path``, apply env, ``--set`` and sweep overrides, and validate.

    Args:
        path: the experiment (or any) YAML file.
        sets: ``section.key=value`` strings, applied in order.
        environ: environment to read ``RIGOR__*`` overrides from (default: ``os.environ``).
        sweep: dotted-key overrides from a sweep, applied last.
        config_root: where ``/name`` and ``{group: name}`` entries resolve; default: the
            nearest ancestor of ``path`` holding ``default.yaml``.

    Raises:
        ConfigError: with every problem found, each naming the field and its source.
    """
    path = Path(path)
    composed = compose_files(path, Path(config_root) if config_root else None)
    raw = copy.deepcopy(composed.values)
    sources = sorted(set(composed.origins.values()))
    environ = os.environ if environ is None else environ
    for name, key, value in parse_env(environ):
        composed.set_path(key, value, f"environment variable {name}")
    for item in sets:
        key, value = parse_set(item)
        composed.set_path(key, value, f"override --set {item}")
    for dotted, value in (sweep or {}).items():
        composed.set_path(tuple(dotted.split(".")), value, f"sweep override {dotted}={value!r}")
    config = validate(composed, display(path))
    return ResolvedConfig(config, raw, sources, display(path), dict(composed.origins))


def validate(composed: Composed, label: str) -> Config:
    """Validate composed values; every error names its field path and source."""
    try:
        return Config.model_validate(composed.values)
    except ValidationError as err:
        lines = [_describe(error, composed) for error in err.errors()]
        count = len(lines)
        header = f"invalid config {label} ({count} error{'s' if count > 1 else ''}):"
        raise ConfigError("\n  - ".join([header, *lines])) from None


def _describe(error: Any, composed: Composed) -> str:
    loc = [str(part) for part in error["loc"]]
    field = ".".join(loc) or "<top level>"
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key" + _did_you_mean(loc)
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = error["msg"]
        if "input" in error and not isinstance(error["input"], dict):
            message += f" (got {error['input']!r})"
    if loc:
        return f"{field}: {message} [from {composed.origin_of(loc)}]"
    # a check across fields: name where each field it mentions came from
    keys = dict.fromkeys(re.findall(r"\b[a-z_]+(?:\.[a-z0-9_]+)+\b", message))
    known = [key for key in keys if composed.knows(key.split("."))]
    origins = "; ".join(f"{key} from {composed.origin_of(key.split('.'))}" for key in known)
    return f"{field}: {message}" + (f" [{origins}]" if origins else "")


def _did_you_mean(loc: list[str]) -> str:
    """``; did you mean training.lr?`` for a misspelt key, from the keys of its section."""
    import difflib

    section: Any = Config
    for part in loc[:-1]:
        fields = getattr(section, "model_fields", {})
        if part not in fields:
            return ""
        annotation = fields[part].annotation
        choices = [annotation, *getattr(annotation, "__args__", ())]
        section = next((c for c in choices if hasattr(c, "model_fields")), None)
        if section is None:
            return ""
    close = difflib.get_close_matches(loc[-1], list(getattr(section, "model_fields", {})), n=1)
    return f"; did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else ""


def config_lines(resolved: ResolvedConfig) -> list[str]:
    """The resolved config as ``key: value  # layer`` lines, one per leaf, in order."""
    lines: list[str] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, (*path, str(key)))
            return
        layer = next(
            (
                resolved.origins[path[:end]]
                for end in range(len(path), 0, -1)
                if path[:end] in resolved.origins
            ),
            "configs/default.yaml",
        )
        lines.append(f"{'.'.join(path)}: {json.dumps(node)}  # {layer}")

    walk(resolved.resolved, ())
    return lines


DEFAULTS = Path(__file__).resolve().parents[3] / "configs" / "default.yaml"


def run_config(resolved: Mapping[str, Any]) -> tuple[Config, list[str]]:
    """A finished run's resolved config, and the keys it lacks because they were added to
    rigor after the run was made: those take their values from ``configs/default.yaml`` (a
    stage says so), so an older run can still be evaluated, explained and exported. Any other
    validation error is raised as it is."""
    try:
        return Config.model_validate(resolved), []
    except ValidationError as err:
        errors = err.errors()
        if any(error["type"] != "missing" for error in errors) or not DEFAULTS.is_file():
            raise
    import yaml

    defaults = yaml.safe_load(DEFAULTS.read_text())
    filled = copy.deepcopy(dict(resolved))
    added = []
    for error in errors:
        node, source = filled, defaults
        *parents, last = [str(part) for part in error["loc"]]
        for part in parents:
            node, source = node[part], source[part]
        node[last] = copy.deepcopy(source[last])
        added.append(".".join([*parents, last]))
    return Config.model_validate(filled), added


def config_from_run(run_dir: Path, sets: Sequence[str] = ()) -> ResolvedConfig:
    """A finished run's resolved config (keys added since filled from the defaults, as
    :func:`run_config` does) with ``--set`` overrides applied: the config of a later run
    that starts from this one (the probe of a trained encoder, say).

    Raises:
        ConfigError: naming each invalid field and the override it came from.
    """
    label = f"{run_dir.name}/config_resolved.json"
    values = json.loads((run_dir / "config_resolved.json").read_text())
    raw = copy.deepcopy(values)
    for item in sets:
        key, value = parse_set(item)
        node = values
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    try:
        config, _ = run_config(values)
    except ValidationError as err:
        lines = [
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']} [from {label} and --set]"
            for error in err.errors()
        ]
        raise ConfigError(
            "\n  - ".join([f"invalid config {label} with overrides:", *lines])
        ) from None
    return ResolvedConfig(config=config, raw=raw, sources=[label, *sets], config_file=label)


SectionT = TypeVar("SectionT", bound=BaseModel)


def _merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, nested sections merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(
    section: SectionT,
    overrides: Mapping[str, Any] | None,
    prefix: str,
    source: str = "the command line",
) -> SectionT:
    """``section`` with ``overrides`` applied through the model's own validation (never
    ``model_copy(update=...)``, which skips it): every way a value enters is checked alike.

    Raises:
        ConfigError: naming each invalid field as ``<prefix>.<field>`` and its source.
    """
    if not overrides:
        return section
    try:
        return type(section).model_validate(_merged(section.model_dump(), overrides))
    except ValidationError as err:
        lines = []
        for error in err.errors():
            field = ".".join([prefix, *(str(part) for part in error["loc"])])
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            given = f" (got {error['input']!r})" if "input" in error else ""
            lines.append(f"{field}: {message}{given} [from {source}]")
        count = len(lines)
        header = f"invalid {prefix} options ({count} error{'s' if count > 1 else ''}):"
        raise ConfigError("\n  - ".join([header, *lines])) from None


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of :class:`Config`."""
    schema = Config.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://rigor.local/schema/config.schema.json",
        **schema,
    }


def render_config_schema() -> str:
    """The committed text of ``schema/config.schema.json``."""
    return json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"
