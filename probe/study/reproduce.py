"""`probe reproduce`: the CMA paper's linear-probing table from the datasets' own folders.

For each dataset given: extract its features unless a complete feature file is there
already (extraction resumes), fit every row of the ``cma-paper`` protocol unless a
finished run of it on those features is there already, then write the paper's table
(``table.tex`` and ``table.md``) over all of them. Everything lands in one folder:

    OUT/<dataset>.h5   OUT/<dataset>/ (the run folder)   OUT/table.tex   OUT/table.md

``smoke`` swaps the protocol's grids for one value per hyperparameter and a few steps:
a check that the whole pipeline runs (the tests use it on the bundled demo data),
whose numbers mean nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.io import check_writable_dir, write_text_atomic
from features.datasets import load_dataset
from features.encoders import load_encoder
from features.extract import check_output, choose_encoder, extract
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


@dataclass
class Source:
    """One dataset to reproduce on: its folder (None for demo) and how to encode it."""

    dataset: str
    root: Path | None
    encoder: str | None = None
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # encoder options (pooling, ...)


def _features(src: Source, out: Path, device: Any, progress: Any, notify: Callable[[str], None]) -> Path:
    h5 = out / f"{src.dataset}.h5"
    check_output(h5)
    spec = load_dataset(src.dataset, src.root)
    enc = load_encoder(choose_encoder(src.dataset, spec.modality, src.encoder), weights=src.weights,
                       device=device, modality=spec.modality, **src.options)
    result = extract(spec, enc, h5, progress=progress, warn=notify, note=notify)
    notify(f"{src.dataset}: {result.path} {result.status} ({result.rows} rows × {result.dim})")
    return h5


def _finished(run: Path, h5: Path) -> bool:
    """A finished run of the protocol on these features (reused rather than refitted)."""
    try:
        prov = json.loads((run / "summary.json").read_text())["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return ((prov.get("protocol") or {}).get("name") == PROTOCOL
            and str((prov.get("features") or {}).get("path")) == str(h5))


def reproduce(sources: list[Source], out: str | Path, *, device: Any = "auto", smoke: bool = False,
              extract_progress: Callable[[str], Any] | None = None, fit_progress: Callable[[str], Any] | None = None,
              notify: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Extract, fit and tabulate ``sources`` into ``out``; returns the table files written.
    ``extract_progress(what)`` and ``fit_progress(what)`` give the progress object of one
    extraction (base.progress.Progress) or one fit (fit_grid's); None: silent."""
    from base.device import resolve_device

    if not sources:
        raise UserError(f"give at least one dataset ({', '.join(DATASETS)})")
    out = Path(out)
    check_writable_dir(out.parent if str(out.parent) else Path("."), "`out` parent")
    out.mkdir(exist_ok=True)
    dev = resolve_device(device)
    runs = []
    for src in sorted(sources, key=lambda s: DATASETS.index(s.dataset)):
        h5 = _features(src, out, dev, extract_progress(src.dataset) if extract_progress else None, notify)
        run = out / src.dataset
        if _finished(run, h5) and not smoke:
            notify(f"{src.dataset}: {run} already holds the protocol's run; reusing it")
        else:
            extra = SMOKE if smoke else {"grid": {}, "settings": {}}
            fit_grid(read_features(h5), None, extra["grid"], run, overwrite=True, protocol=PROTOCOL,
                     device=str(dev), notify=notify, command=f"probe reproduce ({src.dataset})",
                     progress=fit_progress(src.dataset) if fit_progress else None, **extra["settings"])
        runs.append(run)
    report = build_report(runs)
    written = []
    for fmt, name in (("latex", "table.tex"), ("markdown", "table.md")):
        write_text_atomic(out / name, str(render(report, fmt, "paper")))
        written.append(out / name)
    return written
