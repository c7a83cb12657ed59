"""Fit one method's configurations, whatever fits it: the full-batch solver for convex
gradient methods (unless the ``solver`` setting asks for adam), the batched stochastic
trainer for the other gradient methods, the method's own ``fit`` for closed-form ones (DFR)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from features.store import FeatureSet
from probe.domains import narrow, resolve
from probe.fitting.fullbatch import SolverFit
from probe.fitting.loop import ChunkFit, fit_chunks
from probe.fitting.plan import Chunk, plan, uses_solver
from probe.methods import get_method
from probe.methods.base import GradientMethod, Method
from probe.preprocessing import REGISTRY as PREPROCESSINGS
from probe.preprocessing import steps_of
from probe.records.fitset import FitSet
from probe.records.regimes import check_reads
from probe.records.results import Result
from probe.records.rules import RULES
from probe.train.data import SplitCache
from probe.train.settings import Settings


def method_class(method: str | type[Method]) -> type[Method]:
    return get_method(method) if isinstance(method, str) else method


def fit_set(fs: FeatureSet, settings: Settings) -> FitSet:
    """``fs`` with the domains of ``settings.domain`` under the settings' regime (``fs`` with
    what that regime hides hidden, when its domains are resolved already)."""
    if isinstance(fs, FitSet) and fs.domain_source == settings.domain:
        return narrow(fs, settings.group_labels)
    return resolve(fs, settings.domain, settings)


def check_regime(method: type[Method], st: Settings, configs: Sequence[dict[str, Any]] = (),
                 regime: str | None = None) -> None:
    """Refuse, before any work, a method, a selection rule or a preprocessing kind of
    ``configs`` that reads labels the regime (``regime``, by default the settings') hides."""
    regime = regime or st.group_labels
    check_reads(f"`method` {method.name}", method.reads, regime)
    check_reads(f"`select` {st.select}", RULES[st.select].reads, regime)
    for kind in sorted({k for c in configs if "preprocess" in c for k in steps_of(c["preprocess"])}):
        check_reads(f"`preprocess` {kind}", PREPROCESSINGS[kind].reads, regime)


def plan_method(fs: FeatureSet, method: str | type[Method], configs: list[dict[str, Any]],
                settings: Settings) -> list[Chunk] | None:
    """The trainer's chunks for a gradient method; None for a closed-form one."""
    cls = method_class(method)
    return plan(fit_set(fs, settings), cls, configs, settings) if issubclass(cls, GradientMethod) else None


def remaining(chunks: list[Chunk], done: set[int]) -> list[Chunk]:
    """The chunks still to fit when the configurations ``done`` are finished: each chunk
    without them (a head's result does not depend on its chunk)."""
    left = [Chunk(c.seed, c.preprocess, tuple(i for i in c.configs if i not in done)) for c in chunks]
    return [c for c in left if c.configs]


def progress_units(method: str | type[Method], chunks: list[Chunk] | None, settings: Settings) -> int:
    """Steps a fit reports through ``on_step``: ``steps`` per chunk, or ``max_iter`` for the
    full-batch solver (a chunk that converges sooner reports the rest at once); closed-form
    fits report none."""
    if chunks is None:
        return 0
    cls = method_class(method)
    solver = issubclass(cls, GradientMethod) and uses_solver(cls, settings)
    return len(chunks) * (settings.max_iter if solver else settings.steps)


def fit_method(fs: FeatureSet, method: str | type[Method], configs: list[dict[str, Any]], settings: Settings,
               on_step: Callable[[int], None] | None = None, results: list[Result] | None = None,
               chunks: list[Chunk] | None = None, splits: SplitCache | None = None,
               on_chunk: Callable[[list[Result]], None] | None = None) -> list[Result]:
    """Fit every configuration of one method; one :class:`Result` per configuration, in
    the order of ``configs`` (run ids ``<method>-<index>``). ``chunks`` is
    ``plan_method(...)`` when the caller has it already (for a gradient method it may
    leave configurations out: those are not fitted); ``splits`` a cache of prepared
    splits shared by the methods of one fit.

    Rows are also appended to ``results`` as they finish (a chunk at a time), so a
    caller that catches KeyboardInterrupt still holds every finished configuration;
    ``on_chunk`` receives each chunk's rows once they are (to keep them durably).
    """
    cls = method_class(method)
    check_regime(cls, settings, configs)
    fs = fit_set(fs, settings)
    check_regime(cls, settings, configs, fs.group_labels)  # a file resolved under a stricter regime stays so
    out = results if results is not None else []
    start = len(out)
    if issubclass(cls, GradientMethod):
        for cfg in configs:
            missing = [k for k in ("seed", "preprocess") if k not in cfg]
            if missing:
                raise ValueError(f"configuration {cfg} lacks {missing}")
        fit_chunks(fs, cls, configs, settings, chunks if chunks is not None else plan(fs, cls, configs, settings),
                   on_step, out, splits, SolverFit if uses_solver(cls, settings) else ChunkFit, on_chunk)
    else:
        cls.fit(fs, configs, settings, out)
        if on_chunk is not None:
            on_chunk(out[start:])
    return sorted(out[start:], key=lambda r: r.sort_key())
