"""The report's tables, independent of any output format.

A :class:`Table` holds cells (text or :class:`Pct`, a percentage over seeds),
which cells are bold and how columns align; each format only lays it out.
Here too is the text every human format shares: the legend, the grid
description and the one-line description of each run folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from probe.reports.model import MethodResult, Report, Stat, display_name, format_value

# (split, metric key, header). The averages are named apart on purpose: papers
# call different numbers "average accuracy".
COMPARISON_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("val", "wga", "Val WGA"),
    ("test", "wga", "Test WGA"),
    ("test", "acc", "Test Acc"),
    ("test", "acc_train_weighted", "Test Avg (train-weighted)"),
    ("test", "acc_group_mean", "Test Avg (group mean)"),
)

LEGEND = (
    "WGA: worst-group accuracy (lowest accuracy over groups with samples). "
    "Acc: plain accuracy over all samples of the split. "
    "Avg (train-weighted): group accuracies weighted by the train split's group sizes "
    "(the Waterbirds papers' \"average accuracy\", WILDS adj_acc_avg). "
    "Avg (group mean): unweighted mean of the group accuracies (SubpopBench's \"adjusted\")."
)

GRID_MODE = "one-at-a-time"
GRID_DESCRIPTION = (
    "One hyperparameter varied at a time, the others fixed at the selected values "
    "(percent, mean ± std over seeds; the selected row is bold)."
)

MISSING = "–"


@dataclass
class Pct:
    """A percentage cell: mean (and std over seeds when there are several), or mean and its
    95% interval (which holds the seeds' spread too) when one was measured."""

    stat: Stat
    show_std: bool = True
    n: int | None = None  # row count, shown as "(n=...)" when set
    ci: list[float] | None = None  # [lo, hi], fractions
    signed: bool = False  # a difference: shown with its sign

    def text(self, pm: str = "±", missing: str = MISSING) -> str:
        if self.stat.mean is None or not math.isfinite(self.stat.mean):
            body = missing
        else:
            body = f"{100 * self.stat.mean:+.1f}" if self.signed else f"{100 * self.stat.mean:.1f}"
            if self.ci:
                body += f" [{100 * self.ci[0]:.1f}, {100 * self.ci[1]:.1f}]"
            elif self.show_std and self.stat.std is not None:
                body += f" {pm} {100 * self.stat.std:.1f}"
        return body if self.n is None else f"{body} (n={self.n})"

    def rounded(self) -> float | None:
        m = self.stat.mean
        return round(100 * m, 1) if m is not None and math.isfinite(m) else None


Cell = str | Pct


def cell_text(c: Cell) -> str:
    """A cell as plain text with the default ± and dash."""
    return c.text() if isinstance(c, Pct) else c


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    caption: str = ""
    first_numeric: int = 1  # columns from here on are right-aligned...
    text_columns: tuple[int, ...] = ()  # ...except these
    groups: list[tuple[str, int]] = field(default_factory=list)  # a header row above: (label, columns spanned)

    def numeric(self, j: int) -> bool:
        """Whether column ``j`` holds numbers (right-aligned)."""
        return j >= self.first_numeric and j not in self.text_columns

    def flat_headers(self) -> list[str]:
        """Headers with their group's label in front, for formats with one header row."""
        labels = [g for g, span in self.groups for _ in range(span)] or [""] * len(self.headers)
        return [f"{g} {h}" if g else h for g, h in zip(labels, self.headers, strict=True)]


REGIME_NAMES = {"all": "all group labels read", "val": "group labels read on validation only",
                "none": "no group label read (test labels only to report)"}


def run_lines(report: Report) -> list[str]:
    """One line per run folder: where it is, what was fitted, how it was selected, which
    labels the fit read and where its domains came from."""
    lines = []
    for run in report.runs:
        feats = run.features
        bits = [f"{k} {feats[k]}" for k in ("dataset", "encoder") if feats.get(k)]
        n_cfg = sum(len(m.configs) for m in report.methods if m.run is run)
        bits.append(f"{n_cfg} configurations ({len(run.results)} fits)")
        bits.append(f"selection {run.selection}")
        bits.append(REGIME_NAMES.get(run.summary.group_labels, run.summary.group_labels))
        domains = run.summary.domains or {}
        if domains.get("source"):
            ari = domains.get("ari_train")
            agree = f", adjusted Rand index {ari:.2f} with the training groups" if isinstance(ari, float) else ""
            bits.append(f"domains {domains['source']} ({len(domains.get('names') or [])}{agree})")
        lines.append(f"{run.name} ({run.path}): " + ", ".join(bits))
    return lines


def check_lines(report: Report) -> list[str]:
    """The diagnostics of every method (probe.runs.checks), one line each: "Check these"."""
    return [f"{m.label}: {d['code']}: {d['message']}" for m in report.methods for d in m.diagnostics]


CHECKS_TITLE = "Check these"


def nothing_varied_lines(report: Report) -> list[str]:
    """The methods that have no grid table: a single configuration."""
    return [f"{m.label}: one configuration, nothing varied" for m in report.methods if not m.varied]


def seed_counts(report: Report) -> list[int]:
    """The distinct numbers of seeds behind the selections ([1] when none)."""
    return sorted({m.n_seeds for m in report.methods if m.n_seeds > 0}) or [1]


def _seeds_note(report: Report) -> str:
    ns = seed_counts(report)
    if ns == [1]:
        return "one seed each"
    if len(ns) == 1:
        return f"mean ± std over {ns[0]} seeds"
    return f"mean ± std over {ns[0]}–{ns[-1]} seeds, see Seeds"


def paper_label(m: MethodResult) -> str:
    """The method's display name for a paper, with its run folder when ambiguous."""
    name = display_name(m.method)
    return name if m.label == m.method else f"{name} ({m.run.name})"


def comparison_table(
    report: Report, with_seeds: bool = True, label: Callable[[MethodResult], str] | None = None
) -> Table:
    """Rows = methods (each at its selection), columns = the comparison metrics in percent."""
    label = label or (lambda m: m.label)
    reference = next((m.entry.vs_reference["method"] for m in report.methods if m.entry.vs_reference), None)
    extra = [f"Δ WGA vs {reference}"] if reference else []
    headers = ["Method", *(["Seeds"] if with_seeds else []), "Budget", *[h for _, _, h in COMPARISON_COLUMNS],
               *extra]
    rows: list[list[Cell]] = []
    for m in report.methods:
        row: list[Cell] = [label(m), *([str(m.n_seeds)] if with_seeds else []), budget_text(m)]
        row += [Pct(m.get(split, key), m.n_seeds > 1, ci=m.ci95.get(key) if split == "test" else None)
                for split, key, _ in COMPARISON_COLUMNS]
        if reference:
            vs = m.entry.vs_reference
            row.append(Pct(Stat(vs["diff"]), ci=vs.get("ci95"), signed=True) if vs else
                       ("reference" if m.method == reference else MISSING))
        rows.append(row)
    col = headers.index("Test WGA")
    intervals = any(m.ci95 for m in report.methods)
    return Table(
        title=f"Comparison: each method at its configuration selected by {report.selection()} "
        f"(percent, {_seeds_note(report)}{'; test figures with their 95% intervals' if intervals else ''})",
        headers=headers,
        rows=rows,
        bold=best_cells(rows, col),
        caption=LEGEND + (" " + INTERVALS if intervals else "") + " " + BUDGET,
        text_columns=(headers.index("Budget"),),
    )


INTERVALS = ("[lo, hi]: 95% bootstrap interval, test rows resampled within groups (2,000 times, seed 0) and "
             "seeds resampled too; Δ: the paired difference to the reference on the same resamples.")
BUDGET = ("Budget: the candidate heads the selection chose among (configurations × the checkpoints each could "
          "keep; ≤: some could keep fewer, their anneal not over), the count budget_mismatch compares: a larger "
          "budget has more chances to fit validation noise.")


def budget_text(m: MethodResult) -> str:
    """``270 (18×≤20)``: the candidates, then configurations × the most checkpoints one could keep
    (``≤`` when some could keep fewer)."""
    b = m.entry.budget or {}
    if not b.get("configs"):
        return MISSING
    configs, checkpoints = b["configs"], b.get("checkpoints") or 1
    candidates = b.get("candidates")
    if not candidates:  # a summary written before candidates were counted
        return f"{configs}×{checkpoints}"
    return f"{candidates} ({configs}×{'' if candidates == configs * checkpoints else '≤'}{checkpoints})"


def rules_table(report: Report) -> Table | None:
    """Rows = methods, columns = selection rules: the test WGA (and accuracy) of the
    configuration each rule selects; the headline rule first. None when none was recorded."""
    from probe.records.rules import RULES

    names = [r for r in RULES if any(r in (m.entry.by_rule or {}) for m in report.methods)]
    if not names:
        return None
    headline = report.runs[0].selection
    names.sort(key=lambda r: r != headline)
    rows: list[list[Cell]] = []
    for m in report.methods:
        row: list[Cell] = [m.label]
        for r in names:
            choice = (m.entry.by_rule or {}).get(r)
            test = (choice or {}).get("test") or {}
            row.append(f"{_pct(test.get('wga'))} ({_pct(test.get('acc'))})" if choice else MISSING)
        rows.append(row)
    return Table(
        title="What each selection rule would have chosen: test WGA (test accuracy), percent",
        headers=["Method", *[f"{RULES[r].label}{' *' if r == headline else ''}" for r in names]],
        rows=rows,
        caption="* the headline rule of this run. Each rule chooses every head's checkpoint as well as the "
                "configuration (where the fit kept best checkpoints). Rules that read labels the run's regime "
                "hides are left out. "
                "The oracle selects on the test split: an upper bound on what selection could do, never a "
                "figure to report.",
    )


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}"


