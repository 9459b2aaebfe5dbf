"""One options object per long job: every setting's default and help are written once, on a field.

A job (indexing, serving, evaluation, calibration) takes one frozen dataclass whose fields are made
with :func:`setting`; the command line is generated from those fields by :func:`click_options`, so a
default cannot differ between the Python API, the CLI and the generated CLI reference.

    @dataclass(frozen=True)
    class IndexOptions:
        batch_size: int = setting(8, "Photos per photo-encoder call.", type=click.IntRange(1))

    @click.command()
    @click_options(IndexOptions)
    def index(**kwargs):
        options, rest = from_cli(IndexOptions, kwargs)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .errors import DcssaError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_KEY = "dcssa.setting"


class OptionsError(DcssaError):
    """Settings of one options object that contradict each other, refused when it is made (``flag``:
    the one to change, if one is to blame). The CLIs report it as a usage error, as click does its own."""

    def __init__(self, message: str, *, flag: str | None = None, hint: str | None = None) -> None:
        self.flag = flag
        super().__init__(message, hint=hint)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, type: Any = None,
            metavar: str | None = None, is_flag: bool = False, show_default: bool | str = True,
            cli: bool = True, default_factory: Callable[[], Any] | None = None,
            to_cli: Callable[[Any], Any] | None = None, from_cli: Callable[[Any], Any] | None = None,
            secondary: Iterable[str] = (), flag_value: Any = None, multiple: bool = False) -> Any:
    """A dataclass field that also describes its command-line option.

    ``flag``: the option's name [default: ``--field-name``]; ``cli=False``: API only. ``to_cli`` /
    ``from_cli`` convert when the flag counts in other units than the field (kB on the CLI, bytes in
    the object); ``secondary``: extra names (``-q``); ``flag_value``: the value of the flag given
    without one (``--ray`` alone: a local instance; ``--ray ADDRESS``: that one); ``multiple``: a
    repeatable flag, its values a tuple.
    """
    meta = {_KEY: {"help": help, "flag": flag, "type": type, "metavar": metavar, "is_flag": is_flag,
                   "show_default": show_default, "cli": cli, "to_cli": to_cli, "from_cli": from_cli,
                   "secondary": tuple(secondary), "flag_value": flag_value,
                   "multiple": multiple}}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def settings(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` made with :func:`setting` (in declaration order)."""
    return [f for f in dataclasses.fields(cls) if _KEY in f.metadata]


def describe(f: dataclasses.Field) -> dict[str, Any]:
    """What :func:`setting` recorded for field ``f``."""
    return f.metadata[_KEY]


def default_of(f: dataclasses.Field) -> Any:
    """Field ``f``'s default (made fresh when it has a factory); None when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def flag_of(f: dataclasses.Field) -> str:
    """The option's name on the command line: the one :func:`setting` was given, else ``--field-name``."""
    return describe(f)["flag"] or "--" + f.name.replace("_", "-")


def click_options(cls: type, *, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                  overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[[F], F]:
    """click options for the settings of ``cls`` (``only`` / ``exclude`` by field name), listed in
    field order; each passes its value as a keyword named after the field. ``overrides`` changes a
    click argument of one option (its help on one command, say), never its default."""
    import click

    chosen = set(only) if only is not None else None
    skip = set(exclude)
    fields = [f for f in settings(cls) if describe(f)["cli"] and f.name not in skip
              and (chosen is None or f.name in chosen)]
    if chosen is not None and (missing := chosen - {f.name for f in fields}):
        raise ValueError(f"{cls.__name__} has no CLI settings {sorted(missing)}")

    def option(f: dataclasses.Field) -> Callable[[F], F]:
        d = describe(f)
        default = default_of(f)
        if d["to_cli"] is not None and default is not None:
            default = d["to_cli"](default)
        kwargs: dict[str, Any] = {"help": d["help"], "default": default}
        if d["is_flag"]:
            kwargs["is_flag"] = True
            if default is False:  # off unless given: declared as a hand-written flag is (click's own default)
                del kwargs["default"]
        else:
            if d["flag_value"] is not None:
                kwargs.update(is_flag=False, flag_value=d["flag_value"])
            kwargs["show_default"] = d["show_default"] if default is not None else False
            if d["type"] is not None:
                kwargs["type"] = d["type"]
            if d["metavar"] is not None:
                kwargs["metavar"] = d["metavar"]
            if d.get("multiple"):
                kwargs["multiple"] = True
        kwargs.update((overrides or {}).get(f.name, {}))
        return click.option(*d["secondary"], flag_of(f), f.name, **kwargs)

    def apply(func: F) -> F:
        for f in reversed(fields):
            func = option(f)(func)
        return func

    return apply


def from_cli(cls: type[T], kwargs: dict[str, Any], **given: Any) -> tuple[T, dict[str, Any]]:
    """(an instance of ``cls`` from the CLI values in ``kwargs``, the keywords that are not its
    settings). ``given``: values the command computed itself (they win)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    values, rest = {}, {}
    for key, value in kwargs.items():
        if key in names:
            conv = describe(names[key])["from_cli"] if _KEY in names[key].metadata else None
            values[key] = conv(value) if conv is not None and value is not None else value
        else:
            rest[key] = value
    values.update(given)
    return cls(**values), rest
