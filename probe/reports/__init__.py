"""Reports over `probe fit` run folders (docs/results-format.md).

One comparison table over every method of every run folder (each method at
its configuration selected on validation worst-group accuracy), the per-group
test accuracies of those selections, and the grid around each selection: the
configurations that share the selected one's hyperparameters except one,
varying one hyperparameter at a time. Rendered as rich terminal tables,
Markdown, CSV, JSON or a booktabs LaTeX table.

JSON and CSV hold fractions in [0, 1]; the human formats (terminal, Markdown,
LaTeX) show percent with one decimal, mean ± std over seeds when there are
several seeds.

Layout, each module depending only on those above it:

* ``runfolder``: reads and checks run folders (results.jsonl through probe.records.results)
* ``model``: the report model (Report, MethodResult, Config, Stat) and build_report
* ``tables``: format-independent tables (Table, Pct) and their shared text
* ``registry``: the format registry (register_format)
* ``formats/``: one module per output format; importing the package registers them
* ``plots``: PNG figures from the model; ``demo``: the demo's report.md and figures

The library renders; only the CLI prints (the terminal format gives rich
renderables for it to print).
"""

from __future__ import annotations

from probe.reports.formats import format_names, get_format, render
from probe.reports.model import Config, MethodResult, Report, Stat, build_report, display_name
from probe.reports.registry import Format, Rendered, register_format
from probe.reports.runfolder import RunFolder, load_run

__all__ = [
    "Config", "Format", "MethodResult", "Rendered", "Report", "RunFolder", "Stat", "build_report",
    "display_name", "format_names", "get_format", "load_run", "register_format", "render",
]
