"""probe.reports.plots: heatmaps over each method's declared pair of hyperparameters, per-group bars, curves
and the transfer bound's terms along training.

matplotlib's object API with the Agg canvas (no pyplot global state, no display
needed); every figure is written atomically as PNG.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from base.errors import UserError
from base.io import atomic_path
from probe.records.grid import Param
from probe.reports.model import (
    Config,
    MethodResult,
    Report,
    build_report,
    format_value,
    value_order,
)

DPI = 120


def write_plots(run_dirs: Sequence[str | Path] | Report, plots: str | Path) -> list[Path]:
    """Write every figure for ``run_dirs`` (or an already built Report) into the folder ``plots``.

    ``plots`` is created if missing. Returns the PNG paths written:
    ``wga_heatmap_<method>.png`` for methods whose grid covers their declared heatmap
    (``Method.heatmap``: α × β for CMA, λ × EMA for Fishr, ...),
    ``per_group_test_acc.png``, ``curves_<method>.png`` for selections with a history,
    and ``bound_terms.png`` when the results record the bound terms.
    """
    report = run_dirs if isinstance(run_dirs, Report) else build_report(run_dirs)
    out = Path(plots)
    if out.exists() and not out.is_dir():
        raise UserError(f"`plots` {out} is a file, not a folder; choose a folder for the figures")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"`plots` {out}: cannot create the folder ({exc.strerror})") from exc

    written: list[Path] = []
    for m in report.methods:
        fig = heatmap_figure(m, report.selection())
        if fig is not None:
            written.append(_save(fig, out / f"wga_heatmap_{slug(m.label)}.png"))
    fig = per_group_figure(report)
    if fig is not None:
        written.append(_save(fig, out / "per_group_test_acc.png"))
    for m in report.methods:
        fig = curves_figure(m)
        if fig is not None:
            written.append(_save(fig, out / f"curves_{slug(m.label)}.png"))
    fig = bounds_figure(report)
    if fig is not None:
        written.append(_save(fig, out / "bound_terms.png"))
    return written


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- heatmaps


def heatmap_axes(m: MethodResult) -> tuple[Param, Param] | None:
    """The two hyperparameters the method declares for its heatmap (rows, columns), or None."""
    from probe.methods import REGISTRY

    cls = REGISTRY.get(m.method)
    if cls is None or cls.heatmap is None:
        return None
    params = cls.hyperparameters()
    return params[cls.heatmap[0]], params[cls.heatmap[1]]


def heatmap_grid(m: MethodResult) -> tuple[list[Any], list[Any], list[list[Config | None]]] | None:
    """The row and column values of the method's heatmap and, per cell, the config with the
    best mean val WGA.

    Other hyperparameters (anneal, lr, ...) are aggregated by that choice; ties go
    to the earlier run. None when the method declares no heatmap or its grid has one cell.
    """
    axes = heatmap_axes(m)
    if axes is None:
        return None
    r, c_ = (p.name for p in axes)
    configs = [c for c in m.configs if r in c.hparams and c_ in c.hparams]
    if not configs:
        return None
    rows = sorted({c.hparams[r] for c in configs}, key=value_order)
    cols = sorted({c.hparams[c_] for c in configs}, key=value_order)
    if len(rows) * len(cols) < 2:
        return None
    cells: list[list[Config | None]] = [[None] * len(cols) for _ in rows]
    for c in sorted(configs, key=lambda c: c.index):
        i, j = rows.index(c.hparams[r]), cols.index(c.hparams[c_])
        best = cells[i][j]
        if best is None or _val_wga(c) > _val_wga(best):
            cells[i][j] = c
    return rows, cols, cells


def _axis_label(p: Param) -> str:
    """An axis title from a declaration: its symbol and its help's first clause."""
    return f"{p.symbol or p.name}: {p.help.split('(')[0].rstrip(' .')}"


def _val_wga(c: Config) -> float:
    # A configuration without a validation score (diverged) ranks below any scored one.
    v = c.get("val", "wga").mean
    return v if v is not None and math.isfinite(v) else -math.inf


