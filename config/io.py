"""TOML in, validated Pydantic model out; `--set a.b=value` overrides; TOML back out.

Every error becomes an `InputError` whose one-line message names the file and the dotted
field path, so each entry point reports bad configs the same way.
"""

from __future__ import annotations

import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from diffusionlm.errors import InputError
from diffusionlm.utils.atomic import atomic_write_text
from diffusionlm.utils.files import read_user_text

ModelT = TypeVar("ModelT", bound=BaseModel)


def resource_path(name: str) -> Path:
    """Path of a shipped config, e.g. `resource_path("train.toml")` -> config/resources/train.toml."""
    return Path(str(resources.files("config") / "resources" / name))


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is an `InputError`."""
    text = read_user_text(path, "config")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: invalid TOML: {err}") from None


def _parse_override_value(raw: str) -> Any:
    """Read an override value as a TOML value (3e-4, true, [0.9, 0.95], "x"); bare words stay
    strings, except `null`, which TOML lacks: it unsets an optional field (`data.val_split=null`).
    The string "null" is still reachable quoted (`'"null"'`)."""
    if raw == "null":
        return None
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class behind a field annotation (`Sub`, `Sub | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def apply_override(data: dict[str, Any], schema: type[BaseModel], override: str) -> None:
    """Apply one `a.b.c=value` override to the raw config dict, checking the key path exists."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {override!r}: expected KEY=VALUE, e.g. --set optimizer.max_learning_rate=3e-4")
    parts = key.split(".")
    model: type[BaseModel] | None = schema
    node = data
    for depth, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise InputError(f"--set {key}: no key {part!r} in {where} of {schema.__name__}")
        if depth == len(parts) - 1:
            node[part] = _parse_override_value(raw.strip())
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"--set {key}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
        model = _submodel(model.model_fields[part].annotation)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: `source: field.path: message` for the first error, counting the rest."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] != "missing" and not isinstance(first.get("input"), dict):
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    return f"{source}: {loc}: {msg}" + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def validate_config(schema: type[ModelT], data: dict[str, Any], source: str) -> ModelT:
    """Validate a raw dict against `schema`, turning a ValidationError into a one-line `InputError`."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(err, source)) from None


def load_config(schema: type[ModelT], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ModelT:
    """Read `path`, apply `--set` overrides, validate against `schema`."""
    data = read_toml(path)
    for override in overrides:
        apply_override(data, schema, override)
    return validate_config(schema, data, str(path))


def dump_config(config: BaseModel) -> str:
    """The resolved config as TOML (paths become strings; unset optional fields are left out)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))


def write_config(config: BaseModel, path: str | Path) -> None:
    """Write the resolved config atomically (the run directory's `config.toml`)."""
    atomic_write_text(path, dump_config(config))
