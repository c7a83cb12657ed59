"""`--format terminal`: rich tables, as renderables for the CLI to print on a console.

The library builds them and never prints: ``probe report`` and the end of
``probe fit`` print them, and lay them out as text for ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table as RichTable
from rich.text import Text

from probe.reports.model import Report, build_report
from probe.reports.paper import paper_table
from probe.reports.registry import register_format
from probe.reports.tables import (
    CHECKS_TITLE,
    GRID_DESCRIPTION,
    Table,
    cell_text,
    check_lines,
    comparison_table,
    grid_tables,
    main_tables,
    nothing_varied_lines,
    run_lines,
)


@register_format("terminal", help="rich tables (comparison, per-group, grid around each selection)")
def render_terminal(report: Report) -> list[RichTable | Text]:
    """The run lines, every table (each after a blank line), then how the grid reads."""
    out: list[RichTable | Text] = [*warning_texts(report), *(Text(line) for line in run_lines(report))]
    tables = main_tables(report)
    out += [Text(""), rich_table(tables[0]), *checks_block(report)]
    for t in [*tables[1:], *grid_tables(report)]:
        out += [Text(""), rich_table(t)]
    out += [Text(""), Text(GRID_DESCRIPTION), *(Text(line) for line in nothing_varied_lines(report))]
    return out


@register_format("terminal", layout="paper")
def render_terminal_paper(report: Report) -> list[RichTable | Text]:
    return [*warning_texts(report), rich_table(paper_table(report)), *checks_block(report)]


def warning_texts(report: Report) -> list[Text]:
    return [Text(f"warning: {w}", style="bold red") for w in report.warnings]


def rich_table(t: Table) -> RichTable:
    """One table as a rich Table: labels keep their width, bold cells in bold."""
    rt = RichTable(title=escape(t.title), caption=escape(t.caption) if t.caption else None, title_justify="left",
                   caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                   show_edge=False, collapse_padding=True)
    for j, h in enumerate(t.flat_headers()):
        if not t.numeric(j):
            # Labels keep their width; on a narrow terminal numbers wrap rather than
            # being cut off with an ellipsis.
            width = max([len(h), *(len(cell_text(r[j])) for r in t.rows)])
            rt.add_column(h, min_width=min(width, 24))
        else:
            two_lines = h.replace(" (", "\n(", 1) if " (" in h else h.replace(" ", "\n", 1)
            cells = max([1, *(len(cell_text(r[j])) for r in t.rows)])
            rt.add_column(two_lines, justify="right", overflow="fold", min_width=cells)
    for i, row in enumerate(t.rows):
        rt.add_row(*[
            escape(cell_text(c)) if (i, j) not in t.bold else f"[bold]{escape(cell_text(c))}[/bold]"
            for j, c in enumerate(row)
        ])
    return rt


def fit_summary(run_dir: str | Path) -> list[RichTable | Text]:
    """What `probe fit` shows at its end: the comparison table and where the files are."""
    report = build_report([run_dir])
    run = report.runs[0]
    files = RichTable.grid(padding=(0, 2))
    files.add_row("results", f"{run.path / 'results.jsonl'} ({len(run.results)} configurations)")
    files.add_row("summary", str(run.path / "summary.json"))
    for m in report.methods:
        head = run.summary.methods[m.method].head
        if head:
            files.add_row(f"head {m.method}", str(run.path / head))
    hint = (f"Per-group, rules, bound and grid tables: probe report {run.path}; figures: "
            f"probe report {run.path} --plots DIR")
    return [*warning_texts(report), rich_table(comparison_table(report)), *checks_block(report), files, Text(hint)]


def checks_block(report: Report) -> list[Text]:
    """"Check these": each method's diagnostics, one line each (nothing when there are none)."""
    lines = check_lines(report)
    if not lines:
        return []
    return [Text(""), Text(CHECKS_TITLE, style="bold"), *(Text(f"- {line}") for line in lines)]
