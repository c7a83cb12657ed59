"""What `make demo` leaves in the run folder: report.md and the figures."""

from __future__ import annotations

from pathlib import Path

from base.io import write_text_atomic
from probe.reports.formats.markdown import render_markdown
from probe.reports.model import build_report
from probe.reports.plots import write_plots


def write_demo_outputs(run_dir: str | Path) -> list[Path]:
    """Write RUN_DIR/report.md (Markdown comparison, per-group and grid tables) and the PNGs.

    The same as `probe report RUN_DIR --format markdown --out RUN_DIR/report.md --plots RUN_DIR`.
    Returns the files written, report.md first.
    """
    run_dir = Path(run_dir)
    report = build_report([run_dir])
    out = run_dir / "report.md"
    write_text_atomic(out, render_markdown(report))
    return [out, *write_plots(report, run_dir)]