def best_cells(rows: list[list[Cell]], col: int) -> set[tuple[int, int]]:
    # Compare at the displayed precision so that visible ties are all bold.
    vals = [c.rounded() if isinstance(c := r[col], Pct) else None for r in rows]
    finite = [v for v in vals if v is not None]
    if not finite:
        return set()
    best = max(finite)
    return {(i, col) for i, v in enumerate(vals) if v == best}


COLLAPSE_HINT = (
    "Collapsed fits: heads that predict one class on validation, or are saturated at chance "
    "accuracy (never selected while another fit is not). For CMA this is the Hessian-only escape: "
    "the Hessian penalty outweighs the loss before the head has learned, and the head saturates; "
    "anneal longer (a larger anneal) or lower beta."
)


def selection_table(report: Report) -> Table:
    """What was searched and selected per method."""
    rows: list[list[Cell]] = [
        [m.label, ", ".join(m.varied) or MISSING, m.short_hparams, str(m.n_configs),
         str(m.n_diverged), str(m.n_collapsed)]
        for m in report.methods
    ]
    return Table(
        title=f"Selected configurations (by {report.selection()})",
        headers=["Method", "Searched", "Selected values", "Configs", "Diverged fits", "Collapsed fits"],
        rows=rows,
        first_numeric=3,
        caption=COLLAPSE_HINT if any(m.n_collapsed for m in report.methods) else "",
    )


