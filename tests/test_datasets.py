"""The real-format adapters: every layout loads with the format's own definitions, every mistake is a UserError.

Expectations are read back from the fixture files here, independently of the loaders
(csv.DictReader, str.split, json), and computed with the formats' published rules
(group = 2*y + place, -1 -> 0, group_DRO's negation recipe ...).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from base.errors import UserError
from features.datasets import load_dataset
from features.datasets.multinli import has_negation
from tests.fixtures import formats as F


def rows_of(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def user_error(fragments: list[str], fn, *args, **kwargs) -> str:
    """Call fn, expect a one-line UserError containing every fragment; return the message."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def check_spec_basics(spec, n_groups: int) -> None:
    assert len(spec) == len(spec.ids) == len(spec.items)
    assert spec.y.dtype == np.int64 and spec.group.dtype == np.int64 and spec.split.dtype == np.int8
    assert len(spec.group_names) == n_groups
    # Every group appears in every split: the fixtures fill all cells, so the loaders must keep them.
    for s in (0, 1, 2):
        assert set(spec.group[spec.split == s].tolist()) == set(range(n_groups))
    json.dumps(spec.source)  # stored as a JSON attribute


# -- Waterbirds -------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["group_dro", "wilds"])
@pytest.mark.parametrize("nested", [False, True])
def test_waterbirds_layouts(tmp_path: Path, layout: str, nested: bool) -> None:
    built = F.waterbirds(tmp_path, layout=layout, nested=nested)
    spec = load_dataset("waterbirds", built.root)
    rows = rows_of(built.folder / "metadata.csv")
    y = np.array([int(r["y"]) for r in rows])
    place = np.array([int(r["place"]) for r in rows])
    assert spec.modality == "image"
    assert spec.ids == [r["img_filename"] for r in rows]
    assert spec.items == [str(built.folder.resolve() / r["img_filename"]) for r in rows]
    assert all(Path(p).is_file() for p in spec.items)
    np.testing.assert_array_equal(spec.y, y)
    np.testing.assert_array_equal(spec.a, place)
    np.testing.assert_array_equal(spec.group, 2 * y + place)
    np.testing.assert_array_equal(spec.split, [int(r["split"]) for r in rows])
    assert spec.class_names == ["landbird", "waterbird"]
    assert spec.group_names == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    # The group names describe the rows they name: a waterbird on land is group 2.
    for g, (cls, bg) in enumerate(n.split("/") for n in spec.group_names):
        sel = spec.group == g
        assert set(y[sel]) == {spec.class_names.index(cls)} and set(place[sel]) == {["land", "water"].index(bg)}
    assert str(built.folder.resolve() / "metadata.csv") in spec.source["files"]
    check_spec_basics(spec, 4)


