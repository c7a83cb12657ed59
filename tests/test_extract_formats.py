"""`probe extract` end to end on each real-format fixture, with real encoders.

MiniLM for MultiNLI and the text table, EfficientNet-Lite0 for Waterbirds and the image
table, an open_clip architecture loaded from a local weights file for CelebA. The
feature file must carry the rows' labels, attributes, groups, splits and ids exactly as
the formats define them (read back from the fixture files here), and finite features
of the encoder's width.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from features.store import read_features
from tests.fixtures import formats as F

pytestmark = pytest.mark.slow

CLIP_ARCH = "ViT-S-32-alt"  # open_clip's smallest bundled ViT config


def probe(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run `probe ARGS` in this process (as the console script does) and require success."""
    from cli.main import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert info.value.code == 0, err


def extract(dataset: str, root: Path, encoder: str, out: Path, capsys: pytest.CaptureFixture[str],
            *extra: str | Path):
    probe("extract", dataset, "--root", root, "--encoder", encoder, "--out", out, "--batch-size", "8",
          "--workers", "0", "--quiet", *extra, capsys=capsys)
    fs = read_features(out)
    assert np.isfinite(fs.features).all()
    assert fs.attrs["dataset"] == dataset and fs.attrs["complete"]
    assert fs.features.std(axis=0).max() > 0  # rows differ: the images/texts were really read
    return fs


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_waterbirds_efficientnet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = F.waterbirds(tmp_path, layout="wilds", nested=True, per_cell=1)
    fs = extract("waterbirds", built.root, "efficientnet-lite0", tmp_path / "wb.h5", capsys)
    rows = rows_of(built.files["metadata"])
    y, place = (np.array([int(r[k]) for r in rows]) for k in ("y", "place"))
    assert fs.features.shape == (len(rows), 1280)
    assert list(fs.ids) == [r["img_filename"] for r in rows]
    np.testing.assert_array_equal(fs.y, y)
    np.testing.assert_array_equal(fs.a, place)
    np.testing.assert_array_equal(fs.group, 2 * y + place)
    np.testing.assert_array_equal(fs.split, [int(r["split"]) for r in rows])
    assert fs.group_names == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    assert fs.attrs["source"]["dataset_folder"].endswith("waterbirds_v1.0")


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundled open_clip architecture's state_dict saved to a file, as a downloaded checkpoint is."""
    import open_clip
    import torch

    path = tmp_path_factory.mktemp("clip") / f"{CLIP_ARCH}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(CLIP_ARCH, pretrained=None)
    torch.save(model.state_dict(), path)
    return path


def test_celeba_open_clip(tmp_path: Path, clip_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import open_clip

    built = F.celeba(tmp_path, fmt="txt", nested_images=True, per_cell=1)
    fs = extract("celeba", built.root, f"open_clip:{CLIP_ARCH}", tmp_path / "celeba.h5", capsys,
                 "--weights", clip_weights, "--target", "Blond_Hair", "--spurious", "Male")
    lines = built.files["attributes"].read_text().splitlines()
    names = lines[1].split()
    data = [ln.split() for ln in lines[2:]]
    y = np.array([int(d[1 + names.index("Blond_Hair")] == "1") for d in data])
    a = np.array([int(d[1 + names.index("Male")] == "1") for d in data])
    part = dict(ln.split() for ln in built.files["partition"].read_text().splitlines())
    assert fs.features.shape == (len(data), open_clip.get_model_config(CLIP_ARCH)["embed_dim"])
    assert list(fs.ids) == [d[0] for d in data]
    np.testing.assert_array_equal(fs.y, y)
    np.testing.assert_array_equal(fs.a, a)
    np.testing.assert_array_equal(fs.group, 2 * y + a)
    np.testing.assert_array_equal(fs.split, [int(part[d[0]]) for d in data])
    assert fs.class_names == ["not Blond_Hair", "Blond_Hair"]
    assert fs.attrs["encoder"] == f"open_clip:{CLIP_ARCH}" and "sha256" in fs.attrs["weights"]
    assert fs.attrs["source"]["format"] == "official TXT"


def test_multinli_minilm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = F.multinli(tmp_path, text="jsonl", per_cell=1)
    fs = extract("multinli", built.root, "minilm", tmp_path / "mnli.h5", capsys)
    with open(built.files["metadata"], newline="") as fh:
        meta = list(csv.reader(fh))[1:]
    y, neg = np.array([int(r[1]) for r in meta]), np.array([int(r[2]) for r in meta])
    assert fs.features.shape == (len(meta), 384)
    assert list(fs.ids) == [r[0] for r in meta]
    np.testing.assert_array_equal(fs.y, y)
    np.testing.assert_array_equal(fs.a, neg)
    np.testing.assert_array_equal(fs.group, 2 * y + neg)
    np.testing.assert_array_equal(fs.split, [int(r[3]) for r in meta])
    assert len(fs.group_names) == 6 and fs.class_names == ["contradiction", "entailment", "neutral"]
    # The pairs were encoded in metadata order: rows with the same (premise, hypothesis) agree.
    texts = []
    for part in ("train", "dev_matched", "dev_mismatched"):
        recs = [json.loads(x) for x in built.files[part].read_text().splitlines()]
        texts += [(r["sentence1"], r["sentence2"]) for r in recs if r["gold_label"] != "-"]
    first = {}
    for i, t in enumerate(texts):
        if t in first:
            np.testing.assert_allclose(fs.features[i], fs.features[first[t]], atol=1e-5)
        first.setdefault(t, i)
    assert len(first) > 1 and not np.allclose(fs.features[0], fs.features[1])


def test_text_table_minilm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = F.text_table(tmp_path, per_cell=1)
    fs = extract("table", built.root, "minilm", tmp_path / "texts.h5", capsys,
                 "--metadata", "texts.csv", "--text-col", "text", "--label-col", "y", "--attr-col", "a",
                 "--split-col", "split")
    rows = rows_of(built.files["metadata"])
    y = np.array([[0, 2, 10].index(int(r["y"])) for r in rows])
    a = np.array([int(r["a"]) for r in rows])
    assert fs.features.shape == (len(rows), 384)
    np.testing.assert_array_equal(fs.y, y)
    np.testing.assert_array_equal(fs.a, a)
    np.testing.assert_array_equal(fs.group, 2 * y + a)
    np.testing.assert_array_equal(fs.split, [int(r["split"]) for r in rows])
    assert fs.class_names == ["0", "2", "10"]
    assert list(fs.ids) == [f"row {i + 1}" for i in range(len(rows))]


def test_image_table_efficientnet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = F.image_table(tmp_path, per_cell=1)
    fs = extract("table", built.root, "efficientnet-lite0", tmp_path / "imgs.h5", capsys,
                 "--metadata", "meta.csv", "--image-col", "path", "--label-col", "label", "--group-col", "grp")
    rows = rows_of(built.files["metadata"])
    groups = sorted({r["grp"] for r in rows})
    assert fs.features.shape == (len(rows), 1280)
    assert list(fs.ids) == [r["path"] for r in rows]
    np.testing.assert_array_equal(fs.y, [["cat", "dog"].index(r["label"]) for r in rows])
    np.testing.assert_array_equal(fs.group, [groups.index(r["grp"]) for r in rows])
    assert (fs.a == -1).all()
    assert fs.group_names == groups
