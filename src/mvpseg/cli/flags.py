"""Command-line flags generated from the config dataclasses (:mod:`mvpseg.config`), and run configs read back.

Every field of a config becomes one flag: ``num_prompts`` -> ``--num-prompts``; a boolean becomes a
pair (``--photometric`` / ``--no-photometric``); a ``Literal`` becomes a choice; ``X | None`` accepts
``none``; a tuple takes several values. The field's trailing comment is the flag's help, and its
default (or each preset's value) is shown after it. Nested configs (``TrainConfig.model``) give their
fields flags of their own, in a group of their own. Flags that are not given are absent from the
parsed namespace (their default is ``argparse.SUPPRESS``), so :func:`overrides` returns exactly what
the user typed, to be laid over a preset or a run's ``config.json``.

Only the standard library is imported here: ``mvpseg --help`` must not wait for torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import re
import tokenize
import types
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol

__all__ = ["add_config_flags", "apply_overrides", "field_help", "overrides", "read_config_file"]

#: The separator of nested fields in a dotted field path ("model.num_prompts").
_SEP = "."
#: The prefix of a config field's argparse destination ("field:model.num_prompts"), which no other
#: argument of a command has: :func:`overrides` finds the fields by it.
_DEST = "field:"


class ConfigClass(Protocol):
    """A config dataclass that rebuilds itself from a dict (:meth:`mvpseg.config.RunConfig.from_dict`)."""

    def from_dict(self, values: dict[str, Any], /) -> Any: ...


_TYPE_IGNORE = re.compile(r"^type:\s*ignore(\[[^\]]*\])?\s*(#\s*)?")


@cache
def field_help(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field of a dataclass, read from its source: its documentation.

    Returns:
        {field name: comment}; fields without a comment are missing.
    """
    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # a subclass's comment on a field it redeclares wins
        if not dataclasses.is_dataclass(base) or "__dataclass_fields__" not in vars(base):
            continue
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):  # no source at hand (a frozen application): flags without help
            continue
        names = set(base.__annotations__)
        line_field: dict[int, str] = {}
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME and token.start[1] == 4 and token.string in names:
                line_field.setdefault(token.start[0], token.string)  # a field is declared at class-body indentation
            elif token.type == tokenize.COMMENT and token.start[0] in line_field:
                # A checker's pragma before the comment (``# type: ignore[code]  # help``) is no help text.
                text = _TYPE_IGNORE.sub("", token.string.lstrip("#").strip())
                comments[line_field[token.start[0]]] = text
    return comments


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None``, else (kind, False)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def _scalar_parser(kind: Any, optional: bool) -> Any:
    """The ``type=`` of a flag: the scalar's constructor, accepting "none" when the field is optional."""

    def parse(text: str) -> Any:
        if optional and text.strip().lower() == "none":
            return None
        return kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its error messages
    return parse


def _format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return " ".join(_format_value(item) for item in value)
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    rename: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    title: str | None = None,
    titles: Mapping[str, str] | None = None,
    _prefix: str = "",
) -> None:
    """Add one flag per field of the dataclass ``cls`` (and of its nested configs) to ``parser``.

    Args:
        parser: the (sub)command's parser.
        cls: a config dataclass.
        rename: dotted field path -> flag name without dashes, where the field's own name is not the
            flag's (``{"model.use_gpr": "gpr", "loss.seg": "seg-weight"}``).
        skip: dotted field paths that get no flag (the command adds its own).
        presets: preset name -> field values; a field a preset sets to another value than its default
            shows that preset's value in its help.
        title: the argument group's title; default the class docstring's first line.
        titles: dotted path of a nested config -> its group's title.
        _prefix: the dotted path of ``cls`` inside the top config (recursion).
    """
    rename, skip = dict(rename or {}), set(skip)
    hints = typing.get_type_hints(cls)
    comments = field_help(cls)
    group = parser.add_argument_group(title or (inspect.getdoc(cls) or cls.__name__).split("\n")[0])
    nested: list[tuple[str, Any]] = []  # (dotted path, a nested config dataclass)
    for item in dataclasses.fields(cls):
        path = _prefix + item.name
        if path in skip:
            continue
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            nested.append((path, kind))
            continue
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()  # type: ignore[operator]  # a field without a default has a factory
        flag = "--" + rename.get(path, item.name.replace("_", "-"))
        text = comments.get(item.name, "").replace("%", "%%")
        preset_values = [(name, values[item.name]) for name, values in (presets or {}).items()
                         if item.name in values and values[item.name] not in (default, name)]
        if preset_values:
            shown = ", ".join(f"{_format_value(value)} for {name}" for name, value in preset_values)
            text += f" (default: {shown}, otherwise {_format_value(default)})"
        elif default != "" and "default" not in text:  # a comment that says its default keeps its words
            text += f" (default: {_format_value(default)})"
        options: dict[str, Any] = {"dest": _DEST + path, "default": argparse.SUPPRESS, "help": text}
        scalar, optional = _unwrap_optional(kind)
        if scalar is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        metavar = flag[2:].upper().replace("-", "_")
        if typing.get_origin(scalar) is typing.Literal:
            choices = typing.get_args(scalar)
            group.add_argument(flag, choices=choices, type=_scalar_parser(type(choices[0]), optional), **options)
        elif typing.get_origin(scalar) is tuple:
            items = typing.get_args(scalar)
            count = "*" if items[-1] is Ellipsis else len(items)  # tuple[str, ...]: any number of values
            group.add_argument(flag, nargs=count, type=_scalar_parser(items[0], optional), metavar=metavar,
                               **options)
        elif scalar in (int, float, str):
            group.add_argument(flag, type=_scalar_parser(scalar, optional), metavar=metavar, **options)
        else:  # pragma: no cover - a config field of a kind this module does not know yet
            raise TypeError(f"{cls.__name__}.{item.name}: no flag for type {kind}")
    for path, kind in nested:
        name = path.rsplit(_SEP, 1)[-1]
        inner = {preset: values[name] for preset, values in (presets or {}).items() if isinstance(values.get(name), dict)}
        add_config_flags(parser, kind, rename=rename, skip=skip, presets=inner, title=(titles or {}).get(path),
                         titles=titles, _prefix=path + _SEP)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line: {dotted field path: value} (tuples for tuples)."""
    return {key[len(_DEST):]: tuple(value) if isinstance(value, list) else value
            for key, value in vars(args).items() if key.startswith(_DEST)}


def apply_overrides(config: Any, values: Mapping[str, Any]) -> Any:
    """A copy of the dataclass ``config`` with dotted field paths set (``{"model.num_prompts": 2}``)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(_SEP)
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = apply_overrides(getattr(config, head), inner)
    return dataclasses.replace(config, **top)


def read_config_file(path: str | Path, cls: ConfigClass) -> Any:
    """A run's ``config.json`` as a ``cls`` (its ``from_dict``), with one-line errors for a wrong file.

    Raises:
        ValueError: the file is missing, not JSON, or holds fields ``cls`` does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a JSON config file ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path} is not a config file: a JSON object of fields is expected")
    try:
        return cls.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
