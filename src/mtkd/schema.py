"""The one schema layer: the base of every model of a YAML mapping mtkd reads (the run config, task
definitions), the YAML loader they are read with, and the one translation of a validation error into
a ConfigError naming the key path and the value, with the closest key or value suggested. A config
names keys as dotted paths (`cfg.yaml.mtl.batch_size: expected an integer, got str 'big'`, `cfg.yaml:
mtl.lr must be a positive number, got -1.0`), a task definition by task, split and field
(`tasks.yaml: task 'Mine', split 'dev', field 'format': 'xml' is not one of [...]`).
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from mtkd.errors import ConfigError, did_you_mean, unknown_key

M = TypeVar("M", bound=BaseModel)


class Schema(BaseModel):
    """A YAML mapping: unknown keys are refused, and values are not coerced (a string is not a
    number, 1.5 is not an integer, 'yes' is not true; an integer is a number); NaN and infinity are
    refused. Defaults stay as written (`epochs: float = 5` stays the integer 5)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Partial(Schema):
    """A mapping saved as it was written: only the keys given (kd.candidates, kd.unlabeled, ...)."""

    @model_serializer(mode="wrap")
    def _given_keys_only(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


def refuse(message: str, at: tuple = (), **ctx) -> PydanticCustomError:
    """A rule's refusal, raised in a validator; `at`: the key below the model it is about; with
    `key` and `allowed`: that key is unknown."""
    return PydanticCustomError("rule", "{message}", {"message": message, "at": at, **ctx})


# ------------------------------------------------------------------------------ validation error -> ConfigError
_TYPES = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}
_OUT_OF_RANGE = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
    "string_pattern_mismatch",
    "string_too_short",
    "too_short",
}


