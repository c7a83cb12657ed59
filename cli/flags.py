"""Library messages on the command line: backquoted parameters shown as flags.

Library errors and warnings name parameters in backquotes (`batch_size`); here
each one that is a flag of the command that ran becomes that flag
(``--batch-size``), so the API and the command line each speak their own names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import typer

from cli.app import app

_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def command_flags(args: Sequence[str]) -> dict[str, str]:
    """Parameter name -> long flag of the subcommand named in ``args`` (else of all)."""
    group = typer.main.get_command(app)
    commands = group.commands if hasattr(group, "commands") else {}
    chosen = [commands[a] for a in args[:1] if a in commands] or list(commands.values())
    flags: dict[str, str] = {}
    for cmd in reversed(chosen):
        for p in cmd.params:
            longs = [o for o in getattr(p, "opts", []) if o.startswith("--")]
            if longs and p.name:
                flags[p.name] = max(longs, key=len)
    return flags


def flag_names(message: str, args: Sequence[str]) -> str:
    """`name` -> --flag for every parameter of the command that is a flag."""
    if "`" not in message:
        return message
    flags = command_flags(args)
    return _PARAM.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


def declared_help(text: str) -> str:
    """Help declared beside library code (parameters in backquotes) with each parameter as its flag.

    For help built while the commands are being defined, before their flags can be
    looked up: every backquoted name is taken to be an option's.
    """
    return _PARAM.sub(lambda m: "--" + m.group(1).replace("_", "-"), text)
