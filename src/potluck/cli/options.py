"""Command-line options made from settings declarations (``core/settings.setting``).

Each field of a configuration becomes one option: its name with dashes (or the
``flag`` it declares), its help text, and its default as ``--help`` shows it. An
option left out is not passed on, so the TOML file (``--config``) or the field's
default decides; flags win over the file. Tables (``fit``, ``strategy_options``) are
repeatable ``KEY=VALUE`` options; lists (``allow``) repeatable values; booleans are
switches that turn a setting on.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, Optional, TypeVar

import typer
from rich.markup import escape

from potluck.cli.common import parse_assignments
from potluck.core.errors import ConfigError
from potluck.core.settings import Settings, default_of

S = TypeVar("S", bound=Settings)
CONFIG = "config"  # the option every generated command adds: a TOML file of settings


def flag_of(f: Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def shown_default(f: Field[Any], defaults: Mapping[str, Any] | None = None) -> str:
    """The default as ``--help`` prints it: the command's own (``defaults``), the declared
    ``shown`` text, or the value as TOML writes it."""
    shown = f.metadata.get("shown")
    if shown is not None and f.name not in (defaults or {}):
        return str(shown)
    value = (defaults or {}).get(f.name, default_of(f))
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def _base_type(hint: Any) -> Any:
    """``int | None`` → ``int``; anything else as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(o for o in typing.get_args(hint) if o is not type(None))
    return hint


def _parameter(f: Field[Any], hint: Any, defaults: Mapping[str, Any]) -> inspect.Parameter:
    base = _base_type(hint)
    names = [flag_of(f), *([f.metadata["short"]] if f.metadata.get("short") else [])]
    # Written into the help text (typer would show a None default as nothing), escaped
    # from rich's markup, which would take "[default: ...]" for a style and drop it.
    common: dict[str, Any] = {"help": f"{f.metadata['help']}  {escape(f'[default: {shown_default(f, defaults)}]')}",
                              "show_default": False}
    if f.metadata.get("metavar"):
        common["metavar"] = f.metadata["metavar"]
    if base is bool:
        annotation: Any = bool
        default: Any = False
    elif typing.get_origin(base) in (dict, list) or base is dict:
        annotation, default = Optional[list[str]], None
    else:
        annotation, default = Optional[base], None
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *names, **common))


@dataclass(frozen=True)
class Given(Generic[S]):
    """What a generated command was given: its settings' flags, the TOML file, the rest."""

    cls: type[S]
    flags: Mapping[str, Any]
    config_file: Path | None
    extras: Mapping[str, Any]
    only: frozenset[str] | None = None  # the settings this command uses (None: all of cls)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # the command's own defaults, under the file

    def overrides(self) -> dict[str, Any]:
        """The settings given as flags (ConfigError for a malformed KEY=VALUE)."""
        out: dict[str, Any] = {}
        for f in fields(self.cls):  # type: ignore[arg-type]
            value = self.flags.get(f.name)
            if value is None or value is False or value == []:
                continue  # not given: the file or the default decides
            if isinstance(default_of(f), dict):
                value = parse_assignments(value, flag_of(f))
            out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        return out

    def settings(self) -> S:
        """The configuration: the TOML file (if any) under the flags; ConfigError when invalid."""
        overrides = self.overrides()
        if self.config_file is None:
            return self.cls.from_mapping({**self.defaults, **overrides}, source="options")
        config = self.cls.load(self.config_file, overrides, defaults=self.defaults)
        unused = [f.name for f in fields(self.cls)  # type: ignore[arg-type]
                  if self.only is not None and f.name not in self.only and getattr(config, f.name) != default_of(f)]
        if unused:
            raise ConfigError(f"{self.config_file}: {unused[0]} is not a setting of this command; it takes "
                              f"{', '.join(sorted(self.only or ()))}")
        return config


def settings_command(cls: type[S], run: Callable[[Given[S]], None], extras: Sequence[inspect.Parameter] = (), *,
                     only: Collection[str] | None = None, defaults: Mapping[str, Any] | None = None,
                     ) -> Callable[..., None]:
    """A typer command with an option per field of ``cls`` (or of those named in ``only``),
    then ``--config`` and ``extras``; it calls ``run`` with what it was given. ``defaults``
    are the command's own, where it must differ from the declaration (``up``'s nodes)."""
    hints, chosen, own = typing.get_type_hints(cls), frozenset(only) if only is not None else None, dict(defaults or {})
    settings = [f for f in fields(cls) if chosen is None or f.name in chosen]  # type: ignore[arg-type]
    params = [_parameter(f, hints[f.name], own) for f in settings]
    params.append(option(CONFIG, Optional[Path], None, "--config",
                         help="A TOML file with any of these settings (flags win).", show_default=False))
    params += extras
    names = {f.name for f in settings}

    def command(**given: Any) -> None:
        flags = {k: v for k, v in given.items() if k in names}
        rest = {k: v for k, v in given.items() if k not in names and k != CONFIG}
        run(Given(cls, flags, given.get(CONFIG), rest, chosen, own))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = run.__name__
    command.__doc__ = run.__doc__
    return command


def option(name: str, annotation: Any, default: Any, *decls: str, **info: Any) -> inspect.Parameter:
    """An option that is not a setting (``--resume``, ``--port-file``), for ``extras``."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *decls, **info))
