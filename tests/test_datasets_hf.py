"""Dataset `hf`: Hugging Face datasets on disk (save_to_disk folders, parquet and arrow files).

The same rows as a `table` layout, written as a parquet folder split by file names (the
Hub's layout) and as a save_to_disk DatasetDict, must give the same labels, groups,
splits and (images stored as bytes) the same features. The Hub copies of Waterbirds and
CelebA are recognised from their columns.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from base.errors import UserError
from features.datasets import load_dataset
from features.extract import extract
from features.store import read_features
from tests.fixtures import formats as F
from tests.test_extract import tiny_encoder

SPLIT_NAMES = {0: "train", 1: "validation", 2: "test"}
TABLE_OPTIONS = {"metadata": "meta.csv", "image_col": "path", "label_col": "label", "attr_col": "background",
                 "split_col": "split"}
HF_OPTIONS = {"image_col": "image", "label_col": "label", "attr_col": "background"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets converts parquet files into its cache: keep that out of the user's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def jpeg_bytes(seed: int) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def as_hub_copy(built: F.Built) -> tuple[dict, np.ndarray]:
    """The image table's rows as a DatasetDict (images as their files' bytes), split by name;
    and the order of the table's rows in it."""
    from datasets import Dataset, DatasetDict, Image

    with open(built.files["metadata"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    code = {w.lower(): c for c, words in F.SPLIT_WORDS.items() for w in words}
    splits = np.array([code[r["split"].lower()] for r in rows])
    order = np.argsort(splits, kind="stable")
    parts = {}
    for c, name in SPLIT_NAMES.items():
        sel = [r for r, s in zip(rows, splits, strict=True) if s == c]
        parts[name] = Dataset.from_dict({
            "image": [{"bytes": (built.root / r["path"]).read_bytes(), "path": r["path"]} for r in sel],
            "label": [r["label"] for r in sel], "background": [r["background"] for r in sel],
        }).cast_column("image", Image())
    return DatasetDict(parts), order


@pytest.fixture
def three_layouts(tmp_path: Path) -> dict:
    built = F.image_table(tmp_path, per_cell=1)
    hub, order = as_hub_copy(built)
    (tmp_path / "pq" / "data").mkdir(parents=True)
    for name, part in hub.items():
        part.to_parquet(tmp_path / "pq" / "data" / f"{name}-00000-of-00001.parquet")
    hub.save_to_disk(str(tmp_path / "saved"))
    return {"table": built.root, "parquet": tmp_path / "pq", "saved": tmp_path / "saved", "order": order}


@pytest.mark.parametrize("layout", ["parquet", "saved"])
def test_hub_layouts_give_the_table_rows(three_layouts: dict, layout: str) -> None:
    table = load_dataset("table", three_layouts["table"], **TABLE_OPTIONS)
    spec = load_dataset("hf", three_layouts[layout], **HF_OPTIONS)
    order = three_layouts["order"]
    assert spec.modality == "image" and len(spec) == len(table)
    for key in ("y", "a", "group", "split"):
        np.testing.assert_array_equal(getattr(spec, key), getattr(table, key)[order], err_msg=key)
    assert spec.class_names == table.class_names == ["cat", "dog"]
    assert spec.group_names == table.group_names
    assert spec.ids[0] == "train/0" and spec.source["splits"] == ["train", "validation", "test"]
    assert spec.items[0]["bytes"] == Path(table.items[order[0]]).read_bytes()


def test_images_stored_as_bytes_extract_to_the_same_features(tmp_path: Path, three_layouts: dict) -> None:
    enc = tiny_encoder(tmp_path)
    table = load_dataset("table", three_layouts["table"], **TABLE_OPTIONS)
    # One row per batch: the rows come in another order, and a batch's other rows may move the last bit.
    extract(table, enc, tmp_path / "table.h5", batch_size=1, workers=0)
    want = read_features(tmp_path / "table.h5")
    order = three_layouts["order"]
    for layout, workers in (("parquet", 0), ("saved", 2)):  # worker processes get the dataset pickled
        spec = load_dataset("hf", three_layouts[layout], **HF_OPTIONS)
        extract(spec, enc, tmp_path / f"{layout}.h5", batch_size=1, workers=workers)
        got = read_features(tmp_path / f"{layout}.h5")
        np.testing.assert_array_equal(got.features, want.features[order])
        np.testing.assert_array_equal(got.group, want.group[order])
        assert got.attrs["dataset"] == "hf" and got.attrs["source"]["format"].startswith("Hugging Face")


def test_one_file_split_by_a_column_with_class_labels_and_text(tmp_path: Path) -> None:
    from datasets import ClassLabel, Dataset

    ds = Dataset.from_dict({"text": [f"comment {i}" for i in range(12)], "label": [i % 2 for i in range(12)],
                            "a": [(i // 2) % 2 for i in range(12)], "split": ["train", "val", "test"] * 4})
    ds = ds.cast_column("label", ClassLabel(names=["ham", "spam"]))
    ds.to_parquet(tmp_path / "one.parquet")
    spec = load_dataset("hf", tmp_path / "one.parquet", text_col="text")
    assert spec.modality == "text" and spec.items[:2] == ["comment 0", "comment 1"]
    assert spec.class_names == ["ham", "spam"]  # the ClassLabel's names, in its order
    np.testing.assert_array_equal(spec.y, [i % 2 for i in range(12)])
    np.testing.assert_array_equal(spec.split, [0, 1, 2] * 4)
    assert spec.group_names == ["ham/a=0", "ham/a=1", "spam/a=0", "spam/a=1"]
    assert spec.ids[:2] == ["row 1", "row 2"]
    ds.remove_columns("split").to_parquet(tmp_path / "nosplit.parquet")
    with pytest.raises(UserError, match="`split_col` \\(default\\) 'split' not found"):
        load_dataset("hf", tmp_path / "nosplit.parquet", text_col="text")


def test_a_missing_named_column_is_named(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_dict({"text": ["x"] * 3, "y": [0, 1, 0], "a": [1, 1, 0], "split": [0, 1, 2]}).to_parquet(
        tmp_path / "t.parquet")
    with pytest.raises(UserError, match="`label_col` 'label' not found in the Hugging Face dataset; its "
                                        "columns are: 'text', 'y', 'a', 'split'"):
        load_dataset("hf", tmp_path / "t.parquet", text_col="text", label_col="label")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no save_to_disk folder"):
        load_dataset("hf", tmp_path / "empty")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="cannot be read as a Hugging Face dataset"):
        load_dataset("hf", tmp_path / "broken.parquet", text_col="text")


def _save(tmp_path: Path, name: str, columns: dict, splits: dict[str, int]) -> Path:
    from datasets import Dataset, DatasetDict, Image

    parts = {}
    for split, n in splits.items():
        cols = {k: (v * n)[:n] for k, v in columns.items()}
        cols["image"] = [{"bytes": jpeg_bytes(i), "path": None} for i in range(n)]
        parts[split] = Dataset.from_dict(cols).cast_column("image", Image())
    DatasetDict(parts).save_to_disk(str(tmp_path / name))
    return tmp_path / name


def test_waterbirds_hub_copy_needs_no_flags(tmp_path: Path) -> None:
    # grodino/waterbirds: image, label (1 waterbird), place (1 water); train/validation/test.
    root = _save(tmp_path, "wb", {"label": [0, 0, 1, 1], "place": [0, 1, 0, 1]},
                 {"train": 4, "validation": 4, "test": 4})
    spec = load_dataset("hf", root)
    assert spec.class_names == ["landbird", "waterbird"]
    assert spec.group_names == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    np.testing.assert_array_equal(spec.group, [0, 1, 2, 3] * 3)
    np.testing.assert_array_equal(spec.split, [0] * 4 + [1] * 4 + [2] * 4)
    assert spec.source["layout"].startswith("Waterbirds")


@pytest.mark.parametrize(("values", "splits"), [
    ((-1, 1), ("train", "validation", "test")),  # tpremoli/CelebA-attrs
    ((False, True), ("train", "valid", "test")),  # flwrlabs/celeba
])
def test_celeba_hub_copies_need_no_flags(tmp_path: Path, values: tuple, splits: tuple) -> None:
    no, yes = values
    columns = {"Blond_Hair": [no, yes, no, yes], "Male": [no, no, yes, yes], "Smiling": [yes, yes, no, no]}
    root = _save(tmp_path, "celeba", columns, dict.fromkeys(splits, 4))
    spec = load_dataset("hf", root)
    assert spec.class_names == ["not Blond_Hair", "Blond_Hair"]
    assert spec.group_names == ["not Blond_Hair/not Male", "not Blond_Hair/Male", "Blond_Hair/not Male",
                                "Blond_Hair/Male"]
    np.testing.assert_array_equal(spec.group, [0, 2, 1, 3] * 3)
    np.testing.assert_array_equal(spec.split, [0] * 4 + [1] * 4 + [2] * 4)
    other = load_dataset("hf", root, label_col="Smiling")
    assert other.class_names == ["not Smiling", "Smiling"]
    np.testing.assert_array_equal(other.y, [1, 1, 0, 0] * 3)
