"""Issue 17, item 5 for `probe report` and `probe merge`: a command never writes over its own
inputs, over a file of a run folder or over a feature file (exit 2, one line, nothing changed).

Each case runs the CLI in a fresh interpreter, as a user would (none of these imports torch).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.h5craft import write_feature_file
from tests.runfolders import two_runs
from tests.userfiles import snapshot


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Two run folders (one with a head file) and a feature file beside them."""
    two_runs(tmp_path)
    (tmp_path / "run_a" / "heads").mkdir()
    (tmp_path / "run_a" / "heads" / "cma.safetensors").write_bytes(b"a head")
    write_feature_file(tmp_path / "features.h5")
    return tmp_path


@pytest.mark.parametrize(("target", "fragments"), [
    ("run_a/summary.json", ("summary.json", "run folder", "report.md")),
    ("run_a/results.jsonl", ("results.jsonl", "run folder")),
    ("run_a/heads/cma.safetensors", ("cma.safetensors", "run folder")),
    ("run_b/summary.json", ("run_b", "run folder")),  # a run folder the report does not read
    ("features.h5", ("features.h5", "feature file")),
    ("run_a", ("run_a", "is a folder")),
])
def test_report_refuses_to_write_over(work: Path, target: str, fragments: tuple[str, ...]) -> None:
    before = snapshot(work)
    res = run_cli("report", work / "run_a", "--format", "markdown", "--out", work / target)
    assert_user_error(res, "--out", *fragments)
    assert snapshot(work) == before


def test_report_beside_the_run_is_written_and_replaced(work: Path) -> None:
    """The control: a report file of its own inside the run folder (as `make demo` writes) is fine."""
    out = work / "run_a" / "report.md"
    for _ in range(2):
        res = run_cli("report", work / "run_a", "--format", "markdown", "--out", out)
        assert res.code == 0, res.stderr
    assert "run_a" in out.read_text() and "selected" in out.read_text()


def test_merge_refuses_a_shard_or_another_file_as_its_output(work: Path) -> None:
    shard = work / "features.h5"
    before = snapshot(work)
    res = run_cli("merge", shard, shard, work / "other.h5", "--overwrite", "--quiet")
    assert_user_error(res, "features.h5", "one of the shards")
    res = run_cli("merge", work / "run_a" / "summary.json", shard, "--overwrite", "--quiet")
    assert_user_error(res, "summary.json", "not a feature file", "--overwrite")
    assert snapshot(work) == before


def test_report_refuses_to_write_over_a_runs_inferred_domains(work: Path) -> None:
    """domains.csv is a file of the run folder's format (the training rows' inferred domains):
    a report never replaces it, of a run it reads or of any other."""
    from base.errors import UserError
    from probe.reports.runfolder import check_output_file

    for run in (work / "run_a", work / "run_b"):
        (run / "domains.csv").write_text("id,domain\nrow0,d0\n")
    for out, reads in ((work / "run_a" / "domains.csv", [work / "run_a"]),
                       (work / "run_b" / "domains.csv", [work / "run_a"])):
        with pytest.raises(UserError, match="domains.csv.* run folder"):
            check_output_file(out, reads)
    check_output_file(work / "run_a" / "report.csv", [work / "run_a"])  # the control
