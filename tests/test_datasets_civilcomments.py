"""CivilComments in the WILDS layout: WILDS's labels and identities, DFR's coarse groups.

The fixture is a small ``civilcomments_v1.0/all_data_with_identities.csv`` as pandas wrote
WILDS's (an unnamed index column first, quoted multi-line comments, identity columns that
are fractions of raters, some empty). Expectations are recomputed here with the csv
module and the published rules: y = toxicity >= 0.5; an identity is mentioned when its
column is >= 0.5 (empty: not); coarse a = any of WILDS's eight identities; group = 2y + a.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from base.errors import UserError
from features.datasets import load_dataset
from features.store import read_features
from tests.test_extract import make_tiny_clip

EIGHT = ["male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white"]
OTHERS = ["transgender", "jewish", "other_religion", "asian"]  # in the file, not among WILDS's eight
HEADER = ["", "id", "comment_text", "split", "created_date", "toxicity", "severe_toxicity", *EIGHT[:3],
          "transgender", *EIGHT[3:5], "jewish", "other_religion", *EIGHT[5:], "asian", "identity_any"]
SPLITS = {"train": 0, "val": 1, "test": 2}


def civil_csv(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp / "civilcomments_v1.0"
    folder.mkdir(parents=True)
    texts = ['He said "no", then left.', "Fine, thanks", "first line\nsecond line", "ok", "Really?!", "meh"]
    rows = []
    for i in range(36):
        split = ["train", "val", "test"][i % 3]
        tox = [0.0, 0.4999, 0.5, 0.8][(i // 3) % 4]
        ident = {c: "" for c in EIGHT + OTHERS}  # most comments carry no identity annotation
        kind = (i // 12) % 3
        if kind == 1:
            ident[EIGHT[i % 8]] = ["0.5", "0.7", "1.0"][i % 3]
        elif kind == 2:
            ident.update(jewish="1.0", black=["0.0", "0.4", "0.3"][i % 3])  # mentioned, but not one of the eight
        rows.append([str(100 + i), str(rng.integers(1e6)), texts[i % len(texts)], split, "2017-01-01", str(tox),
                     "0.0", *[ident[c] for c in HEADER[7:-1]], "1.0" if kind else "0.0"])
    path = folder / "all_data_with_identities.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def expected(path: Path, identity: str = "any") -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([float(r["toxicity"]) >= 0.5 for r in rows], dtype=np.int64)
    men = {c: np.array([bool(r[c]) and float(r[c]) >= 0.5 for r in rows]) for c in EIGHT}
    a = (np.any([men[c] for c in EIGHT], axis=0) if identity == "any" else men[identity]).astype(np.int64)
    return {"y": y, "a": a, "group": 2 * y + a, "split": np.array([SPLITS[r["split"]] for r in rows]),
            "ids": [r[""] for r in rows], "texts": [r["comment_text"] for r in rows]}


@pytest.mark.parametrize("identity", ["any", "black"])
def test_wilds_layout_with_dfr_groups(tmp_path: Path, identity: str) -> None:
    path = civil_csv(tmp_path)
    spec = load_dataset("civilcomments", tmp_path, **({} if identity == "any" else {"identity": identity}))
    want = expected(path, identity)
    for key in ("y", "a", "group", "split"):
        np.testing.assert_array_equal(getattr(spec, key), want[key], err_msg=key)
    assert spec.ids == want["ids"] and spec.items == want["texts"] and spec.modality == "text"
    assert spec.class_names == ["non-toxic", "toxic"]
    attr = ["no identity", "identity"] if identity == "any" else [f"not {identity}", identity]
    assert spec.group_names == [f"{c}/{v}" for c in spec.class_names for v in attr]
    assert len(set(spec.group.tolist())) == 4  # every group has rows in the fixture


def test_thresholds_and_columns_outside_the_eight(tmp_path: Path) -> None:
    spec = load_dataset("civilcomments", civil_csv(tmp_path).parent)  # the folder itself works too
    want = expected(tmp_path / "civilcomments_v1.0" / "all_data_with_identities.csv")
    tox = {0: 0.0, 1: 0.4999, 2: 0.5, 3: 0.8}
    assert [int(spec.y[i]) for i in (0, 3, 6, 9)] == [int(tox[k] >= 0.5) for k in range(4)]
    # Rows 24..35 mention only `jewish` (and `black` below 0.5): identity_any says 1, the eight say no.
    assert (spec.a[24:] == 0).all() and (spec.a[12:24] == 1).all()
    np.testing.assert_array_equal(spec.a, want["a"])


def test_errors_are_one_line(tmp_path: Path) -> None:
    path = civil_csv(tmp_path)
    with pytest.raises(UserError, match="`identity` 'jewish': choose any or one of male"):
        load_dataset("civilcomments", tmp_path, identity="jewish")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError, match="no all_data_with_identities.csv there or in civilcomments_v1.0/"):
        load_dataset("civilcomments", tmp_path / "elsewhere")
    text = path.read_text().replace(",muslim,", ",muslims,", 1)
    path.write_text(text)
    with pytest.raises(UserError, match="column 'muslim' not found") as info:
        load_dataset("civilcomments", tmp_path)
    assert "\n" not in str(info.value)


def test_extracts_with_the_right_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    path = civil_csv(tmp_path / "data")
    clip = make_tiny_clip(tmp_path / "clip")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(SystemExit) as info:
            main(["extract", "civilcomments", "--root", str(tmp_path / "data"), "--encoder", "open_clip:tiny",
                  "--weights", f"local-dir:{clip}", "--out", str(tmp_path / "cc.h5"), "--workers", "0", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert info.value.code == 0, capsys.readouterr().err
    fs = read_features(tmp_path / "cc.h5")
    want = expected(path)
    np.testing.assert_array_equal(fs.group, want["group"])
    np.testing.assert_array_equal(fs.split, want["split"])
    assert list(fs.ids) == want["ids"]
    assert fs.group_names == ["non-toxic/no identity", "non-toxic/identity", "toxic/no identity", "toxic/identity"]
    assert fs.attrs["source"]["attribute"].startswith("a = any of male, female")