def per_group_table(
    report: Report, label: Callable[[MethodResult], str] | None = None
) -> Table:
    """Rows = groups, columns = methods: test accuracy of each selected configuration."""
    label = label or (lambda m: m.label)
    groups = report.group_names
    # One n column when every method saw the same test rows per group; else n in each cell.
    ns = {g: {m.per_group[g].get("n") for m in report.methods if g in m.per_group} for g in groups}
    shared_n = all(len(v) <= 1 for v in ns.values())
    headers = ["Group", *(["n"] if shared_n else []), *[label(m) for m in report.methods]]
    rows: list[list[Cell]] = []
    for g in groups:
        row: list[Cell] = [g]
        if shared_n:
            row.append(str(next(iter(ns[g]))) if ns[g] else MISSING)
        for m in report.methods:
            d = m.per_group.get(g)
            if d is None:
                row.append(MISSING)
            else:
                row.append(Pct(Stat(d.get("mean"), d.get("std")), m.n_seeds > 1,
                               None if shared_n else d.get("n")))
        rows.append(row)
    return Table(
        title="Per-group test accuracy of the selected configurations (percent, n = test rows)",
        headers=headers,
        rows=rows,
        caption=f"Selected by {report.selection()}; {_seeds_note(report)}.",
    )


#: the bound terms (probe.diagnostics.bounds.TERMS) as the table heads them
BOUND_HEADERS = {"grad": "Δ∇L", "hess": "Δ∇²L", "third": "Δ∇³L"}
#: more training domains than this: the loss columns become min and max
MAX_LOSS_COLUMNS = 8


def _num(stat: Stat, show_std: bool) -> str:
    if stat.mean is None or not math.isfinite(stat.mean):
        return MISSING
    body = f"{stat.mean:.3g}"
    return body + (f" ± {stat.std:.2g}" if show_std and stat.std is not None else "")


