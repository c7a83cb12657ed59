"""The report model: each method of each run folder at its selected configuration.

:func:`build_report` turns run folders into a :class:`Report`: per method the
configuration selected in summary.json (its statistics over seeds, per-group
test accuracies) and every configuration of its grid, grouped by
:func:`probe.records.results.config_key` (hyperparameters without the seed), the same
key selection uses. Tables, formats and plots read this model and nothing else.

summary.json arrives typed (:class:`probe.records.summary.Summary`); over seeds every
figure is a :class:`probe.records.summary.Stat`, the one rule for mean, std and SEM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import UserError
from probe.records.metrics import METRIC_KEYS
from probe.records.results import Result, canonical, config_key
from probe.records.summary import MethodSummary, Stat, per_group_stats, seed_stats
from probe.reports.runfolder import RunFolder, distinct_names, load_runs

#: each headline rule (probe.records.rules) as tables name it: (short, long)
SELECTION_NAMES = {"val_wga": ("validation WGA", "validation worst-group accuracy"),
                   "val_worst_class": ("validation worst-class accuracy", "worst per-class validation accuracy"),
                   "val_acc": ("validation accuracy", "validation accuracy")}

SPLITS = ("val", "test")  # the splits a report shows


def display_name(method: str) -> str:
    """How a paper writes the method (``cma`` -> ``CMA``), as its registry entry declares;
    a method no longer registered keeps its name."""
    from probe.methods import display_name as registered

    return registered(method)


def format_value(value: Any) -> str:
    """A hyperparameter value, compactly: 1000.0 -> 1000, 1e-05 -> 1e-05."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def value_order(value: Any) -> tuple[int, float, str]:
    """Sort key for one hyperparameter's values: numbers ascending, then the rest by text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


@dataclass
class BoundStats:
    """A selection's bound terms over its seeds (results.jsonl ``bounds``)."""

    domain: str  # the column defining the training domains
    n: int  # seeds with figures
    rows: list[int]  # training rows measured (one value unless seeds differ)
    train_rows: int
    terms: dict[str, Stat]  # probe.diagnostics.bounds.TERMS (grad, hess, third) -> max pairwise distance
    losses: dict[str, Stat]  # domain name -> mean cross-entropy
    #: on the curve's rows at the kept step: the head's cross-entropy, and the penalty-free
    #: path's distances where its cross-entropy was the same (empty when not recorded)
    curve_ce: Stat = field(default_factory=lambda: Stat(None))
    free_terms: dict[str, Stat] = field(default_factory=dict)


def matched_fit(row: Result) -> tuple[float, dict[str, float | None]] | None:
    """The row's cross-entropy on its curve's rows at the kept step, and its penalty-free
    counterpart's bound distances at the step where that counterpart's cross-entropy was the
    same (linear between the two evaluations around it); None when not recorded, or when
    the penalty-free path never came to that cross-entropy."""
    own = (row.bounds or {}).get("curve") or {}
    free = (row.penalty_free or {}).get("curve") or {}
    steps, ces = own.get("step") or [], own.get("ce") or []
    if row.best_step not in steps or not free.get("ce"):
        return None
    target = ces[steps.index(row.best_step)]
    path = free["ce"]
    for i in range(len(path) - 1):
        a, b = path[i], path[i + 1]
        if a is None or b is None or not min(a, b) <= target <= max(a, b):
            continue
        w = 0.0 if a == b else (target - a) / (b - a)
        return target, {t: _between(free.get(t), i, w) for t in ("grad", "hess", "third")}
    return None


def _between(values: list[float | None] | None, i: int, w: float) -> float | None:
    if not values or values[i] is None or values[i + 1] is None:
        return None
    return (1 - w) * values[i] + w * values[i + 1]


