"""Typed YAML: build nested dataclasses from parsed YAML, checking every key and value.

Generic machinery behind config.py. Unknown keys fail with the closest valid name, values
are checked against the annotations (with the conversions YAML makes necessary, such as
`1e-5` read as a string) and against range metadata on the fields (`min`, `max`, `gt`);
every error names the source file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from kidwhisper.errors import UserError


class ConfigError(UserError, ValueError):
    """An invalid config: the message names the file and the key."""


# Names that become folders the tool creates and may later replace (runs, experiments,
# archives): never `..`, `.`, a path or a hidden name. files.check_plain_name applies it to
# command-line names; here it checks output.name (the submission ships this module).
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def plain_name_problem(name: object) -> str | None:
    """Why `name` is not a plain name, or None when it is one."""
    if isinstance(name, str) and PLAIN_NAME.fullmatch(name):
        return None
    return (
        f"{name!r} is not a plain name: use letters, digits, '.', '_' and '-', not starting "
        "with a dot (e.g. baseline_001)"
    )


def fail(source: str, key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{source}: {key}: {message}")


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is ambiguous."""
    if tp is Any:  # checked where it is used (training.soup_members: a member's config)
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        mapping = [a for a in inner if typing.get_origin(a) is dict]
        if mapping and isinstance(value, dict):
            return _coerce(value, mapping[0], source, key)
        try:
            return _coerce(value, inner[0], source, key)
        except ConfigError as err:
            raise ConfigError(f"{err}{'; or a mapping' if mapping else ''}") from None
    if dataclasses.is_dataclass(tp):  # a section inside a mapping (data.source_augment)
        return build(tp, value or {}, source, f"{key}.")
    if origin is dict:
        if not isinstance(value, dict):
            fail(source, key, f"must be a mapping, got {value!r}")
        return {
            _coerce(k, args[0], source, key): _coerce(v, args[1], source, f"{key}.{k}")
            for k, v in value.items()
        }
    if origin is Literal:
        if value not in args:
            fail(source, key, f"must be one of {list(args)}, got {value!r}{hint(value, args)}")
        return value
    if origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            fail(source, key, f"must be a list, got {value!r}")
        return [_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(items)]
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads `1e-5` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # e.g. `audio_context: 10`
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        fail(source, key, f"must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def hint(word: Any, choices: typing.Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_range(value: Any, meta: typing.Mapping, source: str, key: str) -> None:
    if isinstance(value, list):
        if meta.get("pair") and (len(value) != 2 or value[0] > value[1]):
            fail(source, key, f"must be [low, high] with low <= high, got {value}")
        for i, item in enumerate(value):
            _check_range(item, meta, source, f"{key}[{i}]")
        return
    if value is None:
        return
    if "min" in meta and value < meta["min"]:
        fail(source, key, f"must be >= {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        fail(source, key, f"must be <= {meta['max']}, got {value}")
    if "gt" in meta and value <= meta["gt"]:
        fail(source, key, f"must be > {meta['gt']}, got {value}")


def build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        fail(source, prefix.rstrip(".") or "<top level>", f"must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            fail(source, f"{prefix}{key}", f"unknown key{hint(key, fields)}")
    kwargs = {}
    for name, value in data.items():
        key, tp = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value or {}, source, f"{key}.")
        else:
            kwargs[name] = _coerce(value, tp, source, key)
            _check_range(kwargs[name], fields[name].metadata, source, key)
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply one `section.key=value` override (value parsed as YAML) to raw config data."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected section.key=value")
    dotted, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:  # a syntax error, or a tag such as !!python/object
        raise ConfigError(
            f"override {override!r}: {dotted.strip()}: not a plain YAML value "
            f"({yaml_problem(err)}); quote it, e.g. {dotted.strip()}='\"...\"'"
        ) from None
    set_key(data, dotted.strip(), value, f"override {override!r}")


def set_key(data: dict, dotted: str, value: Any, what: str) -> None:
    """Set `section.key` in raw config data to `value`; `what` names it in errors."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: {part} is not a section")
    node[leaf] = value


def read_config(path: str | Path | None, overrides: typing.Sequence[str]) -> tuple[Any, str]:
    """A config's raw data (the file, then the `section.key=value` overrides) and the
    source its errors name: the file, and the overrides when there are any."""
    source = str(path) if path else "<defaults>"
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data = read_yaml_file(path)
    if not isinstance(data, dict):
        fail(source, "<top level>", f"must be a mapping, got {data!r}")
    for override in overrides:
        apply_override(data, override)
    if overrides:
        source += f" (with overrides {' '.join(overrides)})"
    return data, source


def read_yaml_file(path: Path) -> Any:
    """A config file's YAML; not UTF-8 or not YAML is one line naming the line to fix."""
    raw = path.read_bytes()
    try:
        return yaml.safe_load(raw.decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 ({err.reason} at byte {err.start}); "
            "save the file as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML spreads it over several)."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err)
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + " ".join(str(problem).split())
