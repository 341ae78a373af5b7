"""Settings of `exeunit serve` from a TOML file and the environment; flags win over both.

    exeunit serve --config /etc/exeunit/exeunit.toml      # or EXEUNIT_CONFIG=...
    EXEUNIT_MAX_MEMORY_GIB=8 EXEUNIT_OFFER_IMAGE=web-*,db-* exeunit serve

A file key or variable is the flag's long name: `max-memory-gib = 8` (or `max_memory_gib`) in the
file, top level or under `[serve]`; `EXEUNIT_MAX_MEMORY_GIB` in the environment, which wins over
the file. Values go through the flag's own checks. Repeatable flags take a TOML list or a
comma-separated variable; switches take true/false (1/0, yes/no, on/off in the environment). An
unknown key is an error naming it, as an unknown flag would be.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "EXEUNIT_"
CONFIG_ENV = "EXEUNIT_CONFIG"
NOT_SETTINGS = {"help", "config", "command"}
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A setting in the file or the environment is wrong; the message says where and why."""


def settings_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_SETTINGS}


def defaults_from(parser: argparse.ArgumentParser, config_file: Path | None,
                  environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Values for the parser's defaults: the file's, then the environment's over them."""
    actions = settings_actions(parser)
    raw: dict[str, tuple[Any, str]] = {}
    if config_file is not None:
        try:
            with config_file.open("rb") as source:
                document = tomllib.load(source)
        except OSError as exc:
            raise ConfigError(f"cannot read --config {config_file}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file} is not valid TOML: {exc}") from None
        table = document.get("serve", document)
        if not isinstance(table, dict):
            raise ConfigError(f"{config_file}: [serve] must be a table of settings")
        for key, value in table.items():
            dest = key.replace("-", "_")
            if dest not in actions:
                raise ConfigError(f"{config_file}: unknown setting {key!r} (settings are the long flag names of "
                                  "`exeunit serve --help`)")
            raw[dest] = (value, f"{config_file}: {key}")
    for dest in actions:
        name = ENV_PREFIX + dest.upper()
        if name in environ:
            raw[dest] = (environ[name], name)
    return {dest: _converted(actions[dest], value, where) for dest, (value, where) in raw.items()}


def _converted(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in TRUE | FALSE:
            raise ConfigError(f"{where}: {value!r} is not true or false")
        return text in TRUE
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        return [_one(action, item, where) for item in items]
    return _one(action, value, where)


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: expected one value, got {value!r}")
    text = str(value).strip()
    try:
        converted = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"{where}: {text!r} is not one of {', '.join(map(str, action.choices))}")
    return converted
