"""The command line is built from declarations: quick to start, and its help lists what is registered."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli


def test_building_the_cli_imports_no_model_library() -> None:
    # A fresh interpreter: in this one other tests have long imported torch.
    # torch may be bound lazily (base.lazy) but must not have been imported.
    code = ("import sys\nimport cli.main\nfrom base.lazy import is_loaded\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'transformers', 'open_clip', 'h5py', 'timm', "
            "'datasets', 'pyarrow') "
            "if is_loaded(m)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_extract_help_comes_from_the_registries() -> None:
    from features.datasets import datasets
    from features.encoders import families

    res = run_cli("extract", "--help")
    assert res.code == 0, res.stderr
    text = " ".join(res.stdout.replace("│", " ").split())
    for name in datasets():
        assert name in text
    for family in families():
        assert family.help.replace("`weights`", "--weights") in text
    for flag in ("--target", "--metadata", "--image-col", "--text-source", "--split-col", "--identity", "--prompts",
                 "--class-names"):
        assert flag in text
    assert "auto|jsonl|glue" in text and "float32|float16" in text and "image|text" in text


@pytest.mark.parametrize("args", [["extract", "demo", "--nope"], ["extract", "demo", "--text-source"]])
def test_dataset_flags_are_real_flags(args: list[str]) -> None:
    res = run_cli(*args, "--out", "x.h5")
    assert res.code == 2 and "Traceback" not in res.stderr
