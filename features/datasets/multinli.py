"""MultiNLI with group_DRO's groups (label x negation), aligned to the raw text and checked.

``metadata_random.csv`` (group_DRO): an unnamed index column, then ``gold_label``
(0 contradiction, 1 entailment, 2 neutral), ``sentence2_has_negation`` and ``split``
(0/1/2). Its rows are the concatenation train + dev_matched + dev_mismatched of the
MNLI text with the ``gold_label == '-'`` rows dropped. The text comes from the raw
release (``multinli_1.0_{train,dev_matched,dev_mismatched}.jsonl``) or GLUE's TSVs
(``train.tsv``, ``dev_matched.tsv``, ``dev_mismatched.tsv``).

The alignment is checked, not assumed: every row's label must equal the text's label
(contradiction 0, entailment 1, neutral 2: not Hugging Face's order) and its negation
flag must equal the one recomputed from the hypothesis with group_DRO's recipe. Any
disagreement means the rows are misaligned, so it is an error.
"""

from __future__ import annotations

import csv
import json
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from base.errors import UserError, either
from features.datasets import _tables as T
from features.datasets.base import DatasetSpec
from features.datasets.registry import METADATA_OPTION, DatasetOption, register

CLASS_NAMES = ["contradiction", "entailment", "neutral"]
TEXT_LABELS = {name: i for i, name in enumerate(CLASS_NAMES)}
# Hugging Face's multi_nli code of each of our classes: the label-order trap.
HF_CODES = np.array([2, 0, 1])
NEGATION_NAMES = ["no negation", "negation"]
GROUP_NAMES = [f"{c}/{n}" for c in CLASS_NAMES for n in NEGATION_NAMES]
# group_DRO (dataset_scripts/generate_multinli.py), after Gururangan et al. 2018.
NEGATION_WORDS = frozenset({"nobody", "no", "never", "nothing"})
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
PARTS = ("train", "dev_matched", "dev_mismatched")
JSONL_FILES = tuple(f"multinli_1.0_{p}.jsonl" for p in PARTS)
GLUE_FILES = tuple(f"{p}.tsv" for p in PARTS)
METADATA = "metadata_random.csv"
META_COLUMNS = ("gold_label", "sentence2_has_negation", "split")
TEXT_SOURCES = ("auto", "jsonl", "glue")
TEXT_SOURCE = DatasetOption("text_source", "where the raw text comes from", metavar="|".join(TEXT_SOURCES))


def has_negation(hypothesis: str) -> int:
    """group_DRO's negation flag: punctuation stripped, lower-cased, split on single spaces."""
    return int(not NEGATION_WORDS.isdisjoint(hypothesis.translate(_NO_PUNCTUATION).lower().split(" ")))


@dataclass
class Text:
    """The concatenated text rows, each with the file and line it came from."""

    premise: list[str] = field(default_factory=list)
    hypothesis: list[str] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    origin: list[tuple[int, int]] = field(default_factory=list)  # (index into files, line)
    files: list[Path] = field(default_factory=list)
    dropped: int = 0  # rows with gold_label '-'

    def add(self, path: Path, line: int, s1: str, s2: str, gold: str) -> None:
        if gold == "-":
            self.dropped += 1
            return
        if gold not in TEXT_LABELS:
            raise UserError(f"{path}: line {line}: gold_label {gold!r} is not contradiction, entailment, "
                            "neutral or '-'; is it the MNLI file?")
        self.premise.append(s1)
        self.hypothesis.append(s2)
        self.label.append(TEXT_LABELS[gold])
        self.origin.append((len(self.files) - 1, line))

    def where(self, i: int) -> str:
        f, line = self.origin[i]
        return f"{self.files[f].name} line {line}"


def _read_jsonl(paths: Iterable[Path]) -> Text:
    text = Text()
    for path in paths:
        text.files.append(path)
        for line_no, line in T.iter_lines(path, "MNLI jsonl file"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {line_no}: not valid JSON ({exc.msg}); the file is damaged, "
                                "download it again") from exc
            fields = [rec.get(k) if isinstance(rec, dict) else None for k in ("sentence1", "sentence2", "gold_label")]
            if not all(isinstance(v, str) for v in fields):
                raise UserError(f"{path}: line {line_no}: expected a JSON object with string sentence1, "
                                "sentence2 and gold_label (the raw MNLI release format)")
            text.add(path, line_no, *fields)
    return text


def _read_glue(paths: Iterable[Path]) -> Text:
    text = Text()
    for path in paths:
        text.files.append(path)
        # GLUE's TSVs are not quoted: a field may start with '"' (QUOTE_NONE, as GLUE's readers do).
        table = T.read_table(path, ("sentence1", "sentence2", "gold_label"), what="GLUE MNLI TSV file",
                             hint="GLUE's MNLI TSVs have sentence1, sentence2 and gold_label columns",
                             delimiter="\t", quoting=csv.QUOTE_NONE, ragged_ok=True)
        cols = table.columns
        for i, line in enumerate(table.lines):
            text.add(path, line, cols["sentence1"][i], cols["sentence2"][i], cols["gold_label"][i].strip())
    return text


def _candidate_dirs(root: Path, meta: Path) -> list[Path]:
    near = [root, meta.parent, meta.parent.parent]
    subs = ("", "multinli_1.0", "glue_data/MNLI", "MNLI", "multinli", "multinli/glue_data/MNLI")
    return list(dict.fromkeys(d / s if s else d for d in near for s in subs))


