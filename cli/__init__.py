"""The `probe` command line (Typer)."""
