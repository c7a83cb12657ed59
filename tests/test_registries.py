"""The registries beside the methods': preprocessing kinds, domain sources, the options
that methods and kinds own, and the typed summary. Each list a user sees (flags, help,
choices, the estimator's parameters, the split cache's key) is derived from them, so a
new entry needs no other edit."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from base.errors import UserError
from cli.fit import setting_options
from features.store import read_features
from probe import moments
from probe.api import LinearHead, fit_grid, make_settings
from probe.domains import REGISTRY as SOURCES
from probe.domains import DomainSource, register, resolve, source_names
from probe.methods import COMMON, all_options, fill_help
from probe.methods.cma import HESSIAN_METHODS
from probe.preprocessing import REGISTRY as KINDS
from probe.preprocessing import Kind, Preprocessor, kind_names
from probe.preprocessing import register as register_kind
from probe.records.summary import Summary
from probe.train.data import SplitCache
from tests.h5craft import toy_arrays, write_feature_file


@pytest.fixture()
def toy(tmp_path: Path):
    return read_features(write_feature_file(tmp_path / "toy.h5", toy_arrays(16, 5)))


def test_preprocess_choices_knob_flags_and_estimator_parameters_come_from_the_kinds() -> None:
    assert COMMON["preprocess"].allowed == kind_names() and set(kind_names()) == set(KINDS)
    for name, cls in KINDS.items():
        assert cls.help.split(" ")[0] == name and name in COMMON["preprocess"].help
    knobs = {k.name for cls in KINDS.values() for k in cls.knobs}
    assert knobs == {"pca_dim", "pca_solver", "pca_seed", "isr_class", "isr_dims", "isr_form"}
    flags = {o.name for o in setting_options()}
    assert knobs | {"hessian_method", "probes"} <= flags
    assert set(all_options()) <= set(inspect.signature(LinearHead).parameters)


def test_a_new_kind_is_one_declaration(toy) -> None:
    """A kind registered here (mean removal with a knob) fits through the whole pipeline, its
    knob reaches it as an option, and the split cache keys on that knob by itself."""
    class Shift(Kind):
        name = "shift-test"
        help = "shift-test (subtract the training mean, plus a constant)"
        from probe.records.grid import Param
        knobs = (Param("shift_by", "shift-test: added after centring.", kind=float, default=0.0),)
        state = ("mean",)

        @classmethod
        def fit(cls, X, y, a, knobs):
            return {"mean": X.mean(0) - float(knobs.get("shift_by") or 0.0)}

        @classmethod
        def apply(cls, X, state, owned):
            return X - state["mean"]

    register_kind(Shift)
    try:
        pre = Preprocessor("shift-test", shift_by=2.0).fit(torch.ones(3, 2), torch.zeros(3), torch.zeros(3))
        assert torch.equal(pre.transform(torch.ones(1, 2)), torch.full((1, 2), 2.0))
        assert "shift_by" in all_options()
        fs = resolve(toy, "group")
        cache = SplitCache()
        one = cache.get(fs, "shift-test", make_settings("cpu", shift_by=1.0))
        again = cache.get(fs, "shift-test", make_settings("cpu", shift_by=1.0))
        other = cache.get(fs, "shift-test", make_settings("cpu", shift_by=3.0))
        assert one is again and other is not one  # the knob is in the key without being named there
        res = fit_grid(toy, ["erm"], {"preprocess": ["shift-test"]}, None, shift_by=0.5)
        assert res["rows"]["erm"][0].hparams["preprocess"] == "shift-test"
    finally:
        KINDS.pop("shift-test", None)


def test_knobs_that_cannot_apply_are_refused_in_one_line(toy) -> None:
    with pytest.raises(UserError, match="`isr_dims` 50: .* 5 feature columns"):
        fit_grid(toy, ["erm"], {"preprocess": ["isr-mean"]}, None, isr_dims=50)
    with pytest.raises(UserError, match="`pca_dim` 99"):
        fit_grid(toy, ["erm"], {}, None, pca_dim=99)
    with pytest.raises(UserError, match="unknown setting 'pca_dims'"):
        make_settings("cpu", pca_dims=3)


def test_domain_sources_declare_what_they_read_and_fill_the_help(toy) -> None:
    assert source_names()[:3] == ["group", "a", "y"]
    assert SOURCES["group"].reads == SOURCES["a"].reads == {"train_groups"} and not SOURCES["y"].reads
    help_text = fill_help("domains: {domain_sources}.")
    assert all(SOURCES[n].help in help_text for n in source_names())
    domain_flag = next(o for o in setting_options() if o.name == "domain")
    assert "{" not in domain_flag.help and "y (the classes" in domain_flag.help
    with pytest.raises(UserError, match="`domain` 'column-b' is not one of: group, a, y"):
        make_settings("cpu", domain="column-b")


def test_a_new_domain_source_is_one_declaration(toy) -> None:
    @register
    class Parity(DomainSource):
        name = "parity-test"
        help = "parity-test (row index parity)"

        @classmethod
        def domains(cls, fs, settings):
            n = int(fs.split_mask("train").sum())
            return np.arange(n) % 2 * 10**12, {0: "even", 10**12: "odd"}  # huge codes cost nothing

    try:
        assert "parity-test (row index parity)" in fill_help("{domain_sources}")
        fs = resolve(toy, "parity-test")
        assert fs.domain_names == ["even", "odd"] and set(fs.train_domains()) == {0, 1}
        assert (fs.domain[~fs.split_mask("train")] == -1).all()
        rows = fit_grid(toy, ["cma"], {"alpha": [1.0], "beta": [1.0], "anneal": [0]}, None, steps=4,
                        batch_size=8, eval_every=2, domain="parity-test")["rows"]["cma"]
        assert rows[0].hparams["domain"] == "parity-test"
        assert set(rows[0].bounds["losses"]) == {"even", "odd"}
    finally:
        SOURCES.pop("parity-test")


def test_attribute_codes_are_renumbered_densely(toy) -> None:
    toy.a[:] = np.where(toy.a > 0, 10**12, 0)
    fs = resolve(toy, "a")
    assert fs.domain_names == ["a=0", f"a={10**12}"] and fs.train_domains().max() == 1


def test_method_options_are_owned_and_checked_by_their_method(tmp_path: Path) -> None:
    assert set(HESSIAN_METHODS) == set(moments.METHODS)
    arrays = toy_arrays(16, 5)
    arrays["y"] = arrays["group"] % 3  # three classes (groups stay the file's four)
    fs = read_features(write_feature_file(tmp_path / "three.h5", arrays, class_names=["c0", "c1", "c2"]))
    with pytest.raises(UserError, match="`hessian_method` binary needs two classes"):
        fit_grid(fs, ["cma"], {}, None, hessian_method="binary")
    with pytest.raises(UserError, match="`hessian_method` 'exact' is not one of"):
        make_settings("cpu", hessian_method="exact")
    with pytest.raises(UserError, match="`probes`"):
        make_settings("cpu", probes=0)
    st = make_settings("cpu", probes=7)
    assert st.options == {"probes": 7} and st.public()["probes"] == 7


def test_the_summary_is_one_typed_record_both_ways(tmp_path: Path, toy) -> None:
    res = fit_grid(toy, ["erm", "cma"], {"alpha": [1.0], "beta": [1.0], "anneal": [0], "seed": [0, 1]},
                   tmp_path / "run", steps=4, batch_size=8, eval_every=2)
    summary = res["summary"]
    assert isinstance(summary, Summary) and summary.schema == "probe-run/2"
    again = Summary.from_json(summary.to_json())
    assert again.to_json() == summary.to_json()
    cma = again.methods["cma"]
    assert cma.seeds["test"].n_seeds == 2 and cma.seeds["test"].get("wga").n == 2
    old = summary.to_json()
    old.pop("schema")
    old["methods"]["cma"]["a_key_of_a_later_version"] = 1
    read = Summary.from_json(old)
    assert read.schema == "probe-run/1" and read.methods["cma"].extra == {"a_key_of_a_later_version": 1}
