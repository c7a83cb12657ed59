"""`--format markdown`: the terminal's tables as Markdown (the demo's report.md)."""

from __future__ import annotations

from probe.reports.model import Report
from probe.reports.paper import paper_table
from probe.reports.registry import register_format
from probe.reports.tables import (
    CHECKS_TITLE,
    GRID_DESCRIPTION,
    Cell,
    Table,
    cell_text,
    check_lines,
    grid_tables,
    main_tables,
    nothing_varied_lines,
    run_lines,
)


@register_format("markdown", help="the same as Markdown")
def render_markdown(report: Report) -> str:
    out = ["# probe report", "", *_md_warnings(report)]
    out += [f"- {line}" for line in run_lines(report)]
    out.append("")
    tables = main_tables(report)
    out += _md_table(tables[0], "##")
    out += _md_checks(report)
    for t in tables[1:]:
        out += _md_table(t, "##")
    out += ["## Grid around each selection", "", GRID_DESCRIPTION, ""]
    single = nothing_varied_lines(report)
    out += [f"- {line}" for line in single]
    if single:
        out.append("")
    for t in grid_tables(report):
        out += _md_table(t, "###")
    return "\n".join(out).rstrip() + "\n"


@register_format("markdown", layout="paper")
def render_markdown_paper(report: Report) -> str:
    return "\n".join([*_md_warnings(report), *_md_table(paper_table(report), "##"),
                      *_md_checks(report)]).rstrip() + "\n"


def _md_checks(report: Report) -> list[str]:
    """The "Check these" block under the table (nothing when there is nothing to check)."""
    checks = check_lines(report)
    return [f"## {CHECKS_TITLE}", "", *(f"- {_md_escape(line)}" for line in checks), ""] if checks else []


def _md_warnings(report: Report) -> list[str]:
    return [line for w in report.warnings for line in (f"> **Warning: {_md_escape(w)}**", "")]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(t: Table, level: str) -> list[str]:
    def cell(i: int, j: int, c: Cell) -> str:
        s = _md_escape(cell_text(c))
        return f"**{s}**" if (i, j) in t.bold and s and s != "–" else s

    lines = [f"{level} {t.title}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in t.flat_headers()) + " |")
    lines.append("|" + "|".join("---:" if t.numeric(j) else ":---" for j in range(len(t.headers))) + "|")
    for i, row in enumerate(t.rows):
        lines.append("| " + " | ".join(cell(i, j, c) for j, c in enumerate(row)) + " |")
    lines.append("")
    if t.caption:
        lines += [t.caption, ""]
    return lines
