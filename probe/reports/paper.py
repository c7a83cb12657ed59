"""The paper layout: the CMA paper's linear-probing table (``probe report --layout paper``).

Rows are methods, column groups are datasets (one run folder each), and each group has
the test Average (plain accuracy) and Worst-Group accuracy of the method's selected
configuration, in percent, mean ± standard error of the mean over seeds (ddof 1), the
best of each column bold, as the paper reports them.
"""

from __future__ import annotations

from dataclasses import replace

from probe.reports.model import MethodResult, Report, Stat, display_name
from probe.reports.tables import Cell, Pct, Table, best_cells

#: how papers spell the datasets probe knows; others keep the file's dataset name
DATASET_NAMES = {"waterbirds": "Waterbirds", "celeba": "CelebA", "multinli": "MultiNLI",
                 "civilcomments": "CivilComments", "demo": "Demo (digits)"}
COLUMNS = (("acc", "Average"), ("wga", "Worst-Group"))


def _sem(stat: Stat, n: int) -> Stat:
    """The mean with its standard error in the place of the spread (over the ``n`` seeds)."""
    return Stat(stat.mean, replace(stat, n=n).sem, n)


def dataset_labels(report: Report) -> list[str]:
    """Each run folder's column label: its dataset, or its folder name when two share one."""
    names = [DATASET_NAMES.get(str(r.features.get("dataset", "")), str(r.features.get("dataset") or r.name))
             for r in report.runs]
    return [n if names.count(n) == 1 else f"{n} ({r.name})" for n, r in zip(names, report.runs, strict=True)]


def paper_table(report: Report) -> Table:
    methods: dict[str, None] = dict.fromkeys(m.method for m in report.methods)
    cell: dict[tuple[str, int], MethodResult] = {}
    for m in report.methods:
        cell[(m.method, next(i for i, r in enumerate(report.runs) if r is m.run))] = m
    labels = dataset_labels(report)
    rows: list[list[Cell]] = []
    for method in methods:
        row: list[Cell] = [display_name(method)]
        for i in range(len(report.runs)):
            m = cell.get((method, i))
            row += [Pct(_sem(m.get("test", key), m.n_seeds), m.n_seeds > 1) if m else Pct(Stat(None))
                    for key, _ in COLUMNS]
        rows.append(row)
    bold = set().union(*(best_cells(rows, j) for j in range(1, len(rows[0])))) if rows else set()
    seeds = sorted({m.n_seeds for m in report.methods if m.n_seeds > 0}) or [1]
    spread = ("one seed" if seeds == [1] else f"mean ± SEM over {seeds[0]} seeds" if len(seeds) == 1
              else f"mean ± SEM over {seeds[0]}–{seeds[-1]} seeds")
    return Table(
        title="Test accuracy (%) of linear probes: Average (plain) and Worst-Group",
        headers=["Method", *[h for _ in labels for _, h in COLUMNS]],
        rows=rows, bold=bold, groups=[("", 1), *[(lab, len(COLUMNS)) for lab in labels]],
        caption=f"{spread}; each method at its configuration selected by {report.selection(long=True)}. "
                "Best in each column in bold.",
    )