def test_waterbirds_metadata_override_keeps_the_images(tmp_path: Path) -> None:
    built = F.waterbirds(tmp_path, nested=True)
    rows = rows_of(built.folder / "metadata.csv")
    for i, r in enumerate(rows):
        r["split"] = str(i % 3)
    other = tmp_path / "resplit.csv"
    with open(other, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    spec = load_dataset("waterbirds", built.root, metadata="resplit.csv")
    np.testing.assert_array_equal(spec.split, [i % 3 for i in range(len(rows))])
    assert spec.items[0] == str(built.folder.resolve() / rows[0]["img_filename"])
    assert spec.source["files"] == [str(other.resolve())]


def test_waterbirds_missing_image_is_not_checked_at_load(tmp_path: Path) -> None:
    built = F.waterbirds(tmp_path)
    first = rows_of(built.folder / "metadata.csv")[0]["img_filename"]
    (built.folder / first).unlink()
    spec = load_dataset("waterbirds", built.root)
    assert spec.items[0].endswith(first) and not Path(spec.items[0]).exists()


def _rewrite(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _set_field(lines: list[str], line_no: int, column: int, value: str) -> list[str]:
    fields = lines[line_no - 1].split(",")
    fields[column] = value
    lines[line_no - 1] = ",".join(fields)
    return lines


@pytest.mark.parametrize("edit, fragments", [
    (lambda ls: _set_field(ls, 4, 2, "water"), ["metadata.csv", "column 'y'", "data row 3 (line 4)", "'water'"]),
    (lambda ls: _set_field(ls, 2, 2, "2"), ["column 'y'", "data row 1 (line 2)", "one of 0, 1"]),
    (lambda ls: _set_field(ls, 6, 3, "3"), ["column 'split'", "data row 5 (line 6)", "unknown split '3'"]),
    (lambda ls: _set_field(ls, 3, 4, ""), ["column 'place'", "data row 2 (line 3)"]),
    (lambda ls: [ls[0].replace("place,", "background,")] + ls[1:],
     ["metadata.csv", "column 'place' not found", "columns are", "'background'"]),
    (lambda ls: ls[:5] + [ls[5] + ",extra"] + ls[6:], ["data row 5 (line 6)", "7 field(s)", "header has 6"]),
    (lambda ls: ls[:1], ["header but no rows"]),
    (lambda ls: [], ["empty"]),
    (lambda ls: ls[:3] + [ls[2]] + ls[3:], ["column 'img_filename'", "data row 3 (line 4)", "already appears in data row 2"]),
])
def test_waterbirds_bad_metadata(tmp_path: Path, edit, fragments: list[str]) -> None:
    built = F.waterbirds(tmp_path)
    _rewrite(built.folder / "metadata.csv", edit)
    user_error(fragments, load_dataset, "waterbirds", built.root)


def test_waterbirds_root_errors(tmp_path: Path) -> None:
    user_error(["`root` is required", "metadata.csv"], load_dataset, "waterbirds", None)
    user_error(["`root`", "no such folder"], load_dataset, "waterbirds", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    user_error(["no metadata.csv", "waterbird_complete95_forest2water2"], load_dataset, "waterbirds",
               tmp_path / "empty")
    built = F.waterbirds(tmp_path / "x")
    user_error(["`metadata`", "no such file"], load_dataset, "waterbirds", built.root, metadata="other.csv")
    (built.folder / "metadata.csv").write_bytes(b"img_id,img_filename\n\xff\xfe\x00garbage\n")
    user_error(["metadata.csv"], load_dataset, "waterbirds", built.root)


@pytest.mark.parametrize("dataset, option", [
    ("waterbirds", "target"), ("waterbirds", "image_col"), ("celeba", "label_col"), ("celeba", "text_source"),
    ("multinli", "spurious"), ("table", "text_source"), ("table", "target"),
])
def test_options_that_do_not_apply_are_refused(tmp_path: Path, dataset: str, option: str) -> None:
    user_error([f"`{option}`", f"does not apply to dataset {dataset!r}"], load_dataset, dataset, tmp_path, **{option: "x"})


# -- CelebA -----------------------------------------------------------------------


def celeba_truth(built: F.Built, fmt: str) -> tuple[list[str], dict[str, np.ndarray], dict[str, int]]:
    """ids, {attribute: -1/1 values}, {id: partition}, parsed straight from the files."""
    if fmt == "csv":
        rows = rows_of(built.files["attributes"])
        ids = [r["image_id"] for r in rows]
        attrs = {k: np.array([int(r[k]) for r in rows]) for k in F.CELEBA_ATTRIBUTES}
        part = {r["image_id"]: int(r["partition"]) for r in rows_of(built.files["partition"])}
    else:
        lines = built.files["attributes"].read_text().splitlines()
        assert int(lines[0]) == len(lines) - 2
        names = lines[1].split()
        data = [ln.split() for ln in lines[2:]]
        ids = [d[0] for d in data]
        attrs = {k: np.array([int(d[1 + names.index(k)]) for d in data]) for k in names}
        part = {a: int(b) for a, b in (ln.split() for ln in built.files["partition"].read_text().splitlines())}
    return ids, attrs, part


@pytest.mark.parametrize("fmt", ["csv", "txt"])
@pytest.mark.parametrize("nested_images", [False, True])
@pytest.mark.parametrize("wilds", [False, True])
def test_celeba_formats(tmp_path: Path, fmt: str, nested_images: bool, wilds: bool) -> None:
    built = F.celeba(tmp_path, fmt=fmt, nested_images=nested_images, wilds=wilds)
    spec = load_dataset("celeba", built.root)
    ids, attrs, part = celeba_truth(built, fmt)
    y, a = (attrs["Blond_Hair"] == 1).astype(int), (attrs["Male"] == 1).astype(int)
    assert set(attrs["Blond_Hair"]) == {-1, 1}  # the fixture uses the real -1/1 coding
    assert spec.ids == ids
    assert spec.items == [str(built.files["images"].resolve() / i) for i in ids]
    assert all(Path(p).is_file() for p in spec.items)
    np.testing.assert_array_equal(spec.y, y)
    np.testing.assert_array_equal(spec.a, a)
    np.testing.assert_array_equal(spec.group, 2 * y + a)
    np.testing.assert_array_equal(spec.split, [part[i] for i in ids])
    assert spec.class_names == ["not Blond_Hair", "Blond_Hair"]
    assert spec.group_names == ["not Blond_Hair/not Male", "not Blond_Hair/Male", "Blond_Hair/not Male",
                                "Blond_Hair/Male"]
    assert spec.source["target"] == "Blond_Hair" and spec.source["spurious"] == "Male"
    assert spec.source["format"] == ("Kaggle CSV" if fmt == "csv" else "official TXT")
    check_spec_basics(spec, 4)


@pytest.mark.parametrize("fmt", ["csv", "txt"])
def test_celeba_any_attribute_pair(tmp_path: Path, fmt: str) -> None:
    built = F.celeba(tmp_path, fmt=fmt)
    spec = load_dataset("celeba", built.root, target="Smiling", spurious="Eyeglasses")
    _, attrs, _ = celeba_truth(built, fmt)
    y, a = (attrs["Smiling"] > 0).astype(int), (attrs["Eyeglasses"] > 0).astype(int)
    np.testing.assert_array_equal(spec.group, 2 * y + a)
    assert spec.class_names == ["not Smiling", "Smiling"]
    assert spec.group_names[1] == "not Smiling/Eyeglasses"


@pytest.mark.parametrize("fmt", ["csv", "txt"])
def test_celeba_attribute_errors(tmp_path: Path, fmt: str) -> None:
    built = F.celeba(tmp_path, fmt=fmt)
    user_error(["`target` 'Blonde_Hair'", "no such attribute", "attributes are: Blond_Hair,", "more)"],
               load_dataset, "celeba", built.root, target="Blonde_Hair")  # closest names first
    user_error(["`spurious` 'Female'"], load_dataset, "celeba", built.root, spurious="Female")
    user_error(["`target` and `spurious` are both 'Male'"], load_dataset, "celeba", built.root, target="Male")


@pytest.mark.parametrize("fmt", ["csv", "txt"])
def test_celeba_partition_must_match(tmp_path: Path, fmt: str) -> None:
    built = F.celeba(tmp_path, fmt=fmt)
    part = built.files["partition"]
    original = part.read_text()
    lines = original.splitlines()
    drop = 5 if fmt == "csv" else 4  # the same image (000005.jpg): the CSV has a header line
    missing_id = lines[drop].split(",")[0].split()[0]
    part.write_text("\n".join(lines[:drop] + lines[drop + 1:]) + "\n")
    user_error([f"image {missing_id!r} is not in {part.name}", "data row 5"], load_dataset, "celeba", built.root)
    sep = "," if fmt == "csv" else " "
    part.write_text(original + f"999999.jpg{sep}0\n")
    user_error(["image '999999.jpg' is not in list_attr_celeba", part.name], load_dataset, "celeba", built.root)
    part.write_text(re.sub(rf"000003\.jpg{sep}\d", f"000003.jpg{sep}9", original))
    user_error([part.name, "unknown split", "data row 3"], load_dataset, "celeba", built.root)


def test_celeba_txt_damage(tmp_path: Path) -> None:
    built = F.celeba(tmp_path, fmt="txt")
    attrs = built.files["attributes"]
    lines = attrs.read_text().splitlines()
    attrs.write_text("\n".join(["30", *lines[1:]]) + "\n")
    user_error(["line 1 says 30 images", "lists 24"], load_dataset, "celeba", built.root)
    attrs.write_text("\n".join(lines[:5] + [lines[5].rsplit(" ", 1)[0]] + lines[6:]) + "\n")
    user_error(["data row 4 (line 6)", "40 attribute values"], load_dataset, "celeba", built.root)
    blond = F.CELEBA_ATTRIBUTES.index("Blond_Hair")
    bad = lines[4].split()
    bad[1 + blond] = "2"
    attrs.write_text("\n".join(lines[:4] + [" ".join(bad)] + lines[5:]) + "\n")
    user_error(["column 'Blond_Hair'", "data row 3 (line 5)", "'2'", "-1, 0, 1"], load_dataset, "celeba", built.root)


def test_celeba_layout_errors(tmp_path: Path) -> None:
    built = F.celeba(tmp_path / "a")
    shutil.rmtree(built.files["images"])
    user_error(["no img_align_celeba/"], load_dataset, "celeba", built.root)
    built = F.celeba(tmp_path / "b")
    built.files["partition"].unlink()
    user_error(["no list_eval_partition"], load_dataset, "celeba", built.root)
    (tmp_path / "c").mkdir()
    user_error(["no list_attr_celeba.csv"], load_dataset, "celeba", tmp_path / "c")


def test_celeba_metadata_override(tmp_path: Path) -> None:
    built = F.celeba(tmp_path, fmt="csv")
    rows = rows_of(built.files["attributes"])
    for r in rows:
        r["Blond_Hair"] = "1" if r["Blond_Hair"] == "-1" else "-1"
    other = tmp_path / "flipped.csv"
    with open(other, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    spec = load_dataset("celeba", built.root, metadata=str(other))
    np.testing.assert_array_equal(spec.y, [int(r["Blond_Hair"] == "1") for r in rows])
    assert str(other.resolve()) in spec.source["files"]


# -- MultiNLI ---------------------------------------------------------------------


@pytest.mark.parametrize("sentence, flag", [
    ("Nobody went.", 1), ("No.", 1), ("They had no  money.", 1), ("NOTHING at all", 1), ("He never, ever did", 1),
    ("Nobody's home.", 0), ("A never-ending story.", 0), ("She did not go.", 0), ("Snow fell.", 0),
    ("no\tway", 0),  # split on single spaces, as group_DRO does
])
def test_negation_recipe(sentence: str, flag: int) -> None:
    words = sentence.translate(str.maketrans("", "", string.punctuation)).lower().split(" ")
    assert flag == int(any(w in words for w in ("nobody", "no", "never", "nothing")))  # the fixture's claim
    assert has_negation(sentence) == flag


def mnli_text(built: F.Built, text: str) -> list[tuple[str, str, str]]:
    """(sentence1, sentence2, gold_label) of train + dev_matched + dev_mismatched, '-' rows dropped."""
    out = []
    for part in ("train", "dev_matched", "dev_mismatched"):
        path = built.files[part]
        if text == "jsonl":
            recs = [json.loads(line) for line in path.read_text().splitlines()]
        else:
            lines = path.read_text().splitlines()
            header = lines[0].split("\t")
            recs = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
        out += [(r["sentence1"], r["sentence2"], r["gold_label"]) for r in recs if r["gold_label"] != "-"]
    return out


@pytest.mark.parametrize("text", ["jsonl", "glue"])
@pytest.mark.parametrize("bool_words", [False, True])
def test_multinli(tmp_path: Path, text: str, bool_words: bool) -> None:
    built = F.multinli(tmp_path, text=text, bool_words=bool_words)
    spec = load_dataset("multinli", built.root)
    with open(built.files["metadata"], newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        meta = list(reader)
    assert header[0] == ""  # the unnamed index column of a pandas to_csv
    y = np.array([int(r[1]) for r in meta])
    neg = np.array([int(r[2] in ("1", "True")) for r in meta])
    truth = mnli_text(built, text)
    assert len(truth) == len(meta)
    assert spec.modality == "text"
    assert spec.items == [(s1, s2) for s1, s2, _ in truth]
    assert spec.ids == [r[0] for r in meta]
    np.testing.assert_array_equal(spec.y, y)
    np.testing.assert_array_equal(spec.y, [["contradiction", "entailment", "neutral"].index(g) for *_, g in truth])
    np.testing.assert_array_equal(spec.a, neg)
    np.testing.assert_array_equal(spec.group, 2 * y + neg)
    np.testing.assert_array_equal(spec.split, [int(r[3]) for r in meta])
    assert spec.class_names == ["contradiction", "entailment", "neutral"]
    assert spec.group_names[:2] == ["contradiction/no negation", "contradiction/negation"]
    assert spec.source["text_source"] == text and spec.source["dropped_dash_rows"] == 6
    assert any('"' in s1 for s1, _ in spec.items)  # GLUE's unquoted TSV fields kept intact
    check_spec_basics(spec, 6)


@pytest.mark.parametrize("text", ["jsonl", "glue"])
@pytest.mark.parametrize("variant, fragments", [
    ("hf_order", ["36 of 36 rows disagree", "gold_label", "data row 1 (line 2)", "Hugging Face"]),
    ("negation_flip", ["1 of 36 rows disagree", "sentence2_has_negation", "data row 6 (line 7)", "index 5"]),
    ("missing_row", ["35 rows", "has 36", "'-' rows"]),
    ("shifted", ["rows disagree", "gold_label", "not aligned"]),
])
def test_multinli_misalignment_is_refused(tmp_path: Path, text: str, variant: str, fragments: list[str]) -> None:
    built = F.multinli(tmp_path, text=text, variant=variant)
    user_error(["metadata_random.csv", *fragments], load_dataset, "multinli", built.root)


def test_multinli_text_sources(tmp_path: Path) -> None:
    jsonl = F.multinli(tmp_path / "j", text="jsonl")
    glue = F.multinli(tmp_path / "g", text="glue")
    assert load_dataset("multinli", jsonl.root, text_source="jsonl").source["text_source"] == "jsonl"
    user_error(["`root`", "glue", "train.tsv"], load_dataset, "multinli", jsonl.root, text_source="glue")
    user_error(["`text_source` 'both'"], load_dataset, "multinli", jsonl.root, text_source="both")
    # Both present: auto prefers the raw release; the choice is recorded.
    for part in ("train", "dev_matched", "dev_mismatched"):
        shutil.copy(glue.files[part], jsonl.root / glue.files[part].name)
    assert load_dataset("multinli", jsonl.root).source["text_source"] == "jsonl"
    assert load_dataset("multinli", jsonl.root, text_source="glue").source["text_source"] == "glue"
    glue.files["dev_mismatched"].unlink()
    user_error(["lacks dev_mismatched.tsv"], load_dataset, "multinli", glue.root)


def test_multinli_damaged_files(tmp_path: Path) -> None:
    built = F.multinli(tmp_path, text="jsonl")
    path = built.files["dev_matched"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ['{"sentence1": "x",'] + lines[2:]) + "\n")
    user_error([path.name, "line 3", "not valid JSON"], load_dataset, "multinli", built.root)
    path.write_text("\n".join(lines[:2] + [json.dumps({"sentence1": "a", "sentence2": "b", "gold_label": "yes"})]
                              + lines[2:]) + "\n")
    user_error([path.name, "line 3", "'yes'"], load_dataset, "multinli", built.root)
    meta = built.files["metadata"]
    _rewrite(meta, lambda ls: _set_field(ls, 3, 3, "4"))
    user_error(["metadata_random.csv", "column 'split'", "data row 2 (line 3)"], load_dataset, "multinli",
               built.root)
    _rewrite(meta, lambda ls: _set_field(ls, 3, 2, "maybe"))
    user_error(["column 'sentence2_has_negation'", "'maybe'"], load_dataset, "multinli", built.root)
    (tmp_path / "empty").mkdir()
    user_error(["no metadata_random.csv"], load_dataset, "multinli", tmp_path / "empty")


# -- Generic tables ---------------------------------------------------------------


def test_image_table_with_attribute(tmp_path: Path) -> None:
    built = F.image_table(tmp_path)
    spec = load_dataset("table", built.root, metadata="meta.csv", image_col="path", label_col="label",
                        attr_col="background")
    rows = rows_of(built.files["metadata"])
    classes, attrs = sorted({r["label"] for r in rows}), sorted({r["background"] for r in rows})
    y = np.array([classes.index(r["label"]) for r in rows])
    a = np.array([attrs.index(r["background"]) for r in rows])
    split = [{"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}[r["split"].lower()] for r in rows]
    assert spec.modality == "image" and spec.class_names == ["cat", "dog"]
    assert spec.group_names == ["cat/indoor", "cat/outdoor", "dog/indoor", "dog/outdoor"]
    assert spec.ids == [r["path"] for r in rows]
    assert spec.items == [str(built.root.resolve() / r["path"]) for r in rows]
    assert all(Path(p).is_file() for p in spec.items)
    np.testing.assert_array_equal(spec.y, y)
    np.testing.assert_array_equal(spec.a, a)
    np.testing.assert_array_equal(spec.group, y * len(attrs) + a)
    np.testing.assert_array_equal(spec.split, split)
    assert spec.source["class_values"] == classes
    check_spec_basics(spec, 4)


def test_image_table_with_group_column_only(tmp_path: Path) -> None:
    built = F.image_table(tmp_path)
    spec = load_dataset("table", built.root, metadata=str(built.files["metadata"]), image_col="path",
                        label_col="label", group_col="grp")
    rows = rows_of(built.files["metadata"])
    groups = sorted({r["grp"] for r in rows})
    np.testing.assert_array_equal(spec.group, [groups.index(r["grp"]) for r in rows])
    assert (spec.a == -1).all()
    assert spec.group_names == groups


def test_table_without_root_uses_the_table_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    F.image_table(tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = load_dataset("table", None, metadata="mydata/meta.csv", image_col="path", label_col="label",
                        attr_col="background")
    assert all(Path(p).is_file() for p in spec.items)


def test_text_table(tmp_path: Path) -> None:
    built = F.text_table(tmp_path)
    rows = rows_of(built.files["metadata"])
    # Defaults: label column y, attribute a, split split.
    spec = load_dataset("table", built.root, metadata="texts.csv", text_col="text")
    assert spec.modality == "text"
    assert spec.items == [r["text"] for r in rows]
    assert any("\n" in t for t in spec.items)  # a quoted field spanning two lines
    assert spec.class_names == ["0", "2", "10"]  # integers sort numerically
    y = np.array([[0, 2, 10].index(int(r["y"])) for r in rows])
    a = np.array([int(r["a"]) for r in rows])
    np.testing.assert_array_equal(spec.y, y)
    np.testing.assert_array_equal(spec.group, 2 * y + a)
    np.testing.assert_array_equal(spec.split, [int(r["split"]) for r in rows])
    assert spec.group_names[:2] == ["y=0/a=0", "y=0/a=1"]
    check_spec_basics(spec, 6)
    pairs = load_dataset("table", built.root, metadata="texts.csv", text_col="premise, hypothesis",
                         group_col="group")
    assert pairs.items == [(r["premise"], r["hypothesis"]) for r in rows]
    np.testing.assert_array_equal(pairs.group, [int(r["group"]) for r in rows])
    assert (pairs.a == -1).all()


def test_table_errors(tmp_path: Path) -> None:
    built = F.image_table(tmp_path)
    root, meta = built.root, built.files["metadata"]
    kw = {"metadata": "meta.csv", "image_col": "path", "label_col": "label", "attr_col": "background"}
    user_error(["needs `metadata`"], load_dataset, "table", root, image_col="path")
    user_error(["exactly one of `image_col`", "`text_col`"], load_dataset, "table", root,
               **{**kw, "text_col": "label"})
    user_error(["exactly one of `image_col`"], load_dataset, "table", root, metadata="meta.csv", label_col="label",
               attr_col="background")
    user_error(["meta.csv", "`label_col` 'lbl' not found", "'path', 'label', 'background', 'split', 'grp'"],
               load_dataset, "table", root, **{**kw, "label_col": "lbl"})
    user_error(["`label_col` (default) 'y' not found"], load_dataset, "table", root,
               metadata="meta.csv", image_col="path", attr_col="background")
    user_error(["give `attr_col`", "or `group_col`"], load_dataset, "table", root, metadata="meta.csv",
               image_col="path", label_col="label")
    user_error(["`text_col` 'a,b,c'"], load_dataset, "table", root, metadata="meta.csv", text_col="a,b,c",
               label_col="label", attr_col="background")
    user_error(["`metadata`", "no such file"], load_dataset, "table", root, **{**kw, "metadata": "nope.csv"})
    (root / "t.parquet").write_bytes(b"PAR1")
    user_error(["save the table as CSV"], load_dataset, "table", root, **{**kw, "metadata": "t.parquet"})
    _rewrite(meta, lambda ls: _set_field(ls, 8, 3, "holdout"))
    user_error(["meta.csv", "column 'split'", "data row 7 (line 8)", "'holdout'", "train/val"],
               load_dataset, "table", root, **kw)
    _rewrite(meta, lambda ls: _set_field(ls, 8, 3, "test"))
    _rewrite(meta, lambda ls: _set_field(ls, 5, 1, ""))
    user_error(["column 'label'", "data row 4 (line 5)", "empty value"], load_dataset, "table", root, **kw)
    _rewrite(meta, lambda ls: ls[:1])
    user_error(["header but no rows"], load_dataset, "table", root, **kw)
    meta.write_text("")
    user_error(["empty"], load_dataset, "table", root, **kw)


def test_cli_reports_adapter_errors_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    built = F.waterbirds(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["extract", "waterbirds", "--root", str(built.root), "--target", "Blond_Hair",
              "--encoder", "efficientnet-lite0", "--out", str(tmp_path / "w.h5")])
    assert info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--target does not apply to dataset 'waterbirds'" in err[0]
    assert not (tmp_path / "w.h5").exists()


def test_a_new_dataset_is_one_registered_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from features.datasets import datasets, registry

    assert list(datasets()) == ["demo", "waterbirds", "celeba", "multinli", "civilcomments", "table", "hf"]
    assert registry.option_help("metadata") == ("table: the CSV or TSV table; other datasets: a metadata file "
                                                "name overriding the standard one.")
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    calls = []

    @registry.register("toy", modalities=("text",), options=(registry.METADATA_OPTION,
                                                            registry.DatasetOption("size", "rows to make")))
    def load(root: Path | None, **options: Any) -> Any:
        calls.append((root, options))
        return "spec"

    assert load_dataset("toy", None, size="3") == "spec" and calls == [(None, {"size": "3"})]
    user_error(["`target` does not apply to dataset 'toy'; it takes `root` and `metadata`, `size`"],
               load_dataset, "toy", None, target="x")
    assert registry.option_help("size") == "toy: rows to make."
    assert registry.option_help("metadata").endswith("other datasets: a metadata file name overriding the "
                                                     "standard one.")
    user_error(["unknown dataset 'nope'", "table, hf, toy"], load_dataset, "nope")
