"""`--format json`: everything in the report, fractions in [0, 1]."""

from __future__ import annotations

from typing import Any

from base.io import json_text
from probe.reports.model import MethodResult, Report, Stat
from probe.reports.registry import register_format
from probe.reports.tables import GRID_MODE, LEGEND


@register_format("json", help="everything, fractions in [0, 1]")
def render_json(report: Report) -> str:
    return json_text(report_dict(report), indent=2) + "\n"


def report_dict(report: Report) -> dict[str, Any]:
    """Everything in the report as JSON-ready fractions."""
    def stats(d: dict[str, dict[str, Stat]]) -> dict[str, Any]:
        return {s: {k: v.to_json() for k, v in ks.items()} for s, ks in d.items()}

    def ident(m: MethodResult) -> dict[str, Any]:
        return {"label": m.label, "method": m.method, "run_dir": str(m.run.path)}

    return {
        "selection": f"{report.selection(long=True)}, mean over seeds, hparams without seed",
        "warnings": report.warnings,
        "legend": LEGEND,
        "runs": [
            {"name": r.name, "path": str(r.path), "selection": r.selection, "complete": r.summary.complete,
             "group_labels": r.summary.group_labels, "domains": r.summary.domains,
             "group_names": r.group_names, "provenance": r.summary.provenance}
            for r in report.runs
        ],
        "comparison": [
            {**ident(m), "n_seeds": m.n_seeds, "selected_hparams": m.selected,
             "run_ids": m.run_ids, "n_configs": m.n_configs, "n_diverged": m.n_diverged, "n_collapsed": m.n_collapsed,
             **stats(m.stats), "ci95": m.ci95, "vs_reference": m.entry.vs_reference, "budget": m.entry.budget,
             "by_rule": m.entry.by_rule, "diagnostics": m.diagnostics}
            for m in report.methods
        ],
        "per_group": [{**ident(m), "test": m.per_group} for m in report.methods],
        "bounds": [{**ident(m), "seeds": [r.bounds for r in m.selected_rows if r.bounds]}
                   for m in report.methods],
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