@dataclass
class Config:
    """All seeds of one hyperparameter configuration (hparams without the seed)."""

    hparams: dict[str, Any]
    rows: list[Result]
    index: int  # position of its first row in results.jsonl: ties go to the earlier one
    stats: dict[str, dict[str, Stat]] = field(default_factory=dict)  # split -> key -> Stat

    @property
    def status(self) -> str:
        bad = sorted({r.status for r in self.rows} - {"ok"})
        if not bad:
            return "ok"
        n_bad = sum(1 for r in self.rows if r.status != "ok")
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
    n_collapsed: int = 0
    labelled: list[str] = field(default_factory=list)  # shown in labels: varied, then non-zero optional terms
    #: the run's summary entry (budget, diagnostics, intervals, every rule's choice)
    entry: MethodSummary = field(default_factory=lambda: MethodSummary(None))

    def get(self, split: str, key: str) -> Stat:
        return self.stats.get(split, {}).get(key, Stat(None))

    @property
    def ci95(self) -> dict[str, Any]:
        """{"wga": [lo, hi], "acc": [lo, hi]} of the test figures (empty: not recorded)."""
        return self.entry.ci95

    @property
    def diagnostics(self) -> list[dict[str, str]]:
        return self.entry.diagnostics or []

    @property
    def selected_rows(self) -> list[Result]:
        return self.selected_config.rows if self.selected_config else []

    @property
    def short_hparams(self) -> str:
        """The selected values of the hyperparameters that were searched over."""
        if self.selected_config is None and not self.selected:
            return "nothing selected"
        shown = self.labelled or self.varied
        return ", ".join(f"{k}={format_value(self.selected.get(k))}" for k in shown) or "–"

    def bound_stats(self) -> BoundStats | None:
        """The bound terms of the selected configuration over its seeds (None: none recorded)."""
        from probe.diagnostics.bounds import TERMS

        found = [r.bounds for r in self.selected_rows if r.bounds]
        if not found:
            return None
        names = list(dict.fromkeys(n for b in found for n in (b.get("losses") or {})))
        matched = [m for r in self.selected_rows if (m := matched_fit(r)) is not None]
        return BoundStats(
            domain=str(found[0].get("domain", "")), n=len(found),
            rows=sorted({int(b.get("rows") or 0) for b in found}),
            train_rows=max(int(b.get("train_rows") or 0) for b in found),
            terms={t: Stat.of(b.get(t) for b in found) for t in TERMS},
            losses={n: Stat.of((b.get("losses") or {}).get(n) for b in found) for n in names},
            curve_ce=Stat.of(ce for ce, _ in matched),
            free_terms={t: Stat.of(free.get(t) for _, free in matched) for t in TERMS} if matched else {},
        )

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
                if all(canonical(c.hparams.get(j)) == canonical(v) for j, v in fixed.items())
            ]
            members.sort(key=lambda c, k=k: value_order(c.hparams.get(k)))
            out.append((k, fixed, members))
        return out


@dataclass
class Report:
    runs: list[RunFolder]
    methods: list[MethodResult]
    notes: list[str] = field(default_factory=list)  # said by whoever made the report (a smoke test's tables)

    @property
    def warnings(self) -> list[str]:
        """What every format must say before its numbers: the notes, and each run folder
        that is not complete (an interrupted fit's finished configurations only)."""
        return [*self.notes, *(f"INCOMPLETE RUN {r.name} ({r.path}): the fit was interrupted and these are only "
                               "the configurations it had finished; rerun its command to finish it"
                               for r in self.runs if not r.summary.complete)]

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


# --------------------------------------------------------------------------- building


def build_report(run_dirs: Sequence[str | Path | tuple[str | Path, str] | RunFolder]) -> Report:
    """Load the run folders and assemble one comparison over all their methods."""
    if not run_dirs:
        raise UserError("no run folder given; pass one or more folders written by `probe fit --out`")
    runs = [run for r in run_dirs for run in ([r] if isinstance(r, RunFolder) else load_runs([r]))]
    for run, name in zip(runs, distinct_names([r.path for r in runs]), strict=True):
        if not run.labelled:
            run.name = name
    for run in runs:
        _review(run)
    count: dict[str, int] = {}
    for run in runs:
        for m in run.summary.methods:
            count[m] = count.get(m, 0) + 1
    methods = [
        _method_result(run, m, m if count[m] == 1 else f"{m} ({run.name})")
        for run in runs
        for m in run.summary.methods
    ]
    return Report(runs=runs, methods=methods)


def _review(run: RunFolder) -> None:
    """Budgets, diagnostics and every rule's choice for a run written before the fit recorded
    them (derived from its results.jsonl; its intervals cannot be, without the heads)."""
    from probe.runs.review import annotate
    from probe.runs.selection import by_rule

    methods = run.summary.methods
    rows = {m: [r for r in run.results if r.method == m] for m in methods}
    settings = run.summary.provenance.get("settings") or {}
    for m, entry in methods.items():
        if not entry.by_rule:
            entry.by_rule = by_rule(rows[m], str(settings.get("ties") or "acc"), run.summary.group_labels)
    if any(e.budget is None or e.diagnostics is None for e in methods.values()):
        annotate(methods, rows, settings)


