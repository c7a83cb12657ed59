"""Issue 26, items 8-15: values that passed the checks and then broke a fit, and data that
came out silently wrong. Each refused case runs the CLI in a fresh interpreter, as a user
would: exit code 2, one line on stderr, no traceback, and every file the user had unchanged.
The silently-wrong cases also check that the wrong result is gone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_user_error, run_cli
from tests.h5craft import toy_arrays, write_feature_file
from tests.userfiles import previous_run, snapshot

FAST = ["--steps", "10", "--quiet"]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The user's folder: a feature file and a previous run that must survive."""
    write_feature_file(tmp_path / "toy.h5")
    return previous_run(tmp_path)


def refused(work: Path, args: list[str | Path], *fragments: str) -> None:
    """`probe ARGS` is refused in one line naming ``fragments``, and nothing under ``work`` changes."""
    before = snapshot(work)
    res = run_cli(*args)
    assert_user_error(res, *fragments)
    assert snapshot(work) == before


def fit_refused(work: Path, extra: list[str], *fragments: str, file: str = "toy.h5") -> None:
    refused(work, ["fit", work / file, "--out", work / "run", "--overwrite", *FAST, *extra], *fragments)


# --- item 9: seeds fit in 63 bits ----------------------------------------------------------


def test_seeds_beyond_63_bits_refused(work: Path) -> None:
    fit_refused(work, ["--method", "erm", "--solver", "adam", "--init", "torch-linear",
                       "--seed", "18446744073709551616"], "--seed", "18446744073709551616", "9223372036854775807")


def test_the_largest_seed_fits_every_seeded_generator(work: Path) -> None:
    """2^63 - 1 reaches torch's seeding (torch-linear), hutchinson's per-step probes and DFR's
    scikit-learn without an overflow; 2^63 (as an integer, or as text) and 1e30 are refused,
    not rounded down to it."""
    from base.errors import UserError
    from probe.api import fit_grid
    from probe.methods import COMMON

    top = 2**63 - 1
    rows = fit_grid(work / "toy.h5", ["erm", "hutchinson", "dfr"], {"seed": [top]}, solver="adam",
                    init="torch-linear", steps=2, eval_every=2, bounds_rows=16, bounds_curve_rows=0)["rows"]
    assert {r.method: r.seed for rs in rows.values() for r in rs} == {"erm": top, "hutchinson": top, "dfr": top}
    assert COMMON["seed"].parse(str(top)) == [top]
    for given in (2**63, "9223372036854775808", "1e30"):
        with pytest.raises(UserError, match="is not allowed; values must be finite and >= 0 and <= 9223372036854775807"):
            COMMON["seed"].values(given)


# --- item 10: no float flag takes NaN or infinity; no JSON file holds them ---------------


def test_nonfinite_settings_refused(work: Path) -> None:
    fit_refused(work, ["--method", "erm", "--solver", "adam", "--optimizer", "sgd", "--momentum", "nan"],
                "--momentum", "nan", "finite")


def test_library_refuses_every_nonfinite_setting() -> None:
    from base.errors import UserError
    from probe.pipeline import make_settings

    for name, value, why in (("momentum", float("inf"), "finite"), ("momentum", float("-inf"), "finite"),
                             ("tol", float("nan"), "finite"), ("momentum", 1.0, "< 1"), ("momentum", 1.5, "< 1")):
        with pytest.raises(UserError, match=f"`{name}`.*{why}"):
            make_settings(**{name: value})
    assert make_settings(momentum=0.999).momentum == 0.999


NONFINITE_TOKEN = re.compile(r"\bNaN\b|-?Infinity\b")


def test_no_json_file_holds_nan_or_infinity(work: Path) -> None:
    """A fit whose heads diverge, its report as JSON, and a report of a run whose results
    hold a NaN (as an earlier version wrote them): every JSON file is strict, the NaN is a
    null, and the record says which value it was."""
    from probe.api import fit_grid

    run = work / "diverged"
    fit_grid(work / "toy.h5", ["erm", "cma"], {"lr": [1e30, 1e-2], "alpha": [1.0], "beta": [1.0], "anneal": [0]},
             run, solver="adam", optimizer="sgd", steps=4, eval_every=2, bounds_rows=16, bounds_curve_rows=16)
    results = run / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert any(r["status"] == "diverged" for r in rows)
    selected = json.loads((run / "summary.json").read_text())["methods"]["erm"]["selected"]["run_ids"][0]
    for r in rows:  # a NaN where an earlier version could write one: a bound of the selected head
        if r["run_id"] == selected:
            r["bounds"]["grad"] = float("nan")
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "NaN" in results.read_text()
    res = run_cli("report", run, "--format", "json", "--out", work / "report.json")
    assert res.code == 0, res.stderr
    written = [p for p in sorted(work.rglob("*.json*")) if p != results]
    assert {p.name for p in written} >= {"summary.json", "report.json"}
    for path in written:
        text = path.read_text()
        assert not NONFINITE_TOKEN.search(text), path
        json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines()]
    report = json.loads((work / "report.json").read_text())
    assert report["bounds"][0]["seeds"][0]["grad"] is None
    assert "bounds.0.seeds.0.grad" in report["nonfinite"]


