"""Entry point: `probe extract | info | merge | fit | report`.

Every user mistake surfaces as one line on stderr and exit code 2; a traceback
means a bug in probe. Heavy imports (torch, transformers) happen inside the
commands so that `probe --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.23 vendors click; its exceptions are not click's.
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer with real click
    from click import exceptions as click_exc

from probe.errors import UserError

app = typer.Typer(
    name="probe",
    help=(
        "Linear probes on frozen embeddings for spurious-correlation and domain-generalization "
        "research: `probe extract` caches embeddings to HDF5, `probe fit` fits CMA and baselines "
        "as whole hyperparameter grids and reports worst-group accuracy."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# click >= 8.2 raises this after printing help for a bare `probe`.
_NO_ARGS_IS_HELP = getattr(click_exc, "NoArgsIsHelpError", ())


@app.command("version")
def version() -> None:
    """Print probe's version."""
    from probe import __version__

    typer.echo(__version__)


def _register() -> None:
    # Each command lives in its own module; importing them registers the commands.
    from cli import extract as _extract  # noqa: F401
    from cli import fit as _fit  # noqa: F401
    from cli import report as _report  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        code = app(args=argv, prog_name="probe", standalone_mode=False)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    except _NO_ARGS_IS_HELP:
        sys.exit(0)
    except click_exc.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx is not None else "probe"
        _fail(f"{exc.format_message()} (see `{cmd} --help`)", 2, prefix=cmd)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except click_exc.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except BrokenPipeError:
        # `probe report ... | head`: the reader went away; not an error of ours.
        sys.stderr.close()
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, prefix: str = "probe") -> None:
    # One line, always: flatten any newline a message may carry.
    print(f"{prefix}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)