def build_configs(rows: Iterable[Result]) -> list[Config]:
    """Group one method's result rows by hyperparameters without the seed, in file order."""
    by_key: dict[str, Config] = {}
    for i, row in enumerate(rows):
        if row.config_key not in by_key:
            hp = {k: v for k, v in row.hparams.items() if k != "seed"}
            by_key[row.config_key] = Config(hparams=hp, rows=[], index=i)
        by_key[row.config_key].rows.append(row)
    for c in by_key.values():
        ok = [r for r in c.rows if r.status == "ok"] or c.rows
        c.stats = {s: seed_stats([r.split(s) for r in ok]) for s in SPLITS}
    return list(by_key.values())


def _varied(configs: Sequence[Config]) -> list[str]:
    keys: dict[str, set[str]] = {}
    for c in configs:
        for k in c.hparams:
            keys.setdefault(k, set())
    for c in configs:
        for k in keys:
            keys[k].add(canonical(c.hparams.get(k)))
    return [k for k, vals in keys.items() if len(vals) > 1]


def _labelled(method: str, varied: list[str], selected: dict[str, Any]) -> list[str]:
    """The searched hyperparameters, then those the method declares ``label_nonzero`` (a
    term that is off by default, as CMA's γ) when the selected value is non-zero."""
    from probe.methods import REGISTRY

    cls = REGISTRY.get(method)
    extra = [n for n, p in (cls.hyperparameters().items() if cls else ())
             if p.label_nonzero and n not in varied and isinstance(selected.get(n), (int, float))
             and selected[n] != 0]
    return varied + extra


def _selected_config(configs: list[Config], run_ids: list[str], selected: dict[str, Any] | None
                     ) -> Config | None:
    """The configuration summary.json selected: by its first run id, else by its hparams."""
    if run_ids:
        found = next((c for c in configs if any(r.run_id == run_ids[0] for r in c.rows)), None)
        if found is not None:
            return found
    if selected is None:
        return None
    key = config_key(selected)
    return next((c for c in configs if config_key(c.hparams) == key), None)


def _method_result(run: RunFolder, method: str, label: str) -> MethodResult:
    entry: MethodSummary = run.summary.methods[method]
    chosen = entry.selected
    selected = dict(chosen.hparams) if chosen else {}
    run_ids = list(chosen.run_ids) if chosen else []
    rows = [r for r in run.results if r.method == method]
    configs = build_configs(rows)
    sel_config = _selected_config(configs, run_ids, selected if chosen else None)
    by_id = {r.run_id: r for r in rows}
    sel_rows = [by_id[i] for i in run_ids if i in by_id] or (sel_config.rows if sel_config else [])

    # summary.json is the contract; results.jsonl fills in what it lacks.
    stats: dict[str, dict[str, Stat]] = {}
    for split in SPLITS:
        if split in entry.seeds:
            stats[split] = entry.seeds[split].stats
        elif sel_rows:
            stats[split] = seed_stats([r.split(split) for r in sel_rows])
        else:
            means = entry.metrics.get(split) or {}
            stats[split] = {k: Stat(means[k] if isinstance(means.get(k), (int, float)) else None)
                            for k in METRIC_KEYS}
    n_seeds = len(run_ids) or len(sel_rows) or (entry.seeds["test"].n_seeds if "test" in entry.seeds else 0)

    def counted(name: str, status: str) -> int:  # written before the count existed: from the rows
        n = entry.count(name)
        return n if n is not None else sum(1 for r in rows if r.status == status)

    varied = _varied(configs)
    return MethodResult(
        run=run, method=method, label=label, selected=selected, run_ids=run_ids,
        n_seeds=n_seeds, stats=stats, per_group=_per_group(sel_rows, entry),
        configs=configs, selected_config=sel_config, varied=varied,
        n_configs=entry.count("n_configs") or len(configs), n_diverged=counted("n_diverged", "diverged"),
        n_collapsed=counted("n_collapsed", "collapsed"), labelled=_labelled(method, varied, selected),
        entry=entry,
    )


def _per_group(sel_rows: Sequence[Result], entry: MethodSummary) -> dict[str, dict[str, Any]]:
    """Test accuracy per group over the selected seeds ({"mean", "std", "n"}); else
    summary.json's means, no std."""
    if sel_rows:
        return {g: {"mean": d["stat"].mean, "std": d["stat"].std, "n": d["n"]}
                for g, d in per_group_stats([r.split("test") for r in sel_rows]).items()}
    pg = (entry.metrics.get("test") or {}).get("per_group") or {}
    return {g: {"mean": d.get("acc"), "std": None, "n": d.get("n")} for g, d in pg.items()}
