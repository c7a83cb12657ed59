"""The Typer application every `probe` subcommand registers on.

Kept apart from :mod:`cli.main` (which imports the subcommands to run them) so
that the subcommand modules import only this one and no import runs in a loop.
"""

from __future__ import annotations

import typer

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


@app.command("version")
def version() -> None:
    """Print probe's version."""
    from base import __version__

    typer.echo(__version__)
