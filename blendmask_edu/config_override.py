"""The command line's config overrides: ``override(cfg, "solver.base_lr", "0.01")``.

The typed parsing of ``--section.key value`` texts into a :class:`~blendmask_edu.config.Config`
(the one parser of the command line's values) is written here rather than taken from a library
such as ``dacite``: the messages name the section and the known keys, a bool is not an int, and
a string is never read as a list of characters.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any, Sequence, Union

from blendmask_edu.config import Config, _coerce

__all__ = ["override"]


def _field_type(cfg: Config, key: str):
    """The annotated type of the field at the dotted ``key``; ValueError naming the known keys
    at the level where ``key`` went wrong."""
    parts, node = key.split("."), cfg
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        where = ".".join(parts[:depth])
        if part not in names:
            known = ", ".join(f"{where}.{n}" if where else n for n in names)
            raise ValueError(f"{key}: unknown config key; known {'keys of ' + where if where else 'keys'}: "
                             f"{known}")
        value = getattr(node, part)
        if depth < len(parts) - 1:
            if not dataclasses.is_dataclass(value):
                raise ValueError(f"{key}: unknown config key; {'.'.join(parts[:depth + 1])} is a "
                                 f"value, not a section")
            node = value
        elif dataclasses.is_dataclass(value):
            first = dataclasses.fields(value)[0].name
            raise ValueError(f"{key} is a config section; set one of its keys, e.g. {key}.{first}")
    return typing.get_type_hints(type(node))[parts[-1]]


def _fits(tp, value) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (the types configs use)."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return any(_fits(arg, value) for arg in typing.get_args(tp))
    if origin is tuple:
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return isinstance(value, tuple) and all(_fits(inner, v) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True


def _type_name(tp) -> str:
    """``Optional[float]`` → "float or null", ``Tuple[int, ...]`` → "a list of int, e.g. 1,2"."""
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if typing.get_origin(tp) is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        inner = args[0] if args else None
        example = "a,b" if inner is str else "1,2 or 1 2"
        return f"a list of {_type_name(inner) if inner else 'values'}, e.g. {example} or [...]"
    return getattr(tp, "__name__", str(tp))


def _element_type(tp):
    """The element type of a list field (``Tuple[int, ...]`` → int, through Optional), or None
    for a field that holds one value."""
    if typing.get_origin(tp) is Union:
        inner = [_element_type(a) for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else None
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return args[0] if args else Any
    return None


def _parse_one(tp, text: str):
    """One command-line text as a value of type ``tp``: JSON if it reads as JSON and fits,
    else the text itself (``"3"`` for a text field stays text). May not fit ``tp``."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    try:
        coerced = _coerce(tp, parsed)
    except (TypeError, ValueError):
        coerced = parsed
    return text if not _fits(tp, coerced) and _fits(tp, text) else coerced


def _parse_list(tp, inner, text: str):
    """One text for a list field: JSON (``[320, 352]``, ``null``), or the elements separated by
    commas — and, for numbers, by spaces too (``320,352``, ``"320 352"``, ``320``). Names are
    split at commas only: ``traffic light`` is one name."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    if parsed is None or isinstance(parsed, list):
        return _parse_one(tp, text)
    separators = r"," if inner is str else r"[,\s]+"
    parts = [part.strip() for part in re.split(separators, text.strip())]
    return tuple(_parse_one(inner, part) for part in parts if part)


def _replace(cfg, parts, value):
    """``cfg`` with the field at the key ``parts`` (["solver", "base_lr"]) set, sections copied."""
    head, rest = parts[0], parts[1:]
    if rest:
        return dataclasses.replace(cfg, **{head: _replace(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: value})


def override(cfg: Config, key: str, value: Union[str, Sequence[str]]) -> Config:
    """``override(cfg, "solver.base_lr", "0.01")`` → a new config; the one parser of the
    command line's values. ``value`` is one text or, for a list field, several (the tokens a
    user typed, one element each). A text is read as JSON (``[16, 32]``, ``null``, ``true``),
    else as plain text; a list field also takes ``320``, ``320,352`` and ``"320 352"``
    (:func:`_parse_list`). The result must fit the field's type; an unknown key, a value of the
    wrong type or several values for a one-value field is a ValueError saying what is expected."""
    tp = _field_type(cfg, key)
    texts = [value] if isinstance(value, str) else list(value)
    shown, inner = " ".join(texts), _element_type(tp)
    if inner is None and len(texts) != 1:
        raise ValueError(f"{key} {shown}: takes one value, not {len(texts)}; expected "
                         f"{_type_name(tp)}")
    if inner is None:
        coerced = _parse_one(tp, texts[0])
    elif len(texts) == 1:
        coerced = _parse_list(tp, inner, texts[0])
    else:
        coerced = tuple(_parse_one(inner, text) for text in texts)
    if not _fits(tp, coerced):
        raise ValueError(f"{key} {shown}: expected {_type_name(tp)}")
    return _replace(cfg, key.split("."), coerced)