def heatmap_figure(m: MethodResult, selection: str = "validation WGA") -> Figure | None:
    grid = heatmap_grid(m)
    axes = heatmap_axes(m)
    if grid is None or axes is None:
        return None
    alphas, betas, cells = grid
    row_p, col_p = axes
    others = [k for k in m.varied if k not in (row_p.name, col_p.name)]
    sel = m.selected_config
    vals = {
        split: np.array([[np.nan if c is None or c.get(split, "wga").mean is None
                          else 100 * c.get(split, "wga").mean for c in row] for row in cells])
        for split in ("val", "test")
    }
    finite = np.concatenate([v[np.isfinite(v)] for v in vals.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5

    w = max(5.0, 0.9 * len(betas) + 2.5)
    h = max(4.0, 0.6 * len(alphas) + 2.5)
    fig = Figure(figsize=(2 * w + 1.0, h + 0.8), layout="constrained")
    axes = fig.subplots(1, 2)
    font = 9 if len(betas) <= 8 else 7
    for ax, split, name in zip(axes, ("val", "test"), ("Validation", "Test"), strict=True):
        im = ax.imshow(vals[split], cmap="viridis", vmin=vmin, vmax=vmax, origin="lower",
                       aspect="auto")
        for i in range(len(alphas)):
            for j in range(len(betas)):
                v = vals[split][i, j]
                if math.isfinite(v):
                    # Dark text on the bright end of viridis, white on the dark end.
                    dark = (v - vmin) / (vmax - vmin) > 0.6
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=font,
                            color="black" if dark else "white")
                else:
                    c = cells[i][j]
                    ax.text(j, i, "not fitted" if c is None else c.status, ha="center",
                            va="center", fontsize=font - 1, color="dimgrey")
                if sel is not None and cells[i][j] is sel:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                           edgecolor="red", linewidth=2.5))
        ax.set_xticks(range(len(betas)), [format_value(b) for b in betas])
        ax.set_yticks(range(len(alphas)), [format_value(a) for a in alphas])
        ax.set_xlabel(_axis_label(col_p))
        ax.set_ylabel(_axis_label(row_p))
        ax.set_title(f"{name} worst-group accuracy (%)")
        fig.colorbar(im, ax=ax, label=f"{name.lower()} WGA (%)")
    agg = (f"each cell: best validation config over {', '.join(others)}" if others
           else "one configuration per cell")
    seeds = f"mean over {m.n_seeds} seeds" if m.n_seeds > 1 else "one seed"
    fig.suptitle(f"{m.label}: worst-group accuracy over {row_p.symbol or row_p.name} × "
                 f"{col_p.symbol or col_p.name} ({seeds}; {agg}; "
                 f"red box = selected on {selection})", fontsize=10)
    return fig


# --------------------------------------------------------------------------- per-group bars


