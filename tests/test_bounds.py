"""The bound terms on every fitted head: the row sample, and the figures in results.jsonl
against derivatives formed with torch.func on the kept head and its preprocessed rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd

from features.store import SPLITS, read_features
from probe import moments
from probe.api import fit_grid
from probe.diagnostics.bounds import TERMS, sample_rows
from probe.preprocessing import Preprocessor
from probe.records.results import Result
from tests.h5craft import toy_arrays, write_feature_file


def test_sample_keeps_small_domains_whole_and_fills_the_cap():
    domains = np.array([0] * 50 + [1] * 7 + [2] * 30 + [3] * 3)
    idx = sample_rows(domains, 40)
    assert len(idx) == 40 and np.all(np.diff(idx) > 0)
    counts = np.bincount(domains[idx], minlength=4)
    assert counts[1] == 7 and counts[3] == 3  # every row of the small domains
    assert counts[0] == counts[2] == 15  # the rest shared equally
    assert np.array_equal(sample_rows(domains, 40), idx)  # fixed: the same rows for every fit
    assert np.array_equal(sample_rows(domains, 0), np.arange(90))
    assert np.array_equal(sample_rows(domains, 500), np.arange(90))


def formed_maxima(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, domains: torch.Tensor):
    """Per-domain losses and max_{e,f} ‖∇ⁿL_e − ∇ⁿL_f‖_F with every derivative formed."""
    Xt = moments.augment(X)
    losses, derivs = [], {n: [] for n in (1, 2, 3)}
    for e in torch.unique(domains).tolist():
        m = domains == e

        def loss(th, m=m):
            return F.cross_entropy(Xt[m] @ th.T, y[m])

        losses.append(float(loss(theta)))
        for n, fn in ((1, grad(loss)), (2, hessian(loss)), (3, jacfwd(jacfwd(grad(loss))))):
            derivs[n].append(fn(theta).reshape(-1))
    maxima = [float(torch.cdist(torch.stack(derivs[n]), torch.stack(derivs[n])).max()) for n in (1, 2, 3)]
    return losses, maxima


@pytest.mark.parametrize("cap", [0, 40])
def test_results_carry_bound_terms_that_match_formed_derivatives(tmp_path: Path, cap: int) -> None:
    fs = read_features(write_feature_file(tmp_path / "toy.h5", toy_arrays(16, 3)))
    fitted = fit_grid(fs, ["erm", "cma", "dfr"], {"alpha": [1.0], "beta": [1.0], "gamma": [0.0, 1.0]},
                      tmp_path / "run", steps=12, batch_size=32, eval_every=4, bounds_rows=cap,
                      bounds_curve_rows=24, dtype="float64")["rows"]
    written = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    rows = [r for m in ("erm", "cma", "dfr") for r in fitted[m]]
    assert [w["bounds"] for w in written] == [Result.from_json(w).bounds for w in written]
    assert [w["bounds"] for w in written] == [r.bounds for r in rows]
    train = np.flatnonzero(fs.split == SPLITS["train"])
    idx = train[sample_rows(fs.group[train], cap)]
    for r in rows:
        b = r.bounds
        assert b["domain"] == "group" and b["train_rows"] == len(train) == 64
        assert b["rows"] == len(idx) == (64 if cap == 0 else 40)
        assert list(b["losses"]) == fs.group_names
        pre = {k: v.double() for k, v in r.pre.items()}
        if r.method == "dfr":  # closed form: its own standardization, no steps, no curve
            assert b["step"] == 0 and "curve" not in b
            X = (torch.as_tensor(fs.features[idx]).double() - pre["mean"]) / pre["scale"]
        elif r.hparams.get("solver") == "lbfgs":  # erm's optimum: its final iterate, no curve
            assert b["step"] == r.best_step == r.steps_run and "curve" not in b
            X = Preprocessor(r.hparams["preprocess"], state=pre).transform(torch.as_tensor(fs.features[idx]).double())
        else:
            assert b["step"] == r.best_step
            curve = b["curve"]
            assert curve["rows"] == 24 and curve["step"] == r.history["step"]
            assert all(len(curve[t]) == len(curve["step"]) for t in TERMS)
            X = Preprocessor(r.hparams["preprocess"], state=pre).transform(torch.as_tensor(fs.features[idx]).double())
        losses, maxima = formed_maxima(r.theta.double(), X, torch.as_tensor(fs.y[idx]),
                                       torch.as_tensor(fs.group[idx]))
        assert list(b["losses"].values()) == pytest.approx(losses, rel=1e-9)
        assert [b[t] for t in TERMS] == pytest.approx(maxima, rel=1e-9)
        assert all(len(b["pairs"][t]) == 2 and b["pairs"][t][0] != b["pairs"][t][1] for t in TERMS)
    # one head of the chunk has γ ≠ 0, so R₃ is computed (and logged) for the chunk
    assert {r.hparams["gamma"] for r in fitted["cma"]} == {0.0, 1.0}
    assert all("third" in r.history["penalty"] for r in fitted["cma"])