def test_json_text_replaces_and_lists_nonfinite_values() -> None:
    from base.io import json_text
    from probe.records.results import Result, parse_results, to_jsonl

    row = Result("erm", {"seed": 0}, history={"step": [1, 2], "loss": [0.5, float("inf")], "penalty": {}},
                 bounds={"grad": np.float32("nan")})
    text = to_jsonl([row])
    assert not NONFINITE_TOKEN.search(text)
    obj = json.loads(text)
    assert obj["history"]["loss"] == [0.5, None] and obj["bounds"]["grad"] is None
    assert obj["nonfinite"] == ["history.loss.1", "bounds.grad"]
    assert parse_results(text, "x")[0].history["loss"] == [0.5, None]
    assert json.loads(json_text({"a": [1.0, -float("inf")]})) == {"a": [1.0, None], "nonfinite": ["a.1"]}


# --- item 8: an anneal at or past the last step -------------------------------------------


def test_anneal_at_or_past_the_steps_refused(work: Path) -> None:
    fit_refused(work, ["--method", "erm,cma", "--anneal", "0,50"], "--anneal 50", "--steps 10", "never switch on")


def test_the_estimator_refuses_an_anneal_past_its_steps() -> None:
    from base.errors import UserError
    from probe.api import LinearHead

    rng = np.random.default_rng(0)
    X, y, dom = rng.normal(size=(40, 3)), np.arange(40) % 2, (np.arange(40) // 2) % 2
    with pytest.raises(UserError, match="`anneal` 10 is not below `steps` 10"):
        LinearHead("cma", anneal=10, steps=10).fit(X, y, dom)
    assert LinearHead("cma", anneal=9, steps=10).fit(X, y, dom).result_.status == "ok"


# --- item 18: the protocol's start-of-run line and settings follow the effective values ----


def test_the_protocol_line_says_what_runs(tmp_path: Path) -> None:
    """`--steps 40 --method cma` under cma-paper: 40 steps, CMA's grid alone (its anneal
    values below 40: only 0, so 5 seeds), the evaluation interval derived from 40."""
    path = write_feature_file(tmp_path / "wb.h5", dataset="waterbirds")
    res = run_cli("fit", path, "--protocol", "cma-paper", "--steps", "40", "--method", "cma", "--alpha", "1",
                  "--beta", "1", "--pca-dim", "4", "--bounds-rows", "16", "--bounds-curve-rows", "0",
                  "--out", tmp_path / "run")
    assert res.code == 0, res.stderr
    line = " ".join((res.stdout + res.stderr).split())
    assert "protocol cma-paper for waterbirds: 40 steps of 500" in line and "evaluated every 2," in line
    assert "configurations × seeds: cma 5;" in line and "erm" not in line.split("configurations")[1]
    prov = json.loads((tmp_path / "run" / "summary.json").read_text())["provenance"]
    assert prov["settings"]["steps"] == 40 and prov["settings"]["eval_every"] == 2
    assert list(prov["protocol"]["grids"]) == ["cma"] and prov["protocol"]["grids"]["cma"]["anneal"] == [0]


def test_a_protocol_names_the_dataset_whose_choices_it_takes(work: Path) -> None:
    from base.errors import UserError
    from probe.api import fit_grid
    from probe.methods.protocols import resolve

    assert resolve("cma-paper:celeba", "mine", 1000, 2).settings["steps"] == 50 * 2  # 50 epochs of 2 batches
    assert resolve("cma-paper", "waterbirds", 4795, 2, {"steps": 1000}).grids["cma"]["anneal"] == [0, 700]
    assert resolve("cma-paper", "waterbirds", 4795, 2, {"batch_size": 100}).settings["steps"] == 300 * 48
    with pytest.raises(UserError, match="not 'imagenet'"):
        resolve("cma-paper:imagenet", "mine", 1000, 2)
    res = fit_grid(work / "toy.h5", "cma", {"seed": [0], "alpha": [1.0], "beta": [1.0]}, work / "mine",
                   protocol="cma-paper:waterbirds", steps=8, pca_dim=4)
    prov = json.loads((work / "mine" / "summary.json").read_text())["provenance"]["protocol"]
    assert (prov["name"], prov["dataset"], prov["file_dataset"]) == ("cma-paper", "waterbirds", "toy")
    assert res["rows"]["cma"][0].hparams["preprocess"] == "pca+isr-mean"


# --- item 11: isr-mean asked for more directions than there are -----------------------------


def test_isr_dims_beyond_the_columns_or_the_span_refused(work: Path) -> None:
    """6 feature columns: 50 directions refused at plan time; 3 fit in the width but the
    attribute's class-conditional means span 2 (two classes, two values), refused at fit time."""
    base = ["--method", "erm", "--preprocess", "isr-mean"]
    fit_refused(work, [*base, "--isr-dims", "50"], "--isr-dims 50", "6 feature columns", "at most 5")
    fit_refused(work, [*base, "--isr-dims", "3"], "--isr-dims 3", "span 2", "at most 2")


# --- item 12: an attribute value of 10^12 --------------------------------------------------


def test_huge_attribute_values_are_counted_densely(tmp_path: Path) -> None:
    """`fit --domain a` and `hull --domain a` on a file whose attribute takes the value 10^12
    (once 8 TB of per-value counts, and an out-of-memory): both finish, name the domain by its
    value, and stay small (the children's peak memory); ISR-Mean's attribute means too."""
    import resource

    arrays = toy_arrays()
    arrays["a"] = arrays["a"] * 10**12
    path = write_feature_file(tmp_path / "big.h5", arrays)
    fit = run_cli("fit", path, "--method", "cma", "--domain", "a", "--alpha", "1", "--beta", "1", "--anneal", "0",
                  "--preprocess", "pca+isr-mean", "--out", tmp_path / "run", *FAST)  # isr-mean reads `a` too
    assert fit.code == 0, fit.stderr
    row = json.loads((tmp_path / "run" / "results.jsonl").read_text().splitlines()[0])
    assert set(row["bounds"]["losses"]) == {"a=0", "a=1000000000000"}
    hull = run_cli("hull", path, "--domain", "a", "--json")
    assert hull.code == 0, hull.stderr
    assert set(json.loads(hull.stdout)["sets"][0]["weights"]) == {"a=0", "a=1000000000000"}
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 4 << 20  # KiB: 4 GiB


def test_the_estimator_numbers_validation_groups_densely() -> None:
    from probe.api import LinearHead

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    head = LinearHead("erm", steps=5, solver="adam").fit(X, y, y, X_val=X, y_val=y, groups_val=y * 10**12)
    assert set(head.result_.metrics["val"]["per_group"]) == {"0", "1", "1000000000000"}
    assert head.result_.metrics["val"]["per_group"]["1"]["n"] == 0  # a training domain, no validation rows


# --- item 13: hull's memory and its splits ---------------------------------------------------


def test_hull_refuses_what_it_cannot_hold_and_an_empty_split_list(tmp_path: Path) -> None:
    """12 rows × 100,000 columns: a d×d second moment per set is 80 GB, refused in one line
    before anything is allocated (the children stayed small); `--splits ,` names no split."""
    import resource

    wide = write_feature_file(tmp_path / "wide.h5", toy_arrays(1, 100_000))
    refused(tmp_path, ["hull", wide], "wide.h5", "100000 feature columns", "GiB", "smaller encoder")
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 4 << 20  # KiB: 4 GiB
    refused(tmp_path, ["hull", write_feature_file(tmp_path / "toy.h5"), "--splits", ","], "--splits", "no split")


def test_hull_counts_a_split_named_twice_once(tmp_path: Path) -> None:
    from base.errors import UserError
    from features.store import read_features
    from probe.diagnostics.hull import hull_check, memory_needed
    from probe.domains import resolve

    fs = resolve(read_features(write_feature_file(tmp_path / "toy.h5")), "group")
    once, twice = hull_check(fs, ("val",)), hull_check(fs, ("val", "val"))
    assert [f.to_json() for f in twice] == [f.to_json() for f in once] and len(once) == 5  # the split, 4 groups
    need = memory_needed(fs, fs.train_domains(), ("val", "test"), 8192)
    with pytest.raises(UserError, match="needs about"):
        hull_check(fs, memory_bytes=need - 1)
    assert hull_check(fs, memory_bytes=need)


# --- item 14: names that collide --------------------------------------------------------------


def test_a_table_whose_labels_and_attributes_make_one_group_name_twice(tmp_path: Path) -> None:
    """Labels `a`, `a/b` and attributes `b/c`, `c`: two groups named `a/b/c` (info then counted
    36 of 48 rows); refused naming the values, before any model is loaded."""
    (tmp_path / "meta.csv").write_text("text,label,attr,split\nx1,a,b/c,0\nx2,a,c,0\nx3,a/b,b/c,1\nx4,a/b,c,2\n")
    refused(tmp_path, ["extract", "table", "--root", tmp_path, "--metadata", "meta.csv", "--text-col", "text",
                       "--label-col", "label", "--attr-col", "attr", "--encoder", "minilm",
                       "--out", tmp_path / "t.h5"], "meta.csv", "label 'a' with attr 'b/c'",
            "label 'a/b' with attr 'c'", "'a/b/c'")
    assert not (tmp_path / "t.h5").exists()


def test_every_reader_refuses_a_file_that_names_a_group_twice(tmp_path: Path) -> None:
    from base.errors import UserError
    from features.store import read_features

    path = write_feature_file(tmp_path / "dup.h5", group_names=["a/b/c", "x", "a/b/c", "y"])
    refused(tmp_path, ["info", path], "dup.h5", "group_names", "'a/b/c' twice")
    with pytest.raises(UserError, match="'a/b/c' twice"):
        read_features(path)


def test_names_built_from_values_never_collide_silently() -> None:
    from base.errors import UserError
    from features.datasets._tables import Table
    from features.datasets.base import DatasetSpec
    from features.datasets.table import labels

    def table(**columns: list[str]) -> Table:
        n = len(next(iter(columns.values())))
        return Table(path="t.csv", header=list(columns), columns=columns, lines=list(range(2, n + 2)))

    # a bare number is named y=1, so a label that is the text "y=1" would collide with it
    with pytest.raises(UserError, match="g value '1' and g value 'g=1' would both be the group 'g=1'"):
        labels(table(y=["0", "1"], g=["1", "g=1"]), {"label_col": "y", "group_col": "g"})
    fine = labels(table(y=["a", "a/b"], at=["b", "c"]), {"label_col": "y", "attr_col": "at"})
    assert len(set(fine.group_names)) == len(fine.group_names) == 4
    with pytest.raises(UserError, match="group_names has 'g' twice"):
        DatasetSpec("mine", "text", ["t", "u"], ["0", "1"], np.zeros(2), np.zeros(2), np.array([0, 1]),
                    np.zeros(2), ["c"], ["g", "g"])


# --- item 15: a split code outside the schema -------------------------------------------------


def test_a_split_code_outside_the_schema_is_refused(work: Path) -> None:
    """An int64 split column with 256 on the test rows: cast to int8 it read as 0, and 48 test
    rows trained silently."""
    from base.errors import UserError
    from features.datasets.base import DatasetSpec
    from features.store import FeatureWriter, read_features

    arrays = toy_arrays()
    split = arrays["split"].astype(np.int64)
    split[split == 2] = 256
    arrays["split"] = split
    path = write_feature_file(work / "bad_split.h5", arrays)
    fit_refused(work, ["--method", "erm"], "bad_split.h5", "split code 256", "not 0 (train), 1 (val) or 2 (test)",
                file="bad_split.h5")
    writer = FeatureWriter.create(work / "new.h5", {}, dim=2)
    rows = {"features": np.zeros((1, 2), np.float32), "y": [0], "a": [0], "group": [0], "split": np.array([256]),
            "id": np.array(["r"], dtype=object), "index": [0]}
    for step in (lambda: read_features(path), lambda: writer.append(rows),  # as merge copies a shard's rows
                 lambda: DatasetSpec("mine", "text", ["t"], ["0"], [0], [0], [0], np.array([256]), ["c"], ["g"])):
        with pytest.raises(UserError, match="split code 256"):
            step()
    writer.close()


# --- item 17: the authors' PCA, as an option ---------------------------------------------------


def test_pca_solver_and_seed_are_checked(work: Path) -> None:
    """scikit-learn seeds numpy's legacy generator, which takes 32 bits."""
    fit_refused(work, ["--method", "erm", "--pca-solver", "sklearn", "--pca-seed", "4294967296"], "--pca-seed",
                "4294967296", "4294967295")


def test_the_protocol_records_its_pca_and_isr_choices(tmp_path: Path) -> None:
    from probe.api import fit_grid

    path = write_feature_file(tmp_path / "wb.h5", dataset="waterbirds")
    fit_grid(path, "cma", {"seed": [0], "alpha": [1.0], "beta": [1.0]}, tmp_path / "run", protocol="cma-paper",
             steps=4, pca_dim=4)
    settings = json.loads((tmp_path / "run" / "summary.json").read_text())["provenance"]["settings"]
    assert (settings["pca_solver"], settings["isr_form"]) == ("sklearn", "rotate") and "pca_seed" not in settings