def per_group_figure(report: Report) -> Figure | None:
    groups = report.group_names
    methods = [m for m in report.methods if m.per_group]
    if not groups or not methods:
        return None
    ns = {g: {m.per_group[g].get("n") for m in methods if g in m.per_group} for g in groups}
    ticks = [f"{g}\n(n={next(iter(ns[g]))})" if len(ns[g]) == 1 else g for g in groups]

    n_bars = len(methods)
    width = 0.8 / n_bars
    fig = Figure(figsize=(max(7.0, 1.2 + len(groups) * (0.6 + 0.45 * n_bars)), 5.0),
                 layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(groups))
    font = 8 if len(groups) * n_bars <= 24 else 6
    for k, m in enumerate(methods):
        mean = np.array([_pct(m.per_group.get(g, {}).get("mean")) for g in groups])
        std = np.array([_pct(m.per_group.get(g, {}).get("std")) for g in groups])
        pos = x - 0.4 + width * (k + 0.5)
        err = np.nan_to_num(std) if m.n_seeds > 1 else None
        bars = ax.bar(pos, np.nan_to_num(mean), width * 0.92, yerr=err, capsize=3,
                      label=f"{m.label} (WGA {_fmt(m.get('test', 'wga').mean)})")
        tops = mean + (np.nan_to_num(std) if err is not None else 0.0)  # above the error bar
        for b, v, top in zip(bars, mean, tops, strict=True):
            if math.isfinite(v):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, top), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom",
                            fontsize=font, rotation=90 if n_bars > 3 else 0)
    ax.set_xticks(x, ticks)
    ax.set_ylim(0, 112)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("group")
    seeds = "mean ± std over seeds" if any(m.n_seeds > 1 for m in methods) else "one seed"
    ax.set_title("Per-group test accuracy of each method's configuration selected by "
                 f"{report.selection()} ({seeds})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    # Outside the axes: inside, the legend would hide bars.
    fig.legend(fontsize=8, loc="outside lower center", ncol=min(len(methods), 4))
    return fig


def _pct(v: float | None) -> float:
    return float("nan") if v is None else 100.0 * float(v)


def _fmt(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


# --------------------------------------------------------------------------- curves


def _series(values: Any, n: int) -> np.ndarray | None:
    if not isinstance(values, list) or len(values) != n or n == 0:
        return None
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def curves_figure(m: MethodResult) -> Figure | None:
    """Loss, penalty and validation-accuracy curves of the selected configuration's first seed."""
    row = next((r for r in m.selected_rows if r.history.get("step")), None)
    if row is None:
        return None
    hist = row.history
    steps = np.asarray(hist["step"], dtype=np.float64)
    n = len(steps)
    objective = {k: s for k in ("loss", "ce") if (s := _series(hist.get(k), n)) is not None}
    if len(objective) == 2 and np.allclose(objective["loss"], objective["ce"], equal_nan=True):
        # No penalty (ERM): one line, not two on top of each other.
        objective = {"loss (= ce)": objective["loss"]}
    penalties = {f"penalty: {k}": s for k, v in (hist.get("penalty") or {}).items()
                 if (s := _series(v, n)) is not None}
    accs = {label: 100 * s for k, label in (("val_wga", "val WGA"), ("val_acc", "val Acc"))
            if (s := _series(hist.get(k), n)) is not None}
    panels = [p for p in (("training objective", objective, "loss"),
                          ("penalties", penalties, "penalty value"),
                          ("validation accuracy", accs, "accuracy (%)")) if p[1]]
    if not panels:
        return None

    fig = Figure(figsize=(5.0 * len(panels) + 0.5, 4.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    best = row.best_step  # a row with a history was trained by steps: it always kept one
    for ax, (title, series, ylabel) in zip(axes, panels, strict=True):
        for name, s in series.items():
            ax.plot(steps, s, label=name, linewidth=1.5)
        positive = all(np.all(s[np.isfinite(s)] > 0) for s in series.values())
        spread = _spread(series)
        logs = ylabel != "accuracy (%)"
        if logs and positive and spread > 50:
            ax.set_yscale("log")
        ax.axvline(best, color="grey", linestyle="--", linewidth=1)
        k = int(np.argmin(np.abs(steps - best)))
        for s in series.values():
            if math.isfinite(s[k]):
                ax.annotate(f"{s[k]:.3g}" if logs else f"{s[k]:.1f}",
                            (steps[k], s[k]), xytext=(4, 4), textcoords="offset points",
                            fontsize=8)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    seed = row.seed
    fig.suptitle(f"{m.label}: selected configuration ({m.short_hparams}), run {row.run_id}"
                 + (f", seed {seed}" if seed is not None else "")
                 + f"; dashed line = kept step {best}, values annotated there", fontsize=10)
    return fig


def _spread(series: dict[str, np.ndarray]) -> float:
    vals = np.concatenate([s[np.isfinite(s)] for s in series.values()])
    if vals.size == 0 or vals.min() <= 0:
        return 1.0
    return float(vals.max() / vals.min())


# --------------------------------------------------------------------------- bound terms

BOUND_TITLES = {"grad": "n = 1: max ‖∇L_e − ∇L_f‖_F", "hess": "n = 2: max ‖∇²L_e − ∇²L_f‖_F",
                "third": "n = 3: max ‖∇³L_e − ∇³L_f‖_F"}


def bound_curves(m: MethodResult) -> tuple[np.ndarray, dict[str, np.ndarray], float] | None:
    """(steps, term -> values, kept step) of a selection's bound curves: the mean over its
    seeds when they were evaluated at the same steps, else its first seed's."""
    curves = [(r.bounds["curve"], r.bounds.get("step")) for r in m.selected_rows
              if r.bounds and isinstance(r.bounds.get("curve"), dict) and r.bounds["curve"].get("step")]
    if not curves:
        return None
    steps = curves[0][0]["step"]
    same = [c for c in curves if c[0]["step"] == steps]
    n = len(steps)
    series = {}
    for t in BOUND_TITLES:
        arrays = [a for c, _ in same if (a := _series(c.get(t), n)) is not None]
        if arrays:
            with np.errstate(all="ignore"):
                series[t] = np.nanmean(np.vstack(arrays), axis=0)
    kept = curves[0][1]
    return np.asarray(steps, dtype=np.float64), series, float(kept) if kept is not None else math.nan


def bounds_figure(report: Report) -> Figure | None:
    """One panel per derivative order: each method's selected configuration over training steps
    (a dot at its kept checkpoint); a method fitted in closed form (DFR) as a horizontal line."""
    lines = [(m, c) for m in report.methods if (c := bound_curves(m)) is not None]
    flat = [(m, b) for m in report.methods if bound_curves(m) is None and (b := m.bound_stats()) is not None]
    if not lines and not flat:
        return None
    fig = Figure(figsize=(16.0, 4.6), layout="constrained")
    axes = fig.subplots(1, len(BOUND_TITLES))
    for ax, (t, title) in zip(axes, BOUND_TITLES.items(), strict=True):
        values = []
        for m, (steps, series, kept) in lines:
            if t not in series:
                continue
            (line,) = ax.plot(steps, series[t], label=m.label, linewidth=1.5)
            values.append(series[t])
            if math.isfinite(kept):
                k = int(np.argmin(np.abs(steps - kept)))
                ax.plot([steps[k]], [series[t][k]], "o", color=line.get_color(), markersize=5)
        for m, b in flat:
            v = b.terms[t].mean
            if v is not None and math.isfinite(v):
                ax.axhline(v, linestyle="--", linewidth=1.2, color="dimgrey", label=f"{m.label} (closed form)")
                values.append(np.array([v]))
        if values and _spread({str(i): v for i, v in enumerate(values)}) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    rows = sorted({r.bounds["curve"].get("rows") for m, _ in lines for r in m.selected_rows
                   if r.bounds and isinstance(r.bounds.get("curve"), dict)} - {None})
    fig.suptitle("Transfer-bound terms across training domains along training ("
                 + (f"{'/'.join(map(str, rows))} fixed training rows; " if rows else "")
                 + "mean over seeds; dots: kept checkpoints; dashed: closed-form fits on their checkpoint rows)",
                 fontsize=10)
    return fig
