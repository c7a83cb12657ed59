"""`probe reproduce`: the CMA paper's linear-probing table from the datasets' own folders.

For each dataset given: extract its features unless a complete feature file is there
already (extraction resumes), fit every row of the ``cma-paper`` protocol, then write
the paper's table (``table.tex`` and ``table.md``) over all of them. Everything lands
in one folder:

    OUT/<dataset>.h5   OUT/<dataset>/ (the run folder)   OUT/table.tex   OUT/table.md

The fit is :func:`probe.pipeline.fit_grid`'s, whose fingerprint (the data, methods,
grids, settings and probe's version) decides what a run folder may be used for: a
complete run of exactly this fit is reused as it is, an interrupted one is resumed
from its journal, and anything else is refused unless ``overwrite``. A table is
therefore only ever made from complete runs of the protocol as asked.

``smoke`` swaps the protocol's grids for one value per hyperparameter and a few steps:
a check that the whole pipeline runs (the tests use it on the bundled demo data),
whose numbers mean nothing. Its runs and tables go to ``OUT/smoke/`` (the features
are shared), never where a real run is, and its tables say what they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.io import check_writable_dir, write_text_atomic
from features.datasets import DatasetSpec, load_dataset
from features.encoders import Encoder, load_encoder
from features.extract import ExtractResult, OtherExtraction, check_output, choose_encoder, extract
from features.store import read_features
from probe.pipeline import fit_grid
from probe.reports import build_report
from probe.reports.formats import render

PROTOCOL = "cma-paper"
#: the table's columns, in the paper's order; demo is the bundled Waterbirds-style task
DATASETS = ("waterbirds", "celeba", "multinli", "demo")
SMOKE = {"grid": {"seed": [0], "alpha": [1.0], "beta": [10.0], "lam": [100.0], "ema": [0.9], "gamma": [1.0],
                  "anneal": [0]},
         "settings": {"steps": 20, "pca_dim": 8}}
#: where a smoke run's run folders and tables go, inside ``out``
SMOKE_DIR = "smoke"
SMOKE_NOTE = ("SMOKE TEST (`probe reproduce --smoke`: one configuration per method, 20 steps): these numbers "
              "only show that the pipeline runs; they mean nothing")


@dataclass
class Source:
    """One dataset to reproduce on: its folder (None for demo) and how to encode it."""

    dataset: str
    root: Path | None
    encoder: str | None = None
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # encoder options (pooling, ...)


def _features(src: Source, out: Path, device: Any, progress: Any, notify: Callable[[str], None],
              overwrite: bool = False) -> Path:
    h5 = out / f"{src.dataset}.h5"
    check_output(h5)
    spec = load_dataset(src.dataset, src.root)
    enc = load_encoder(choose_encoder(src.dataset, spec.modality, src.encoder), weights=src.weights,
                       device=device, modality=spec.modality, **src.options)
    result = extract_features(spec, enc, h5, overwrite, progress, notify)
    notify(f"{src.dataset}: {result.path} {result.status} ({result.rows} rows × {result.dim})")
    return h5


def extract_features(spec: DatasetSpec, enc: Encoder, h5: Path, overwrite: bool, progress: Any,
                     notify: Callable[[str], None]) -> ExtractResult:
    """``spec`` encoded into ``h5``, resumed or kept when it holds this extraction's rows.
    One of other rows (another encoder, another version of the dataset) is refused as
    `probe extract` refuses it, and with ``overwrite`` extracted again: the refusal's remedy,
    `overwrite`, is reproduce's own flag, so it must reach the features too."""
    try:
        return extract(spec, enc, h5, progress=progress, warn=notify, note=notify)
    except OtherExtraction as exc:
        if not overwrite:
            raise
        notify(f"{str(exc).split('; ')[0]}; extracting it again (overwrite)")
    return extract(spec, enc, h5, overwrite=True, progress=progress, warn=notify, note=notify)


def reproduce(sources: list[Source], out: str | Path, *, device: Any = "auto", smoke: bool = False,
              overwrite: bool = False, extract_progress: Callable[[str], Any] | None = None,
              fit_progress: Callable[[str], Any] | None = None,
              notify: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Extract, fit and tabulate ``sources`` into ``out``; returns the table files written.
    ``overwrite`` refits a run folder that holds anything other than this very fit
    (another fit, other settings, another version of probe) instead of refusing it, and
    extracts again a feature file of other rows (another encoder); a complete one of
    this extraction is kept either way.
    ``extract_progress(what)`` and ``fit_progress(what)`` give the progress object of one
    extraction (base.progress.Progress) or one fit (fit_grid's); None: silent."""
    from base.device import resolve_device

    if not sources:
        raise UserError(f"give at least one dataset ({', '.join(DATASETS)})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out} is a file; give a folder for the feature files, run folders and tables")
    check_writable_dir(out.parent if str(out.parent) else Path("."), "`out` parent")
    out.mkdir(exist_ok=True)
    dev = resolve_device(device)
    runs_dir = out / SMOKE_DIR if smoke else out
    runs_dir.mkdir(exist_ok=True)
    extra = SMOKE if smoke else {"grid": {}, "settings": {}}
    runs = []
    for src in sorted(sources, key=lambda s: DATASETS.index(s.dataset)):
        h5 = _features(src, out, dev, extract_progress(src.dataset) if extract_progress else None, notify, overwrite)
        run = runs_dir / src.dataset
        fit_grid(read_features(h5), None, extra["grid"], run, overwrite=overwrite, protocol=PROTOCOL,
                 device=str(dev), notify=notify,
                 command=f"probe reproduce{' --smoke' if smoke else ''} ({src.dataset})",
                 progress=fit_progress(src.dataset) if fit_progress else None, **extra["settings"])
        runs.append(run)
    report = build_report(runs)
    if smoke:
        report.notes.append(SMOKE_NOTE)
    written = []
    for fmt, name in (("latex", "table.tex"), ("markdown", "table.md")):
        write_text_atomic(runs_dir / name, str(render(report, fmt, "paper")))
        written.append(runs_dir / name)
    return written