def bounds_table(report: Report) -> Table | None:
    """Rows = methods at their selection: the per-domain losses and the max pairwise derivative
    distances (results.jsonl ``bounds``); None when no method recorded them."""
    stats = [(m, m.bound_stats()) for m in report.methods]
    if not any(b for _, b in stats):
        return None
    names = list(dict.fromkeys(n for _, b in stats if b for n in b.losses))
    wide = len(names) <= MAX_LOSS_COLUMNS
    loss_headers = [f"L ({n})" for n in names] if wide else ["L min", "L max"]
    matched = any(b and b.free_terms for _, b in stats)
    free_headers = ["CE", *[f"{h} free" for h in BOUND_HEADERS.values()]] if matched else []
    rows: list[list[Cell]] = []
    for m, b in stats:
        if b is None:
            rows.append([m.label, MISSING, *[MISSING] * (len(loss_headers) + len(BOUND_HEADERS) + len(free_headers))])
            continue
        show = b.n > 1
        rows_text = "/".join(map(str, b.rows)) + ("" if b.rows == [b.train_rows] else f" of {b.train_rows}")
        if wide:
            losses = [_num(b.losses.get(n, Stat(None)), show) for n in names]
        else:
            means = [s.mean for s in b.losses.values() if s.mean is not None]
            losses = [f"{min(means):.3g}", f"{max(means):.3g}"] if means else [MISSING, MISSING]
        free = ([_num(b.curve_ce, show), *[_num(b.free_terms.get(t, Stat(None)), show) for t in BOUND_HEADERS]]
                if matched else [])
        rows.append([m.label, rows_text, *losses, *[_num(b.terms.get(t, Stat(None)), show) for t in BOUND_HEADERS],
                     *free])
    domains = sorted({b.domain for _, b in stats if b})
    return Table(
        title="Transfer-bound terms of the selected configurations, on the training domains "
        f"({', '.join(domains)}; {_seeds_note(report)})",
        headers=["Method", "Train rows", *loss_headers, *BOUND_HEADERS.values(), *free_headers],
        rows=rows,
        caption="L (e): mean cross-entropy of training domain e. Δ∇ⁿL: the largest ‖∇ⁿL_e − ∇ⁿL_f‖_F over "
        "pairs of training domains, n = 1, 2, 3 (gradient, Hessian, third derivative w.r.t. the head's "
        "weights and bias on its own preprocessed features, exact), the terms the CMA paper's transfer "
        "bounds are made of. Measured at the kept checkpoint on the train rows shown (\"of N\": a fixed "
        "sample of the N, stratified by domain, the same for every method)."
        + (" CE: the kept head's cross-entropy on the curve's rows; Δ∇ⁿL free: its penalty-free counterpart's "
           "distances (trained beside it on the same batches) where that head's cross-entropy was the same, so a "
           "head is compared with the penalty-free path at the same fit, not with a head fitted further "
           "(– when the path never reached that cross-entropy)." if matched else ""),
    )


def main_tables(report: Report) -> list[Table]:
    """The comparison, rules, selection, per-group and (when recorded) bound tables, in the
    order every format shows them."""
    optional = [t for t in (rules_table(report),) if t is not None]
    bounds = bounds_table(report)
    return [comparison_table(report), *optional, selection_table(report), per_group_table(report),
            *([bounds] if bounds else [])]


def grid_tables(report: Report) -> list[Table]:
    """For each method and each searched hyperparameter, the configurations around the selection."""
    tables = []
    for m in report.methods:
        for k, fixed, configs in m.grid_slices():
            others = ", ".join(f"{j}={format_value(v)}" for j, v in fixed.items())
            rows: list[list[Cell]] = []
            for c in configs:
                rows.append([
                    format_value(c.hparams.get(k)),
                    Pct(c.get("val", "wga"), c.n_seeds > 1),
                    Pct(c.get("test", "wga"), c.n_seeds > 1),
                    Pct(c.get("test", "acc"), c.n_seeds > 1),
                    str(c.n_seeds),
                    c.status,
                    "selected" if c is m.selected_config else "",
                ])
            tables.append(Table(
                title=f"{m.label}: {k} varied" + (f" ({others} as selected)" if others else ""),
                headers=[k, "Val WGA", "Test WGA", "Test Acc", "Seeds", "Status", ""],
                rows=rows,
                text_columns=(5, 6),
                bold={(i, j) for i, r in enumerate(rows) if r[-1] for j in range(len(r))},
            ))
    return tables
