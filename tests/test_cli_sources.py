"""The new sources' mistakes on the command line: one line on stderr naming the flag, exit 2.

Each runs `probe` in a fresh interpreter, as a user would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.h5craft import write_feature_file


def test_unknown_timm_model(tmp_path: Path) -> None:
    res = run_cli("extract", "demo", "--encoder", "timm:no_such_net", "--weights", "none", "--out", tmp_path / "x.h5")
    assert_user_error(res, "--encoder timm:no_such_net: unknown timm model")


@pytest.mark.slow
def test_timm_weights_that_do_not_fit(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 3)}, tmp_path / "other.safetensors")
    res = run_cli("extract", "demo", "--encoder", "timm:test_vit", "--weights", tmp_path / "other.safetensors",
                  "--out", tmp_path / "x.h5")
    assert_user_error(res, "--weights", "other.safetensors: does not fit timm:test_vit", "missing key")


def test_a_prompt_without_placeholder(tmp_path: Path) -> None:
    res = run_cli("extract", "demo", "--prompts", "a photo of a", "--out", tmp_path / "x.h5")
    assert_user_error(res, "--prompts 'a photo of a': a template needs {} where the class name goes")


def test_a_parquet_file_missing_a_named_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", "c"], "y": [0, 1, 0], "a": [0, 0, 1], "split": [0, 1, 2]}),
                   tmp_path / "t.parquet")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    res = run_cli("extract", "hf", "--root", tmp_path / "t.parquet", "--text-col", "text", "--label-col", "label",
                  "--out", tmp_path / "x.h5")
    assert_user_error(res, "--label-col 'label' not found in the Hugging Face dataset", "'text', 'y', 'a', 'split'")


def test_zero_shot_on_a_file_without_prompts(tmp_path: Path) -> None:
    path = write_feature_file(tmp_path / "plain.h5")
    res = run_cli("fit", path, "--method", "erm,zeroshot", "--out", tmp_path / "run")
    assert_user_error(res, "--method zeroshot", '--prompts "a photo of a {}."')
