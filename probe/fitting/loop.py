"""The optimisation of one chunk of heads: steps, annealing, checkpoints, results.

A head's result does not depend on which other heads share its chunk: batches
depend only on (seed, batch size, data), heads never interact, and every per-head
quantity is computed row-wise from that head's parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from probe.diagnostics.bounds import Curve
from probe.fitting.plan import Chunk
from probe.fitting.rule_checkpoints import RuleCheckpoints
from probe.methods.base import FeatureScale, GradientMethod
from probe.records.fitset import FitSet
from probe.records.metrics import correct_by_group, group_sizes
from probe.records.results import HISTORY_KEYS, Result, final_status, run_id
from probe.records.rules import RULES
from probe.train.data import Split, SplitCache, Stream, forward
from probe.train.optim import BatchedOptimizer
from probe.train.scoring import bound_rows, kept_bounds, score_heads
from probe.train.settings import Settings


def fit_chunks(fs: FitSet, method: type[GradientMethod], configs: list[dict[str, Any]], settings: Settings,
               chunks: list[Chunk], on_step: Callable[[int], None] | None, results: list[Result],
               splits: SplitCache | None = None, fitter: type | None = None,
               on_chunk: Callable[[list[Result]], None] | None = None) -> None:
    """Fit ``configs`` chunk by chunk (``plan``), appending each chunk's rows to
    ``results`` as it finishes, so a caller that catches KeyboardInterrupt still
    holds every finished configuration (those of the interrupted chunk are left out);
    then ``on_chunk`` gets the chunk's rows. ``splits`` may be shared with other
    methods' fits on the same file. ``fitter`` fits one chunk (``ChunkFit``, the
    default, or the full-batch solver's ``SolverFit``): built as ``ChunkFit`` is, its
    ``run(on_step)`` returns the rows."""
    splits = splits if splits is not None else SplitCache()
    for chunk in chunks:
        # heads in the order that lets a step slice the penalised ones (penalty_order); heads
        # never interact, so the order changes no result, and the rows return in the plan's order
        order = method.penalty_order([configs[i] for i in chunk.configs]) if method.penalized() \
            else list(range(len(chunk.configs)))
        fit = (fitter or ChunkFit)(fs, method, [configs[chunk.configs[j]] for j in order], chunk, settings,
                                   splits.get(fs, chunk.preprocess, settings, chunk.seed))
        fitted = fit.run(on_step)
        rows = [fitted[k] for k in sorted(range(len(order)), key=order.__getitem__)]
        for i, row in zip(chunk.configs, rows, strict=True):
            row.run_id = run_id(method.name, i)
        results.extend(rows)
        if on_chunk is not None:
            on_chunk(rows)


def checkpoint_scores(pred: torch.Tensor, va: Split, group_total: torch.Tensor, class_total: torch.Tensor,
                      num_groups: int) -> dict[str, torch.Tensor]:
    """(G,) validation metrics of predictions ``pred`` (G, n) that a selection rule may read:
    wga (NaN when no row's group is known), acc and worst_class."""
    correct = correct_by_group(pred, va.y, va.group, num_groups)
    by_class = correct_by_group(pred, va.y, va.y, len(class_total))
    present, has = group_total > 0, class_total > 0
    nan = torch.full((pred.shape[0],), float("nan"), dtype=torch.float64, device=pred.device)
    return {"wga": (correct[:, present] / group_total[present]).min(-1).values if bool(present.any()) else nan,
            "acc": by_class.sum(-1) / class_total.sum(),
            "worst_class": (by_class[:, has] / class_total[has]).min(-1).values if bool(has.any()) else nan}


def initial_heads(G: int, C: int, D: int, seed: int, settings: Settings) -> torch.Tensor:
    """(G, C, D) starting heads: zeros, or one torch.nn.Linear(D-1, C) draw from ``seed``
    shared by the chunk's heads (so a head's start does not depend on its chunk)."""
    dev, dt = settings.device, settings.dtype
    if settings.init == "zeros":
        return torch.zeros(G, C, D, dtype=dt, device=dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        d = D - 1 if settings.bias else D
        layer = torch.nn.Linear(d, C, bias=settings.bias)
    head = layer.weight.detach() if not settings.bias else torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
    return head.to(device=dev, dtype=dt).unsqueeze(0).repeat(G, 1, 1)


def head_rows(fs: FitSet, method: str, configs: list[dict[str, Any]], fixed: dict[str, Any],
              splits: dict[str, Split], theta: torch.Tensor, fates: list[dict[str, Any]],
              features: dict[str, torch.Tensor] | None = None, heads: list[int] | None = None) -> list[Result]:
    """The result rows of a chunk's kept heads ``theta`` (G, C, D), scored on every split by
    the one metrics path; ``fixed`` joins each configuration's hyperparameters, ``fates[g]``
    holds configuration g's status, steps_run, best_step and history. ``features`` (optional) are
    splits' preprocessed rows already at hand, so they are not preprocessed again.
    ``heads[g]``: the head of ``theta`` configuration g has (default: head g), for
    configurations that share a head (each head is scored once).
    A head that finished but collapsed on validation (``probe.records.metrics.collapsed_heads``)
    gets status "collapsed"."""
    heads = list(range(len(configs))) if heads is None else heads
    metrics, collapsed = score_heads(fs, splits, theta, features)
    pre_state = {k: v.detach().cpu() for k, v in splits["train"].pre.state.items()}
    rows, scored = [], set()
    for g, (cfg, h) in enumerate(zip(configs, heads, strict=True)):
        fate = dict(fates[g])
        fate["status"] = final_status(fate["status"], bool(collapsed[h]))
        # a head's later configurations get copies: every row owns its figures
        figures = copy.deepcopy(metrics[h]) if h in scored else metrics[h]
        scored.add(h)
        rows.append(Result(method=method, hparams={**cfg, **fixed}, metrics=figures,
                           theta=theta[h].detach().cpu(), pre=pre_state, **fate))
    return rows


def penalty_free(method: type[GradientMethod], configs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """The penalty-free counterparts of a penalised method's configurations: one per distinct
    optimiser setting (lr, weight decay), every penalty weight 0 and no anneal; and, per
    configuration, the index of its counterpart. Empty for a method without penalties."""
    if not method.penalized():
        return [], []
    weights = {p.weight for p in method.penalties.values()}
    free: dict[tuple, int] = {}
    shadows, of = [], []
    for cfg in configs:
        key = (cfg.get("lr"), cfg.get("weight_decay"))
        if key not in free:
            free[key] = len(shadows)
            shadows.append({**cfg, **dict.fromkeys(weights, 0.0), "anneal": 0})
        of.append(free[key])
    return shadows, of


class ChunkFit:
    """The state of one chunk's heads while they train (all tensors have a leading G).

    A penalised method's chunk also trains, beside its configurations, their penalty-free
    counterparts (``penalty_free``: a head or two more, on the same batches): each kept
    head is compared with its counterpart at the same step (how many validation
    predictions the penalty changed), and their curve is the penalty-free path the bound
    terms are read against at the same fit."""

    def __init__(self, fs: FitSet, method: type[GradientMethod], configs: list[dict[str, Any]], chunk: Chunk,
                 settings: Settings, splits: dict[str, Split]) -> None:
        dev, dt = settings.device, settings.dtype
        self.fs, self.method, self.configs, self.settings, self.splits = fs, method, configs, settings, splits
        shadows, self.shadow_of = penalty_free(method, configs)
        self.n_configs = len(configs)
        configs = [*configs, *shadows]  # the counterparts train as heads G.. of the chunk
        tr, va = splits["train"], splits["val"]
        G, C, D = len(configs), fs.num_classes, tr.pre.out_dim(fs.features.shape[1]) + int(settings.bias)
        K = fs.num_domains
        share = torch.bincount(tr.domain, minlength=K).to(dt) / len(tr.domain)
        params = method.hyperparameters()

        def col(name: str) -> torch.Tensor:
            return torch.tensor([float(c.get(name, params[name].default)) for c in configs], dtype=dt, device=dev)

        m = tr.mean_sq_norm() if settings.normalize == "unit" and method.penalized() else 1.0
        scale = FeatureScale(d=D - int(settings.bias), C=C, m=m)
        self.objective = method({p.name: col(p.name) for p in method.params}, settings, scale)
        self.anneal = torch.tensor([int(c.get("anneal", 0)) if method.penalized() else 0 for c in configs],
                                   device=dev)
        self.theta = initial_heads(G, C, D, chunk.seed, settings)
        self.opt = BatchedOptimizer(self.theta, col("lr"), col("weight_decay"), kind=settings.optimizer,
                                    momentum=settings.momentum, bias=settings.bias)
        self.active = torch.ones(G, dtype=torch.bool, device=dev)
        self.diverged = torch.zeros_like(self.active)
        self.best_score = torch.full((G,), -1.0, dtype=torch.float64, device=dev)
        self.best_theta, self.best_step = self.theta.clone(), torch.zeros(G, dtype=torch.long, device=dev)
        self.since_best = torch.zeros(G, dtype=torch.long, device=dev)
        self.rules = RuleCheckpoints(fs, settings, splits, self.theta[: self.n_configs])
        self.steps_run = torch.zeros(G, dtype=torch.long, device=dev)
        self.val_total = torch.as_tensor(group_sizes(va.group, fs.num_groups), device=dev)
        self.val_class_total = torch.as_tensor(group_sizes(va.y, C), device=dev)
        self.val_X = va.X()  # evaluated every eval_every steps: preprocess once
        self.stream = Stream(tr, K, share, settings, chunk.seed, method.uses_gram)
        self.history: dict[str, list] = {k: [] for k in ("step", "loss", "val_wga", "val_acc", "val_worst_class")}
        cap = settings.bounds_curve_rows if settings.bounds else 0
        self.curve = Curve(*bound_rows(tr, cap), bias=settings.bias) if cap else None
        self.free_thetas: list[torch.Tensor] = []  # the counterparts at every evaluation
        # Until its penalty switches on, a head whose method allows it (follows_penalty_free)
        # is its penalty-free counterpart, step for step: such a head is not computed but copied
        # from the counterpart (source), about half of an annealed grid's head-steps. Early
        # stopping could stop the counterpart alone, so it keeps every head computed.
        self.source = torch.full((G,), -1, dtype=torch.long, device=dev)
        if method.follows_penalty_free() and settings.patience == 0:
            for g, s in enumerate(self.shadow_of):
                if int(self.anneal[g]) > 0:
                    self.source[g] = self.n_configs + s

    def run(self, on_step: Callable[[int], None] | None) -> list[Result]:
        steps = self.settings.steps
        switch_steps = sorted({int(a) for a in self.anneal.tolist() if a > 0})
        for step in range(steps):
            if step in switch_steps:
                # Penalties switch on: restart those heads' optimizer state, as the
                # IRM, Fishr and CMA reference implementations do.
                self.opt.reset(self.anneal == step)
            evaluated = (step + 1) % self.settings.eval_every == 0 or step == steps - 1
            loss, logs = self.step(step, log=evaluated)
            if evaluated:
                self.evaluate(step, loss, logs)
            if on_step is not None:
                on_step(1)
            if not bool(self.active.any()):
                if on_step is not None:
                    on_step(steps - step - 1)
                break
        never = self.best_score < 0  # diverged (or annealing) before its first eligible checkpoint
        keep_last = never if self.settings.select_checkpoint == "best" else torch.ones_like(never)
        self.best_theta[keep_last] = torch.nan_to_num(self.theta[keep_last])
        if self.settings.select_checkpoint == "last":
            self.best_step = self.steps_run.clone()
        self.rules.finish(self.theta[: self.n_configs], self.steps_run[: self.n_configs])
        return self.results()

    def step(self, step: int, log: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step of every head; ``log``: the penalty terms are wanted for every head (an
        evaluation step logs them), not only for those they count for."""
        batch, gram = self.stream.next()
        dormant = (self.source >= 0) & (step < self.anneal)
        # a step whose terms are logged computes every head (the history has each head's own)
        idx = None if log or not bool(dormant.any()) else (~dormant).nonzero().squeeze(1)
        th = (self.theta if idx is None else self.theta[idx]).detach().requires_grad_(True)
        objective = self.objective if idx is None else self.objective.heads(idx)
        on = step >= self.anneal
        loss, logs = objective.loss(forward(th, batch), batch, on if idx is None else on[idx], gram=gram, log=log)
        finite = torch.isfinite(loss)
        (grad,) = torch.autograd.grad(torch.where(finite, loss, torch.zeros_like(loss)).sum(), th)
        if idx is not None:
            grad = torch.zeros_like(self.theta).index_copy_(0, idx, grad)
            finite = torch.ones_like(self.active).index_copy_(0, idx, finite)
        if not bool(finite.all()):
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            self.diverged |= self.active & ~finite
            self.active &= finite
        self.opt.step(grad, self.active & ~dormant)
        if bool(dormant.any()):
            heads = dormant.nonzero().squeeze(1)
            src = self.source[heads]
            self.theta[heads] = self.theta[src]
            self.diverged[heads] |= self.diverged[src]
            self.active[heads] &= self.active[src]
        self.steps_run += self.active.long()
        return loss, logs

    @torch.no_grad()
    def evaluate(self, step: int, loss: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        # A finite loss can still come with an overflowing step; catch it here,
        # once per evaluation rather than once per step.
        bad = self.active & ~torch.isfinite(self.theta).flatten(1).all(1)
        self.diverged |= bad
        self.active &= ~bad
        va = self.splits["val"]
        pred = va.predict(torch.nan_to_num(self.theta), self.val_X)
        scores = checkpoint_scores(pred, va, self.val_total, self.val_class_total, self.fs.num_groups)
        wga, acc = scores["wga"], scores["acc"]
        score = scores[RULES[self.settings.select].metric]
        # Checkpoints taken before a head's penalty switches on are plain ERM.
        eligible = self.active & (step >= self.anneal)
        better = eligible & (score > self.best_score)
        self.best_score = torch.where(better, score, self.best_score)
        self.best_theta[better] = self.theta[better]
        self.best_step[better] = step + 1
        self.since_best = torch.where(better, 0, self.since_best + eligible.long())
        self._other_rules(step, scores, eligible)
        if self.settings.patience > 0:
            self.active &= ~(self.since_best >= self.settings.patience)
        hist = self.history
        hist["step"].append(step + 1)
        hist["loss"].append(loss.detach().cpu().tolist())
        for name, value in logs.items():
            hist.setdefault(name, []).append(value.detach().cpu().tolist())
        hist["val_wga"].append(wga.cpu().tolist())
        hist["val_acc"].append(acc.cpu().tolist())
        hist["val_worst_class"].append(scores["worst_class"].cpu().tolist())
        if self.curve is not None:
            self.curve.record(step + 1, self.theta)
        if self.shadow_of:
            self.free_thetas.append(self.theta[self.n_configs:].clone())

    def _other_rules(self, step: int, scores: dict[str, torch.Tensor], eligible: torch.Tensor) -> None:
        """The checkpoints the other selection rules would keep (probe.fitting.rule_checkpoints)."""
        n = self.n_configs
        by_split = {"val": {k: v[:n] for k, v in scores.items()}}
        if self.rules.wants_test():
            te = self.splits["test"]
            pred = te.predict(torch.nan_to_num(self.theta[:n]))
            by_split["test"] = checkpoint_scores(pred, te, self.rules.test_total, self.rules.test_class_total,
                                                 self.fs.num_groups)
        self.rules.update(by_split, self.theta[:n], eligible[:n], step)

    @torch.no_grad()
    def results(self) -> list[Result]:
        st, G = self.settings, self.n_configs
        fixed = {"steps": st.steps, "batch_size": st.batch_size, "optimizer": st.optimizer, "domain": st.domain,
                 "ce_weighting": self.objective.ce or self.method.name}
        best = self.best_theta[:G]
        bounds = kept_bounds(self.fs, self.splits["train"], best, self.best_step[:G].tolist(), st, self.curve)
        free = self._penalty_free(best)
        others = self.rules.records(self.fs, self.splits, G)
        fates = [{"status": "diverged" if bool(self.diverged[g]) else "ok", "steps_run": int(self.steps_run[g]),
                  "best_step": int(self.best_step[g]), "history": self._history_of(g), "bounds": bounds[g],
                  "penalty_free": free[g], "rule_checkpoints": others[g]} for g in range(G)]
        return head_rows(self.fs, self.method.name, self.configs, fixed, self.splits, best, fates,
                         {"val": self.val_X})

    def _penalty_free(self, best: torch.Tensor) -> list[dict[str, Any] | None]:
        """Per configuration, how its kept head differs from its penalty-free counterpart at
        the same step: the share of validation rows whose prediction differs, and the
        counterpart's curve (cross-entropy and bound distances on the curve's rows)."""
        if not self.shadow_of or not self.free_thetas:
            return [None] * self.n_configs
        steps = self.history["step"]
        va = self.splits["val"]
        kept = va.predict(torch.nan_to_num(best), self.val_X)
        out = []
        for g, s in enumerate(self.shadow_of):
            at = int(self.best_step[g])
            record: dict[str, Any] = {"step": at, "disagreement": None}
            if at in steps:
                theta = torch.nan_to_num(self.free_thetas[steps.index(at)][s: s + 1])
                record["disagreement"] = float((va.predict(theta, self.val_X)[0] != kept[g]).double().mean())
            if self.curve is not None:
                record["curve"] = self.curve.of_head(self.n_configs + s)
            out.append(record)
        return out

    def _history_of(self, g: int) -> dict[str, Any]:
        per_head = {k: ([v[g] for v in vals] if vals and isinstance(vals[0], list) else list(vals))
                    for k, vals in self.history.items()}
        out: dict[str, Any] = {k: per_head[k] for k in HISTORY_KEYS if k in per_head}
        out["penalty"] = {k: v for k, v in per_head.items() if k not in HISTORY_KEYS}
        return out