def from_dict(model: type[M], raw, where: str = "config", task_style: bool = False) -> M:
    """`raw` (a YAML mapping) validated into `model`; a refusal is a ConfigError naming `where`, the
    key path and the value (`task_style`: in the dialect of task definitions)."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:  # one message: an unknown key first, else the first error
        err = min(e.errors(), key=lambda x: x["type"] != "extra_forbidden" and "allowed" not in x.get("ctx", {}))
        raise _config_error(err, model, where, task_style) from None


def _config_error(err: dict, model: type[BaseModel], where: str, task_style: bool) -> ConfigError:
    kind, value, ctx = err["type"], err["input"], err.get("ctx") or {}
    loc = tuple(err["loc"]) + tuple(ctx.get("at", ()))
    steps, info, tp = _walk(model, loc)

    def at(n: int) -> str:  # `where` and the path of loc's first n items
        return where + _path(steps[:n], task_style)

    if loc and loc[-1] == "[key]" and _values(tp):  # a mapping's key that is not one of its allowed keys
        return unknown_key(at(len(loc) - 2), loc[-2], _values(tp))
    if loc and loc[-1] == "[key]":
        return ConfigError(
            f"{at(len(loc) - 2)}: key {value!r}: expected {_TYPES.get(kind, 'another key')}, got {type(value).__name__}"
        )
    if kind == "extra_forbidden":
        owner = _walk(model, loc[:-1])[2]
        return unknown_key(at(len(loc) - 1), loc[-1], [k for k, f in owner.model_fields.items() if not f.exclude])
    if "allowed" in ctx:
        return unknown_key(at(len(loc)), ctx["key"], ctx["allowed"])
    if kind == "missing":
        return ConfigError(f"{at(len(loc) - 1)}: missing required key {loc[-1]!r}")
    if kind in ("enum", "literal_error"):
        values = _values(tp)
        return ConfigError(f"{at(len(loc))}: {value!r} is not one of {values}{did_you_mean(value, values)}")
    # a config names a value's key after the file ('cfg.yaml: mtl.lr must be ...'), a task definition within it
    dotted = _path(steps, False).lstrip(".")
    value_at = at(len(loc)) if task_style else f"{where}: {dotted}" if dotted else where
    if kind == "rule":
        return ConfigError(f"{value_at}: {ctx['message']}")
    shown = float(value) if tp is float and isinstance(value, int) and not isinstance(value, bool) else value
    if kind in _OUT_OF_RANGE or (task_style and info is not None and _bounds(info)):
        expected = _expected(info, tp)
        return ConfigError(
            f"{value_at}: expected {expected}, got {shown!r}"
            if task_style
            else f"{value_at} must be {expected}, got {shown!r}"
        )
    return ConfigError(
        f"{at(len(loc))}: expected {_TYPES.get(kind, err['msg'].lower())}, got {type(value).__name__} {value!r}"
    )


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[tuple[Any, str]], FieldInfo | None, Any]:
    """Follow `loc` from `model` through the types: each item with what it is ('field', 'key', 'index'
    or 'tag': the kind of a tagged union's member), the last field passed, and the type reached."""
    tp, info, steps = model, None, []
    for i, item in enumerate(loc):
        tp = _strip(tp)
        origin = get_origin(tp)
        if item == "[key]":  # the key itself: the type stays the mapping's key type
            step = "key"
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and item in tp.model_fields:
            info, step = tp.model_fields[item], "field"
            tp = info.annotation
        elif origin in (Union, UnionType):
            tp, step = next((a for a in get_args(tp) if item in _tags(a)), Any), "tag"
        elif origin is dict:
            tp, step = get_args(tp)[0 if loc[i + 1 : i + 2] == ("[key]",) else 1], "key"
        elif origin in (list, tuple):
            tp, step = get_args(tp)[0], "index"
        else:
            tp, step = Any, "key"
        steps.append((item, step))
    return steps, info, _strip(tp)


def _strip(tp):
    """The type inside Annotated[...] and Optional[...] (a tagged union stays a union)."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType) and len([a for a in get_args(tp) if a is not type(None)]) == 1:
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _tags(tp) -> list:
    return [m.tag for m in getattr(tp, "__metadata__", ()) if hasattr(m, "tag")]


def _values(tp) -> list:
    """The values an Enum or Literal type allows."""
    return [e.value for e in tp] if isinstance(tp, type) and issubclass(tp, Enum) else list(get_args(tp))


def _path(steps, task_style: bool) -> str:
    """A config's dotted path ('.mtl.batch_size', '.stages[1]'), or a task definition's (", split 'dev',
    field 'format'"); a tag ends a path as ' (from_train)' and is left out inside one."""
    out = ""
    for i, (item, step) in enumerate(steps):
        last = i == len(steps) - 1
        if item == "[key]" or not last and (step == "tag" or task_style and (item, step) == ("splits", "field")):
            continue  # a task definition's split is named by the split
        if step == "tag":
            out += f" ({item})"
        elif step == "index":
            out += f"[{item}]"
        elif task_style and step == "key" and steps[i - 1] == ("splits", "field"):
            out += f", split {item!r}"
        else:
            out += f", field {item!r}" if task_style and step == "field" else f".{item}"
    return out


def _bounds(info: FieldInfo) -> dict[str, float]:
    return {k: getattr(m, k) for m in info.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}


def _expected(info: FieldInfo | None, tp) -> str:
    """What a value must be, from its field's description, else from its type and bounds."""
    if info is not None and info.description:
        return info.description
    bound = _bounds(info) if info is not None else {}
    if tp is int:
        return "a positive integer" if bound.get("ge") == 1 else f"an integer >= {bound.get('ge', 0)}"
    low, low_open = bound.get("gt", bound.get("ge")), "gt" in bound
    if low is None:
        return "a finite number"
    if "lt" not in bound and "le" not in bound:
        return "a positive number" if low_open and low == 0 else f"a number >= {low:g}"
    high = bound.get("lt", bound.get("le"))
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if 'lt' in bound else ']'}"


# ------------------------------------------------------------------------------ YAML
class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with floats as YAML 1.2 reads them: `1e-4` and `5e-5` are numbers
    (PyYAML, on YAML 1.1, reads them as strings unless written `1.0e-4`)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_yaml(text: str):
    """A config file's, a tasks file's or a --set value's YAML."""
    return yaml.load(text, Loader=_Yaml12Loader)


def read_yaml_mapping(path: Path, what: str, mapping: str) -> dict:
    """A user's YAML file (a config, a tasks_file) that must hold a mapping; {} when empty. Errors
    name the file: missing ("<what> '<path>' does not exist"), invalid YAML, not a mapping."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected {mapping}")
    return raw


def to_dict(obj) -> Any:
    """The YAML form of a model (or a list of them): mappings, lists and values as given (an integer
    stays an integer: stage identities hash these), enums as their values."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
