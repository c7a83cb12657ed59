"""probe.diagnostics.hull: the mixture of training domains nearest each evaluation group, on cases whose
answer is known (a mixture of the training domains, and a group shifted outside them)."""

from __future__ import annotations

import numpy as np
import pytest

from base.errors import UserError
from features.store import SPLITS, FeatureSet
from probe.diagnostics.hull import hull_check, project_simplex, simplex_least_squares
from probe.domains import resolve

D = 5


def _domain(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """Training domain k: its own mean and covariance (all zero mean in the last coordinate)."""
    mean = np.zeros(D)
    mean[k] = 2.0
    scale = np.ones(D)
    scale[(k + 1) % (D - 1)] = 2.0
    return rng.normal(size=(n, D)) * scale + mean


def feature_set() -> FeatureSet:
    rng = np.random.default_rng(0)
    train = [_domain(rng, k, n) for k, n in enumerate((3000, 2000, 1000))]
    exact = np.concatenate([train[0], train[2]])  # literally the rows of domains 0 and 2
    fresh = np.concatenate([_domain(rng, 1, 1400), _domain(rng, 2, 600)])  # a fresh 0.7/0.3 mixture
    shifted = _domain(rng, 0, 2000)
    shifted[:, D - 1] += 4.0  # a direction no training domain moves in
    blocks = [(train[0], 0, 0), (train[1], 1, 0), (train[2], 2, 0), (exact, 0, 2), (fresh, 1, 2),
              (shifted, 2, 2), (train[1][:200], 0, 1)]
    X = np.concatenate([b for b, _, _ in blocks]).astype(np.float32)
    group = np.concatenate([np.full(len(b), g) for b, g, _ in blocks]).astype(np.int64)
    split = np.concatenate([np.full(len(b), s) for b, _, s in blocks]).astype(np.int8)
    n = len(X)
    return FeatureSet(features=X, y=np.zeros(n, np.int64), a=np.full(n, -1, np.int64), group=group, split=split,
                      ids=np.arange(n).astype(str).astype(object), class_names=["c"],
                      group_names=["g0", "g1", "g2"], path="<test>")


def test_mixture_is_recovered_and_a_shifted_group_is_outside() -> None:
    assert SPLITS["test"] == 2
    fits = {(f.split, f.group): f for f in hull_check(resolve(feature_set(), "group"), splits=("test",))}
    exact, fresh, shifted = fits[("test", "g0")], fits[("test", "g1")], fits[("test", "g2")]
    # the rows of domains 0 and 2 (3000 and 1000): the weights exactly, no residual
    assert list(exact.weights.values()) == pytest.approx([0.75, 0.0, 0.25], abs=1e-8)
    assert exact.residual < 1e-8 * exact.distance and exact.near
    # a fresh sample of a 0.7/0.3 mixture of domains 1 and 2: weights close, residual at the noise level
    assert list(fresh.weights.values()) == pytest.approx([0.0, 0.7, 0.3], abs=0.03)
    assert fresh.residual < 2 * fresh.noise and fresh.near
    # shifted along a direction no training domain has: most of its departure is unexplained
    assert shifted.relative > 0.5 and shifted.residual > 10 * shifted.noise and not shifted.near
    # the whole split, a mixture of the three groups, includes the shifted one: outside too
    assert not fits[("test", None)].near and fits[("test", None)].n == 4000 + 2000 + 2000
    assert all(abs(sum(f.weights.values()) - 1) < 1e-9 and min(f.weights.values()) >= 0 for f in fits.values())


def test_validation_groups_and_bad_arguments() -> None:
    fs = resolve(feature_set(), "group")
    fits = hull_check(fs, splits=("val",))
    assert [(f.split, f.group) for f in fits] == [("val", None), ("val", "g0")]
    assert fits[1].weights["g1"] == pytest.approx(1.0, abs=0.05) and fits[1].near
    with pytest.raises(UserError, match="`splits`"):
        hull_check(fs, splits=("train",))
    with pytest.raises(UserError, match="`threshold`"):
        hull_check(fs, threshold=2.0)


def test_simplex_solver_and_projection() -> None:
    w = project_simplex(np.array([0.5, 2.0, -1.0]))
    assert w.tolist() == pytest.approx([0.0, 1.0, 0.0]) and w.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    U = rng.normal(size=(4, 9))
    target = np.array([0.2, 0.5, 0.3, 0.0]) @ U
    w = simplex_least_squares(U @ U.T, U @ target)
    assert w.tolist() == pytest.approx([0.2, 0.5, 0.3, 0.0], abs=1e-8)


def test_probe_hull_command(tmp_path) -> None:
    import json

    from tests.conftest import assert_user_error, run_cli
    from tests.h5craft import toy_arrays, write_feature_file

    path = write_feature_file(tmp_path / "toy.h5", toy_arrays(40, 4))
    res = run_cli("hull", path, "--json", "--splits", "test")
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    assert [s["group"] for s in out["sets"]] == [None, "small/blue", "small/green", "large/blue", "large/green"]
    assert all(s["split"] == "test" and abs(sum(s["weights"].values()) - 1) < 1e-9 for s in out["sets"])
    table = run_cli("hull", path)
    assert table.code == 0 and "near the hull" in table.stdout
    assert_user_error(run_cli("hull", path, "--threshold", "3"), "--threshold", "[0, 1]")
    assert_user_error(run_cli("hull", path, "--splits", "train"), "--splits")


def test_attribute_domains_need_the_attribute() -> None:
    with pytest.raises(UserError, match="`domain` a"):
        resolve(feature_set(), "a")  # the test set has no attribute


def test_hull_domain_choices_and_help_are_the_registry_and_every_source_works(tmp_path) -> None:
    """`--domain`'s choices and help are the domain-source registry's, and each source
    resolves as `probe hull` resolves it (no fit settings: an inferred source's defaults)."""
    import typer

    from cli.hull import DomainChoice
    from cli.main import app
    from features.store import read_features
    from probe.domains import REGISTRY, source_names
    from tests.h5craft import toy_arrays, write_feature_file

    option = next(p for p in typer.main.get_command(app).commands["hull"].params if p.name == "domain")
    assert [c.value for c in DomainChoice] == source_names()
    help_text = " ".join(option.help.split())
    assert all(REGISTRY[n].help in help_text for n in source_names()), help_text
    fs = read_features(write_feature_file(tmp_path / "toy.h5", toy_arrays(40, 4)))
    for name in source_names():
        fits = hull_check(resolve(fs, name), splits=("test",))
        assert fits[0].group is None and sum(fits[0].weights.values()) == pytest.approx(1.0), name
