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
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.io import write_text_atomic
from probe.metrics import METRIC_KEYS, mean_std, per_group_mean_std

FORMATS = ("terminal", "markdown", "csv", "json", "latex")

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

# Display names for the paper table; unknown methods keep their CLI name.
PAPER_NAMES = {
    "erm": "ERM", "cma": "CMA", "groupdro": "GroupDRO", "dfr": "DFR", "irm": "IRMv1",
    "irmv1": "IRMv1", "vrex": "V-REx", "fishr": "Fishr", "reweight": "Reweighting",
    "rw": "Reweighting", "jtt": "JTT",
}


# --------------------------------------------------------------------------- loading


@dataclass
class RunFolder:
    """One `probe fit --out` folder: summary.json and results.jsonl, parsed."""

    path: Path
    summary: dict[str, Any]
    results: list[dict[str, Any]]
    name: str = ""

    @property
    def group_names(self) -> list[str]:
        return [str(g) for g in self.summary.get("group_names") or []]

    @property
    def selection(self) -> str:
        return str((self.summary.get("provenance") or {}).get("selection") or "val_wga")

    @property
    def features(self) -> dict[str, Any]:
        return (self.summary.get("provenance") or {}).get("features") or {}


def load_run(path: str | Path) -> RunFolder:
    """Read and check one run folder; every problem is a one-line UserError naming the file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"run folder {p} does not exist; pass a folder written by `probe fit --out`")
    if not p.is_dir():
        raise UserError(f"{p} is not a folder; pass a run folder written by `probe fit --out`")
    summary = _read_json(p / "summary.json")
    results = _read_jsonl(p / "results.jsonl")
    _check_summary(p / "summary.json", summary)
    return RunFolder(path=p, summary=summary, results=results, name=p.name)


def _missing(file: Path) -> UserError:
    return UserError(
        f"{file} is missing: {file.parent} is not a finished `probe fit` run folder "
        f"(rerun `probe fit ... --out {file.parent}`)"
    )


def _read_text(file: Path) -> str:
    if not file.is_file():
        raise _missing(file)
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{file} is not UTF-8 text ({exc.reason}); rerun `probe fit`") from exc
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror}") from exc


def _read_json(file: Path) -> dict[str, Any]:
    text = _read_text(file)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{file} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the run folder is damaged, rerun `probe fit`"
        ) from exc
    if not isinstance(obj, dict):
        raise UserError(f"{file} holds a JSON {type(obj).__name__}, not an object; rerun `probe fit`")
    return obj


def _read_jsonl(file: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{file} line {lineno} is not valid JSON ({exc.msg}, column {exc.colno}); "
                "the run folder is damaged, rerun `probe fit`"
            ) from exc
        if not isinstance(row, dict):
            raise UserError(f"{file} line {lineno} is not a JSON object; rerun `probe fit`")
        for key, kind in (("method", str), ("hparams", dict)):
            if not isinstance(row.get(key), kind):
                raise UserError(
                    f"{file} line {lineno} has no {key!r} {kind.__name__}; "
                    "it is not a `probe fit` results file"
                )
        rows.append(row)
    return rows


def _check_summary(file: Path, summary: dict[str, Any]) -> None:
    methods = summary.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise UserError(f"{file} has no 'methods' object; it is not a finished `probe fit` summary")
    for name, entry in methods.items():
        if not isinstance(entry, dict):
            raise UserError(f"{file}: methods.{name} is not an object; rerun `probe fit`")
        # null: nothing could be selected (every configuration diverged); reported as such.
        selected = entry.get("selected")
        if selected is None:
            continue
        if not isinstance(selected, dict) or not isinstance(selected.get("hparams"), dict):
            raise UserError(f"{file}: methods.{name}.selected.hparams is missing or not an object")
        if not isinstance(selected.get("run_ids", []), list):
            raise UserError(f"{file}: methods.{name}.selected.run_ids is not a list")


# --------------------------------------------------------------------------- model


@dataclass
class Stat:
    """Mean and standard deviation over seeds of one fraction (None when unavailable)."""

    mean: float | None
    std: float | None = None

    def to_json(self) -> dict[str, float | None]:
        return {"mean": self.mean, "std": self.std}


@dataclass
class Config:
    """All seeds of one hyperparameter configuration (hparams without the seed)."""

    hparams: dict[str, Any]
    rows: list[dict[str, Any]]
    index: int  # position of its first row in results.jsonl: ties go to the earlier one
    stats: dict[str, dict[str, Stat]] = field(default_factory=dict)  # split -> key -> Stat

    @property
    def status(self) -> str:
        bad = sorted({str(r.get("status", "ok")) for r in self.rows} - {"ok"})
        if not bad:
            return "ok"
        n_bad = sum(1 for r in self.rows if r.get("status", "ok") != "ok")
        return f"{n_bad}/{len(self.rows)} {'/'.join(bad)}"

    @property
    def n_seeds(self) -> int:
        return len(self.rows)

    def get(self, split: str, key: str) -> Stat:
        return self.stats.get(split, {}).get(key, Stat(None))


@dataclass
class MethodResult:
    """One method of one run folder at its selected configuration."""

    run: RunFolder
    method: str
    label: str
    selected: dict[str, Any]
    run_ids: list[str]
    n_seeds: int
    stats: dict[str, dict[str, Stat]]  # split -> metric key -> Stat
    per_group: dict[str, dict[str, Any]]  # group -> {"mean", "std", "n"} on test
    configs: list[Config]
    selected_config: Config | None
    varied: list[str]  # hyperparameters that take several values in this method's grid
    n_configs: int
    n_diverged: int

    def get(self, split: str, key: str) -> Stat:
        return self.stats.get(split, {}).get(key, Stat(None))

    @property
    def selected_rows(self) -> list[dict[str, Any]]:
        return self.selected_config.rows if self.selected_config else []

    @property
    def short_hparams(self) -> str:
        """The selected values of the hyperparameters that were searched over."""
        if self.selected_config is None and not self.selected:
            return "nothing selected"
        return ", ".join(f"{k}={format_value(self.selected.get(k))}" for k in self.varied) or "–"

    def grid_slices(self) -> list[tuple[str, dict[str, Any], list[Config]]]:
        """(hparam, the other varied hparams' selected values, configs) per varied hparam."""
        if self.selected_config is None:
            return []
        sel = self.selected_config.hparams
        out = []
        for k in self.varied:
            fixed = {j: sel.get(j) for j in self.varied if j != k}
            members = [
                c for c in self.configs
                if all(_canon(c.hparams.get(j)) == _canon(v) for j, v in fixed.items())
            ]
            members.sort(key=lambda c, k=k: _sort_key(c.hparams.get(k)))
            out.append((k, fixed, members))
        return out


SELECTION_NAMES = {"val_wga": ("validation WGA", "validation worst-group accuracy"),
                   "val_acc": ("validation accuracy", "validation accuracy")}


@dataclass
class Report:
    runs: list[RunFolder]
    methods: list[MethodResult]

    def selection(self, long: bool = False) -> str:
        """How the configurations were selected, e.g. "validation WGA"."""
        names = {SELECTION_NAMES.get(r.selection, (r.selection, r.selection))[long]
                 for r in self.runs}
        return names.pop() if len(names) == 1 else " or ".join(sorted(names)) + " (per run)"

    @property
    def group_names(self) -> list[str]:
        """Union of all runs' group names, in first-seen order."""
        seen: dict[str, None] = {}
        for m in self.methods:
            for g in [*m.run.group_names, *m.per_group]:
                seen.setdefault(g, None)
        return list(seen)


def _canon(value: Any) -> str:
    # 1000 and 1000.0 are the same hyperparameter value.
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(float(value))
    return json.dumps(value, sort_keys=True, default=str)


def _config_key(hparams: dict[str, Any]) -> str:
    return json.dumps({k: _canon(v) for k, v in sorted(hparams.items()) if k != "seed"})


def _sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _stats_from(ms: dict[str, Any] | None) -> dict[str, Stat]:
    ms = ms or {}
    return {
        k: Stat(ms[k].get("mean"), ms[k].get("std")) if isinstance(ms.get(k), dict) else Stat(None)
        for k in METRIC_KEYS
    }


def _split_of(row: dict[str, Any], split: str) -> dict[str, Any] | None:
    return (row.get("metrics") or {}).get(split)


def build_configs(rows: Iterable[dict[str, Any]]) -> list[Config]:
    """Group one method's result rows by hyperparameters without the seed, in file order."""
    by_key: dict[str, Config] = {}
    for i, row in enumerate(rows):
        key = _config_key(row["hparams"])
        if key not in by_key:
            hp = {k: v for k, v in row["hparams"].items() if k != "seed"}
            by_key[key] = Config(hparams=hp, rows=[], index=i)
        by_key[key].rows.append(row)
    for c in by_key.values():
        ok = [r for r in c.rows if r.get("status", "ok") == "ok"] or c.rows
        c.stats = {s: _stats_from(mean_std([_split_of(r, s) for r in ok])) for s in ("val", "test")}
    return list(by_key.values())


def _varied(configs: Sequence[Config]) -> list[str]:
    keys: dict[str, set[str]] = {}
    for c in configs:
        for k in c.hparams:
            keys.setdefault(k, set())
    for c in configs:
        for k in keys:
            keys[k].add(_canon(c.hparams.get(k)))
    return [k for k, vals in keys.items() if len(vals) > 1]


def _method_result(run: RunFolder, method: str, label: str) -> MethodResult:
    entry = run.summary["methods"][method]
    chosen = entry.get("selected") or {}
    selected = {k: v for k, v in (chosen.get("hparams") or {}).items() if k != "seed"}
    run_ids = [str(r) for r in chosen.get("run_ids") or []]
    rows = [r for r in run.results if r["method"] == method]
    configs = build_configs(rows)

    sel_config = None
    if run_ids:
        sel_config = next((c for c in configs if any(r.get("run_id") == run_ids[0] for r in c.rows)), None)
    if sel_config is None and chosen:
        key = _config_key(selected)
        sel_config = next((c for c in configs if _config_key(c.hparams) == key), None)
    by_id = {r.get("run_id"): r for r in rows}
    sel_rows = [by_id[i] for i in run_ids if i in by_id] or (sel_config.rows if sel_config else [])

    # summary.json is the contract; results.jsonl fills in what it lacks.
    seeds = entry.get("seeds") or {}
    stats: dict[str, dict[str, Stat]] = {}
    for split in ("val", "test"):
        if isinstance(seeds.get(split), dict):
            stats[split] = _stats_from(seeds[split])
        elif sel_rows:
            stats[split] = _stats_from(mean_std([_split_of(r, split) for r in sel_rows]))
        else:
            stats[split] = _stats_from(
                {k: {"mean": v} for k, v in ((entry.get("metrics") or {}).get(split) or {}).items()}
            )
    n_seeds = len(run_ids) or len(sel_rows) or int((seeds.get("test") or {}).get("n_seeds") or 0)

    if sel_rows:
        per_group = per_group_mean_std([_split_of(r, "test") for r in sel_rows])
    else:
        pg = ((entry.get("metrics") or {}).get("test") or {}).get("per_group") or {}
        per_group = {g: {"mean": d.get("acc"), "std": None, "n": d.get("n")} for g, d in pg.items()}

    n_div = entry.get("n_diverged")
    if n_div is None:
        n_div = sum(1 for r in rows if r.get("status") == "diverged")
    return MethodResult(
        run=run, method=method, label=label, selected=selected, run_ids=run_ids,
        n_seeds=n_seeds, stats=stats, per_group=per_group, configs=configs,
        selected_config=sel_config, varied=_varied(configs),
        n_configs=int(entry.get("n_configs") or len(configs)), n_diverged=int(n_div),
    )


def _run_names(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing path parts that tell the run folders apart."""
    parts = [p.resolve().parts for p in paths]
    names = []
    for i, pp in enumerate(parts):
        for depth in range(1, len(pp) + 1):
            tail = pp[-depth:]
            if all(q[-depth:] != tail for j, q in enumerate(parts) if j != i and q != pp):
                break
        names.append("/".join(tail) or str(paths[i]))
    # The same folder passed twice: number the repeats.
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}#{seen[n]}"
    return names


def build_report(run_dirs: Sequence[str | Path] | Sequence[RunFolder]) -> Report:
    """Load the run folders and assemble one comparison over all their methods."""
    if not run_dirs:
        raise UserError("no run folder given; pass one or more folders written by `probe fit --out`")
    runs = [r if isinstance(r, RunFolder) else load_run(r) for r in run_dirs]
    for run, name in zip(runs, _run_names([r.path for r in runs]), strict=True):
        run.name = name
    count: dict[str, int] = {}
    for run in runs:
        for m in run.summary["methods"]:
            count[m] = count.get(m, 0) + 1
    methods = [
        _method_result(run, m, m if count[m] == 1 else f"{m} ({run.name})")
        for run in runs
        for m in run.summary["methods"]
    ]
    return Report(runs=runs, methods=methods)


# --------------------------------------------------------------------------- tables


@dataclass
class Pct:
    """A percentage cell: mean (and std over seeds when there are several)."""

    stat: Stat
    show_std: bool = True
    n: int | None = None  # row count, shown as "(n=...)" when set

    def text(self, pm: str = "±", missing: str = "–") -> str:
        if self.stat.mean is None or not math.isfinite(self.stat.mean):
            body = missing
        else:
            body = f"{100 * self.stat.mean:.1f}"
            if self.show_std and self.stat.std is not None:
                body += f" {pm} {100 * self.stat.std:.1f}"
        return body if self.n is None else f"{body} (n={self.n})"

    def rounded(self) -> float | None:
        m = self.stat.mean
        return round(100 * m, 1) if m is not None and math.isfinite(m) else None


Cell = str | Pct
MISSING = "–"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    caption: str = ""
    first_numeric: int = 1  # columns from here on are right-aligned...
    text_columns: tuple[int, ...] = ()  # ...except these


def _seed_counts(report: Report) -> list[int]:
    return sorted({m.n_seeds for m in report.methods if m.n_seeds > 0}) or [1]


def _seeds_note(report: Report) -> str:
    ns = _seed_counts(report)
    if ns == [1]:
        return "one seed each"
    if len(ns) == 1:
        return f"mean ± std over {ns[0]} seeds"
    return f"mean ± std over {ns[0]}–{ns[-1]} seeds, see Seeds"


def paper_label(m: MethodResult) -> str:
    """The method's display name for a paper, with its run folder when ambiguous."""
    name = PAPER_NAMES.get(m.method, m.method)
    return name if m.label == m.method else f"{name} ({m.run.name})"


def comparison_table(
    report: Report, with_seeds: bool = True, label: Callable[[MethodResult], str] | None = None
) -> Table:
    """Rows = methods (each at its selection), columns = the comparison metrics in percent."""
    label = label or (lambda m: m.label)
    headers = ["Method", *(["Seeds"] if with_seeds else []), *[h for _, _, h in COMPARISON_COLUMNS]]
    rows: list[list[Cell]] = []
    for m in report.methods:
        row: list[Cell] = [label(m), *([str(m.n_seeds)] if with_seeds else [])]
        row += [Pct(m.get(split, key), m.n_seeds > 1) for split, key, _ in COMPARISON_COLUMNS]
        rows.append(row)
    col = headers.index("Test WGA")
    return Table(
        title=f"Comparison: each method at its configuration selected by {report.selection()} "
        f"(percent, {_seeds_note(report)})",
        headers=headers,
        rows=rows,
        bold=_best_cells(rows, col),
        caption=LEGEND,
    )


def _best_cells(rows: list[list[Cell]], col: int) -> set[tuple[int, int]]:
    # Compare at the displayed precision so that visible ties are all bold.
    vals = [r[col].rounded() if isinstance(r[col], Pct) else None for r in rows]
    finite = [v for v in vals if v is not None]
    if not finite:
        return set()
    best = max(finite)
    return {(i, col) for i, v in enumerate(vals) if v == best}


def selection_table(report: Report) -> Table:
    """What was searched and selected per method."""
    rows: list[list[Cell]] = [
        [m.label, ", ".join(m.varied) or MISSING, m.short_hparams, str(m.n_configs),
         str(m.n_diverged)]
        for m in report.methods
    ]
    return Table(
        title=f"Selected configurations (by {report.selection()})",
        headers=["Method", "Searched", "Selected values", "Configs", "Diverged fits"],
        rows=rows,
        first_numeric=3,
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


def format_value(value: Any) -> str:
    """A hyperparameter value, compactly: 1000.0 -> 1000, 1e-05 -> 1e-05."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------- renderers


def _run_lines(report: Report) -> list[str]:
    lines = []
    for run in report.runs:
        feats = run.features
        bits = [f"{k} {feats[k]}" for k in ("dataset", "encoder") if feats.get(k)]
        n_cfg = sum(len(m.configs) for m in report.methods if m.run is run)
        bits.append(f"{n_cfg} configurations ({len(run.results)} fits)")
        bits.append(f"selection {run.selection}")
        lines.append(f"{run.name} ({run.path}): " + ", ".join(bits))
    return lines


def render_markdown(report: Report) -> str:
    out = ["# probe report", ""]
    out += [f"- {line}" for line in _run_lines(report)]
    out.append("")
    for t in (comparison_table(report), selection_table(report), per_group_table(report)):
        out += _md_table(t, "##")
    out += ["## Grid around each selection", "", GRID_DESCRIPTION, ""]
    grids = grid_tables(report)
    out += [f"- {m.label}: one configuration, nothing varied" for m in report.methods if not m.varied]
    if any(not m.varied for m in report.methods):
        out.append("")
    for t in grids:
        out += _md_table(t, "###")
    return "\n".join(out).rstrip() + "\n"


def _numeric(t: Table, j: int) -> bool:
    return j >= t.first_numeric and j not in t.text_columns


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(t: Table, level: str) -> list[str]:
    def cell(i: int, j: int, c: Cell) -> str:
        s = _md_escape(c.text() if isinstance(c, Pct) else c)
        return f"**{s}**" if (i, j) in t.bold and s and s != "–" else s

    lines = [f"{level} {t.title}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in t.headers) + " |")
    lines.append("|" + "|".join("---:" if _numeric(t, j) else ":---" for j in range(len(t.headers))) + "|")
    for i, row in enumerate(t.rows):
        lines.append("| " + " | ".join(cell(i, j, c) for j, c in enumerate(row)) + " |")
    lines.append("")
    if t.caption:
        lines += [t.caption, ""]
    return lines


def _plain(c: Cell) -> str:
    return c.text() if isinstance(c, Pct) else c


def _rich_tables(report: Report, grid: bool = True) -> list[Any]:
    from rich import box
    from rich.markup import escape
    from rich.table import Table as RichTable

    def to_rich(t: Table) -> RichTable:
        rt = RichTable(title=t.title, caption=t.caption or None, title_justify="left",
                       caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                       show_edge=False, collapse_padding=True)
        for j, h in enumerate(t.headers):
            if not _numeric(t, j):
                # Labels keep their width; on a narrow terminal numbers wrap rather than
                # being cut off with an ellipsis.
                width = max([len(h), *(len(_plain(r[j])) for r in t.rows)])
                rt.add_column(h, min_width=min(width, 24))
            else:
                two_lines = h.replace(" (", "\n(", 1) if " (" in h else h.replace(" ", "\n", 1)
                cells = max([1, *(len(_plain(r[j])) for r in t.rows)])
                rt.add_column(two_lines, justify="right", overflow="fold", min_width=cells)
        for i, row in enumerate(t.rows):
            rt.add_row(*[
                escape(_plain(c)) if (i, j) not in t.bold else f"[bold]{escape(_plain(c))}[/bold]"
                for j, c in enumerate(row)
            ])
        return rt

    tables = [comparison_table(report), selection_table(report), per_group_table(report)]
    if grid:
        tables += grid_tables(report)
    return [to_rich(t) for t in tables]


def render_terminal(report: Report, console: Any = None, grid: bool = True) -> str:
    """Print rich tables to ``console``; with no console, return them as plain text."""
    from rich.console import Console

    buf = None
    if console is None:
        buf = io.StringIO()
        console = Console(file=buf, width=160, color_system=None, force_terminal=False)
    for line in _run_lines(report):
        console.print(line, markup=False, highlight=False)
    for rt in _rich_tables(report, grid=grid):
        console.print()
        console.print(rt)
    if grid:
        console.print()
        console.print(GRID_DESCRIPTION, markup=False, highlight=False)
        for m in report.methods:
            if not m.varied:
                console.print(f"{m.label}: one configuration, nothing varied", markup=False)
    return buf.getvalue() if buf is not None else ""


def report_dict(report: Report) -> dict[str, Any]:
    """Everything in the report as JSON-ready fractions."""
    def stats(d: dict[str, dict[str, Stat]]) -> dict[str, Any]:
        return {s: {k: v.to_json() for k, v in ks.items()} for s, ks in d.items()}

    def ident(m: MethodResult) -> dict[str, Any]:
        return {"label": m.label, "method": m.method, "run_dir": str(m.run.path)}

    return {
        "selection": f"{report.selection(long=True)}, mean over seeds, hparams without seed",
        "legend": LEGEND,
        "runs": [
            {"name": r.name, "path": str(r.path), "selection": r.selection,
             "group_names": r.group_names, "provenance": r.summary.get("provenance")}
            for r in report.runs
        ],
        "comparison": [
            {**ident(m), "n_seeds": m.n_seeds, "selected_hparams": m.selected,
             "run_ids": m.run_ids, "n_configs": m.n_configs, "n_diverged": m.n_diverged,
             **stats(m.stats)}
            for m in report.methods
        ],
        "per_group": [{**ident(m), "test": m.per_group} for m in report.methods],
        "grid": [
            {**ident(m), "mode": GRID_MODE, "searched": m.varied, "slices": [
                {"hparam": k, "fixed": fixed, "configs": [
                    {"hparams": c.hparams, "selected": c is m.selected_config,
                     "status": c.status, "n_seeds": c.n_seeds, **stats(c.stats)}
                    for c in configs
                ]}
                for k, fixed, configs in m.grid_slices()
            ]}
            for m in report.methods
        ],
    }


def render_json(report: Report) -> str:
    from base.io import json_default

    return json.dumps(report_dict(report), indent=2, default=json_default) + "\n"


def render_csv(report: Report) -> str:
    """The comparison table, one row per method, fractions in [0, 1]; mean and std apart."""
    groups = report.group_names
    header = ["label", "method", "run_dir", "n_seeds", "selected_hparams"]
    for split in ("val", "test"):
        for key in METRIC_KEYS:
            header += [f"{split}_{key}_mean", f"{split}_{key}_std"]
    for g in groups:
        header += [f"test_group[{g}]_acc_mean", f"test_group[{g}]_acc_std", f"test_group[{g}]_n"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for m in report.methods:
        row: list[Any] = [m.label, m.method, str(m.run.path), m.n_seeds,
                          json.dumps(m.selected, sort_keys=True)]
        for split in ("val", "test"):
            for key in METRIC_KEYS:
                s = m.get(split, key)
                row += [_num(s.mean), _num(s.std)]
        for g in groups:
            d = m.per_group.get(g) or {}
            row += [_num(d.get("mean")), _num(d.get("std")), d.get("n", "")]
        w.writerow(row)
    return buf.getvalue()


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(report: Report) -> str:
    """A booktabs comparison table (and the per-group table) ready for a paper."""
    ns = _seed_counts(report)
    seeds = ("a single seed" if ns == [1] else
             f"mean $\\pm$ std over {ns[0]} seeds" if len(ns) == 1 else
             f"mean $\\pm$ std over {ns[0]}--{ns[-1]} seeds")
    caption = (
        "Test worst-group accuracy (WGA) and average accuracies (\\%), " + seeds + ". "
        f"Each method's hyperparameters are selected by {report.selection(long=True)}. "
        "Acc: plain accuracy over all test samples; "
        "Avg (train-weighted): test group accuracies weighted by the train split's group sizes "
        "(the usual Waterbirds ``average accuracy''); "
        "Avg (group mean): unweighted mean of the test group accuracies. "
        "Best test WGA in bold."
    )
    pg_caption = (
        "Per-group test accuracy (\\%) of each method's configuration selected by "
        f"{report.selection(long=True)}, " + seeds + "; n is the number of test samples in the group."
    )
    # The caption states the seeds, so the paper table has no Seeds column.
    table = comparison_table(report, with_seeds=False, label=paper_label)
    out = ["% Generated by `probe report --format latex`; needs \\usepackage{booktabs}."]
    out += _latex_table(table, caption, "tab:probe-comparison")
    out.append("")
    out += _latex_table(per_group_table(report, label=paper_label), pg_caption, "tab:probe-per-group")
    return "\n".join(out) + "\n"


def _latex_table(t: Table, caption: str, label: str) -> list[str]:
    def cell(i: int, j: int, c: Cell) -> str:
        if isinstance(c, Pct):
            s = c.text(pm="$\\pm$", missing="--")
        else:
            s = "--" if c == MISSING else latex_escape(c)
        return f"\\textbf{{{s}}}" if (i, j) in t.bold and s != "--" else s

    spec = "".join("c" if _numeric(t, j) else "l" for j in range(len(t.headers)))
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}",
             f"\\label{{{label}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(h) for h in t.headers) + " \\\\", "\\midrule"]
    for i, row in enumerate(t.rows):
        lines.append(" & ".join(cell(i, j, c) for j, c in enumerate(row)) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return lines


def render(report: Report, fmt: str) -> str:
    """The report as text in ``fmt`` (one of FORMATS)."""
    renderers = {
        "terminal": render_terminal, "markdown": render_markdown, "csv": render_csv,
        "json": render_json, "latex": render_latex,
    }
    if fmt not in renderers:
        raise UserError(f"--format {fmt!r} is not a format; use one of {', '.join(FORMATS)}")
    return renderers[fmt](report)


# --------------------------------------------------------------------------- entry points


def write_report(
    run_dirs: Sequence[str | Path], fmt: str = "terminal", out: str | Path | None = None,
    plots: str | Path | None = None,
) -> list[Path]:
    """`probe report`: render (print, or write ``out`` atomically) and optionally write plots.

    Returns the files written.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not a format; use one of {', '.join(FORMATS)}")
    report = build_report(run_dirs)
    written: list[Path] = []
    if out is not None:
        write_text_atomic(out, render(report, fmt))
        written.append(Path(out))
    elif fmt == "terminal":
        render_terminal(report, console=_stdout_console())
    else:
        print(render(report, fmt), end="")
    if plots is not None:
        from probe.plots import write_plots

        written += write_plots(report, plots)
    return written


def print_fit_summary(run_dir: Path, quiet: bool = False) -> None:
    """What `probe fit` prints at its end: the comparison table and where the files are.

    ``quiet`` prints nothing (the files hold everything; `probe report` shows it later).
    """
    if quiet:
        return
    from rich.table import Table as RichTable

    report = build_report([run_dir])
    console = _stdout_console()
    rt = _rich_tables(report, grid=False)[0]
    console.print(rt)
    run = report.runs[0]
    files = RichTable.grid(padding=(0, 2))
    files.add_row("results", f"{run.path / 'results.jsonl'} ({len(run.results)} configurations)")
    files.add_row("summary", str(run.path / "summary.json"))
    for m in report.methods:
        head = run.summary["methods"][m.method].get("head")
        if head:
            files.add_row(f"head {m.method}", str(run.path / head))
    console.print(files)
    console.print(
        f"Per-group and grid tables: probe report {run.path}; figures: "
        f"probe report {run.path} --plots DIR",
        markup=False, highlight=False,
    )


def _stdout_console() -> Any:
    from rich.console import Console

    console = Console()
    # Redirected output has no width; 80 columns would wrap the wide tables.
    return console if console.is_terminal else Console(width=160)


def write_demo_outputs(run_dir: Path) -> list[Path]:
    """Write RUN_DIR/report.md (Markdown comparison, per-group and grid tables) and the PNGs.

    The same as `probe report RUN_DIR --format markdown --out RUN_DIR/report.md --plots RUN_DIR`.
    """
    run_dir = Path(run_dir)
    return write_report([run_dir], fmt="markdown", out=run_dir / "report.md", plots=run_dir)


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"