def _find_text(root: Path, meta: Path, source: str) -> tuple[str, list[Path]]:
    kinds = {"jsonl": JSONL_FILES, "glue": GLUE_FILES}
    wanted = list(kinds) if source == "auto" else [source]
    partial: list[str] = []
    for kind in wanted:
        for d in _candidate_dirs(root, meta):
            present = [(d / f).is_file() for f in kinds[kind]]
            if all(present):
                return kind, [d / f for f in kinds[kind]]
            if any(present):
                missing = [f for f, p in zip(kinds[kind], present, strict=True) if not p]
                partial.append(f"{d} lacks {', '.join(missing)}")
    need = " or ".join(", ".join(kinds[k]) for k in wanted)
    detail = f" ({'; '.join(partial)})" if partial else ""
    raise UserError(f"`root` {root}: MultiNLI text not found{detail}; put {need} beside {meta.name} (or in "
                    "multinli_1.0/ or glue_data/MNLI/ under `root`)")


def _find_metadata(root: Path) -> Path:
    for sub in ("", "data", "multinli/data", "multinli"):
        path = (root / sub / METADATA) if sub else root / METADATA
        if path.is_file():
            return path
    raise UserError(f"`root` {root}: no {METADATA} there or in data/; point `root` at the MultiNLI folder from "
                    "group_DRO (or pass `metadata` FILE)")


def _read_metadata(path: Path) -> tuple[T.Table, list[str]]:
    what = "MultiNLI metadata file"
    hint = f"group_DRO's {METADATA} has an unnamed index column, then gold_label, sentence2_has_negation, split"
    header = T.read_header(path, what)
    # pandas' index_col=0: the first column is the row index, unless it is one of the data columns
    # (a file saved without its index).
    index_col0 = bool(header) and header[0] not in META_COLUMNS
    table = T.read_table(path, META_COLUMNS, what=what, hint=hint, index_col0=index_col0)
    ids = [i.strip() for i in table.index] if index_col0 else [str(i) for i in range(len(table))]
    if index_col0:
        T.check_unique(table, None, ids)  # the index names the rows in the feature file
    return table, ids


def _check(meta: T.Table, ids: list[str], what: str, expected: np.ndarray, found: np.ndarray,
           text: Text, describe: Any, advice: str = "") -> None:
    bad = np.flatnonzero(expected != found)
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{meta.path}: {bad.size} of {len(ids)} rows disagree with the text on {what} (first: "
            f"{T.row_name(i, meta.lines[i])}, index {ids[i]}, says {describe(expected[i])} but {text.where(i)} "
            f"gives {describe(found[i])}); "
            + (advice or "the metadata and the text are not aligned (are they from the same MNLI release, "
               "train + dev_matched + dev_mismatched?)"))


@register("multinli", modalities=("text",), options=(METADATA_OPTION, TEXT_SOURCE))
def load(root: Path | None, **options: Any) -> DatasetSpec:
    source = str(options.get("text_source", TEXT_SOURCES[0])).lower()
    if source not in TEXT_SOURCES:
        raise UserError(f"`text_source` {options['text_source']!r}: choose {either(TEXT_SOURCES)}")
    base = T.resolve_root(root, "multinli", f"{METADATA} and the MNLI text (jsonl or GLUE TSVs)")
    meta_path = (T.resolve_file(options["metadata"], base, "`metadata`") if "metadata" in options
                 else _find_metadata(base))
    meta, ids = _read_metadata(meta_path)
    y = meta.ints("gold_label", (0, 1, 2), hint="gold_label is 0 contradiction, 1 entailment, 2 neutral")
    negation = meta.binary("sentence2_has_negation")
    split = meta.splits("split")
    kind, files = _find_text(base, meta_path, source)
    text = _read_jsonl(files) if kind == "jsonl" else _read_glue(files)
    if len(text.label) != len(meta):
        raise UserError(
            f"{meta_path}: {len(meta)} rows, but the text ({' + '.join(f.name for f in files)}, without the "
            f"{text.dropped} gold_label '-' rows) has {len(text.label)}; the metadata and the text are not the "
            "same MNLI release")
    labels = np.asarray(text.label, dtype=np.int64)
    in_hf_order = HF_CODES[labels]
    advice = ("its gold_label numbers follow Hugging Face's multi_nli order (entailment 0, neutral 1, "
              "contradiction 2), not group_DRO's (contradiction 0, entailment 1, neutral 2); regenerate it "
              "with group_DRO's order" if np.array_equal(y, in_hf_order) and not np.array_equal(y, labels) else "")
    _check(meta, ids, "gold_label", y, labels, text, lambda v: f"{int(v)} ({CLASS_NAMES[int(v)]})", advice)
    recomputed = np.fromiter((has_negation(h) for h in text.hypothesis), dtype=np.int64, count=len(meta))
    _check(meta, ids, "sentence2_has_negation", negation, recomputed, text,
           lambda v: "negation" if v else "no negation")
    return DatasetSpec(
        name="multinli",
        modality="text",
        items=list(zip(text.premise, text.hypothesis, strict=True)),
        ids=ids,
        y=y, a=negation, group=2 * y + negation, split=split,
        class_names=list(CLASS_NAMES), group_names=list(GROUP_NAMES),
        source={
            "root": str(base), "files": [str(meta_path), *map(str, files)],
            "format": f"group_DRO {METADATA} + {'raw MNLI jsonl' if kind == 'jsonl' else 'GLUE TSV'}",
            "text_source": kind, "dropped_dash_rows": text.dropped,
            "label": "gold_label (0 contradiction, 1 entailment, 2 neutral)",
            "attribute": "a = sentence2_has_negation (nobody/no/never/nothing in the hypothesis), checked "
                         "against the text",
            "group": "2*y + a", "item": "(sentence1, sentence2)", "options": dict(options),
        },
    )
