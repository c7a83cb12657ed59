"""`--format csv`: the comparison, one row per method, fractions in [0, 1], mean and std apart."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from probe.reports.model import SPLITS, Report
from probe.reports.registry import register_format


@register_format(
    "csv",
    help="one row per method (comparison and per-group test accuracies), fractions, "
    "mean and std in separate columns",
)
def render_csv(report: Report) -> str:
    # Not at module level: probe.records.metrics imports torch, and the CLI imports this module at start.
    from probe.records.metrics import METRIC_KEYS

    groups = report.group_names
    header = ["label", "method", "run_dir", "group_labels", "run_complete", "n_seeds", "selected_hparams",
              "budget_configs", "budget_checkpoints", "budget_candidates"]
    for split in SPLITS:
        for key in METRIC_KEYS:
            header += [f"{split}_{key}_mean", f"{split}_{key}_std"]
    header += ["test_wga_ci_lo", "test_wga_ci_hi", "test_acc_ci_lo", "test_acc_ci_hi", "reference",
               "diff_wga", "diff_wga_ci_lo", "diff_wga_ci_hi", "diagnostics"]
    for g in groups:
        header += [f"test_group[{g}]_acc_mean", f"test_group[{g}]_acc_std", f"test_group[{g}]_n"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for m in report.methods:
        budget = m.entry.budget or {}
        row: list[Any] = [m.label, m.method, str(m.run.path), m.run.summary.group_labels,
                          str(m.run.summary.complete).lower(), m.n_seeds, json.dumps(m.selected, sort_keys=True),
                          budget.get("configs", ""), budget.get("checkpoints", ""), budget.get("candidates", "")]
        for split in SPLITS:
            for key in METRIC_KEYS:
                s = m.get(split, key)
                row += [_num(s.mean), _num(s.std)]
        vs = m.entry.vs_reference or {}
        row += [*_pair(m.ci95.get("wga")), *_pair(m.ci95.get("acc")), vs.get("method", ""),
                _num(vs.get("diff")), *_pair(vs.get("ci95")), " ".join(d["code"] for d in m.diagnostics)]
        for g in groups:
            d = m.per_group.get(g) or {}
            row += [_num(d.get("mean")), _num(d.get("std")), d.get("n", "")]
        w.writerow(row)
    return buf.getvalue()


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _pair(ci: list[float] | None) -> list[str]:
    return [_num(ci[0]), _num(ci[1])] if ci else ["", ""]
