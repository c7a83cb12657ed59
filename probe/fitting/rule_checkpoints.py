"""The checkpoint every selection rule would keep, beside the one the headline rule keeps.

A run records what every rule the regime allows would have selected
(``probe.runs.selection.by_rule``). If the other rules only chose among configurations at
the checkpoints the headline rule kept, their choices would not be theirs: under
``--select val_wga``, the ``val_worst_class`` column would report heads whose checkpoints
validation *groups* chose, and the oracle would bound only the choice of configuration.
So each rule keeps its own best checkpoint of every head, on the same evaluations, and its
validation score and test figures there are recorded with the head
(``Result.rule_checkpoints``). The oracle's checkpoints are chosen on test, as an upper
bound is; nothing here feeds back into training or into the headline's selection.
"""

from __future__ import annotations

from typing import Any

import torch

from probe.records.fitset import FitSet
from probe.records.metrics import group_sizes, metrics_by_head
from probe.records.regimes import REGIMES
from probe.records.rules import RULES, Rule
from probe.train.data import Split
from probe.train.settings import Settings


class RuleCheckpoints:
    """Per head (G of them) and per rule other than the headline, the best eligible
    checkpoint so far: its score, its head and its step (the loop's own bookkeeping,
    once per rule)."""

    def __init__(self, fs: FitSet, settings: Settings, splits: dict[str, Split], theta: torch.Tensor) -> None:
        allowed = REGIMES[settings.group_labels]
        test = splits.get("test")
        self.has_test = test is not None and len(test.rows) > 0
        # with the last checkpoint kept, every rule keeps the same head: nothing to track
        self.rules: list[Rule] = [] if settings.select_checkpoint != "best" else [
            r for r in RULES.values()
            if r.name != settings.select and r.reads <= allowed and (r.split == "val" or self.has_test)]
        G, dev = theta.shape[0], theta.device
        self.score = {r.name: torch.full((G,), -1.0, dtype=torch.float64, device=dev) for r in self.rules}
        self.theta = {r.name: theta.clone() for r in self.rules}
        self.step = {r.name: torch.zeros(G, dtype=torch.long, device=dev) for r in self.rules}
        # the test rows are preprocessed block by block at each evaluation rather than held:
        # a test split can be larger than validation, and the oracle is only a record
        self.scores_test = self.has_test and any(r.split == "test" for r in self.rules)
        if self.scores_test:
            assert test is not None
            self.test_total = torch.as_tensor(group_sizes(test.group, fs.num_groups), device=dev)
            self.test_class_total = torch.as_tensor(group_sizes(test.y, fs.num_classes), device=dev)

    def wants_test(self) -> bool:
        """Whether an evaluation must also score the test split (for the oracle's checkpoints)."""
        return self.scores_test

    def update(self, scores: dict[str, dict[str, torch.Tensor]], theta: torch.Tensor, eligible: torch.Tensor,
               step: int) -> None:
        """One evaluation: ``scores[split][metric]`` (G,), the heads ``theta`` (G, C, D) at
        ``step`` (0-based), and which heads may keep this checkpoint."""
        for r in self.rules:
            s = scores[r.split][r.metric]
            better = eligible & (s > self.score[r.name])  # NaN (no such group) is never better
            self.score[r.name] = torch.where(better, s, self.score[r.name])
            self.theta[r.name][better] = theta[better]
            self.step[r.name][better] = step + 1

    def finish(self, last: torch.Tensor, steps_run: torch.Tensor) -> None:
        """Heads that never reached an eligible checkpoint keep their last state, as the
        headline's bookkeeping does."""
        for r in self.rules:
            never = self.score[r.name] < 0
            self.theta[r.name][never] = torch.nan_to_num(last[never])
            self.step[r.name][never] = steps_run[never]

    def records(self, fs: FitSet, splits: dict[str, Split], heads: int) -> list[dict[str, Any] | None]:
        """Per head (the first ``heads``), ``{rule: {"step", "score", "test": {"wga", "acc"}}}``:
        the rule's checkpoint, its score there and the test figures of that head."""
        if not self.rules:
            return [None] * heads
        out: list[dict[str, Any]] = [{} for _ in range(heads)]
        for r in self.rules:
            tests: list[dict[str, Any] | None] = [None] * heads
            if self.has_test:
                pred, _, ce = splits["test"].score(self.theta[r.name][:heads])
                tests = [m["test"] for m in metrics_by_head(fs, {"test": pred}, {"test": ce})]
            for g in range(heads):
                score = float(self.score[r.name][g])
                test = tests[g] or {}
                out[g][r.name] = {"step": int(self.step[r.name][g]), "score": score if score >= 0 else None,
                                  "test": {k: test.get(k) for k in ("wga", "acc")}}
        return out
