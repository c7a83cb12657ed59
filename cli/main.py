"""Entry point: `probe extract | info | merge | fit | hull | report | reproduce | study`.

Every user mistake surfaces as one line on stderr and exit code 2; a traceback
means a bug in probe. Heavy imports (torch, transformers) happen inside the
commands so that `probe --help` answers at once.

Library errors name parameters in backquotes (`batch_size`); here each one that
is a flag of the command that ran becomes that flag (``--batch-size``, see
:mod:`cli.flags`), so the API and the command line each speak their own names.

Ctrl-C and SIGTERM interrupt every command the same way (:mod:`cli.interrupts`):
a command that has something to say about what it kept catches the interrupt and
says it in one line; for the others this module prints "interrupted". The command
is invoked here rather than through Typer's runner, which would turn the
interrupt into a silent exit code before any of that could run.

A stdout that cannot take the output (``> /dev/full``, ``>&-``) does not stop the
command (:func:`cli.console.guarded_stdout`); once it has finished, that is one line
and exit code 74 (:data:`cli.console.STDOUT_LOST`).
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

try:  # typer >= 0.23 vendors click; its exceptions are not click's.
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer with real click
    from click import exceptions as click_exc

from base.errors import UserError
from cli import console, interrupts
from cli import extract as _extract  # noqa: F401  (registers extract, info, merge)
from cli import fit as _fit  # noqa: F401  (registers fit)
from cli import hull as _hull  # noqa: F401  (registers hull)
from cli import report as _report  # noqa: F401  (registers report)
from cli import reproduce as _reproduce  # noqa: F401  (registers reproduce)
from cli import study as _study  # noqa: F401  (registers study)
from cli.app import app
from cli.flags import flag_names

# click >= 8.2 raises this after printing help for a bare `probe`.
_NO_ARGS_IS_HELP = getattr(click_exc, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    interrupts.handle_signals()
    with console.guarded_stdout() as stdout:
        code = _run(args)
    lost = stdout.lost() if code == 0 else None
    if lost is not None:
        _fail(lost, console.STDOUT_LOST)
    sys.exit(code)


def _run(args: list[str]) -> int:
    """Run the command; its exit code, or (a mistake, an interrupt) one line and SystemExit."""
    try:
        code = _invoke(args)
    except UserError as exc:
        _fail(flag_names(str(exc), args), exc.exit_code)
    except _NO_ARGS_IS_HELP:
        return 0
    except click_exc.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx is not None else "probe"
        _fail(f"{exc.format_message()} (see `{cmd} --help`)", 2, prefix=cmd)
    except typer.Exit as exc:
        # A command's own interrupt message exits 130 whichever signal it was.
        return interrupts.exit_code() if exc.exit_code == 130 else exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _fail(f"interrupted ({interrupts.signal_name()})", interrupts.exit_code())
    except click_exc.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except BrokenPipeError:
        # `probe report ... | head`: the reader went away; not an error of ours.
        sys.stderr.close()
        return 0
    return code if isinstance(code, int) else 0


def _invoke(args: list[str]) -> object:
    """Parse ``args`` and run the command, letting KeyboardInterrupt through (see the module docstring)."""
    command = typer.main.get_command(app)
    with command.make_context("probe", args) as ctx:
        return command.invoke(ctx)


def _fail(message: str, code: int, prefix: str = "probe") -> NoReturn:
    # One line, always: flatten any newline a message may carry.
    print(f"{prefix}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)
