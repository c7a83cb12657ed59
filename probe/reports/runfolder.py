"""Reading `probe fit --out` run folders (docs/results-format.md) for reports.

results.jsonl goes through :func:`probe.records.results.parse_results`, the one reader
of result rows; summary.json is read and checked here. Every problem is a
one-line UserError naming the file (and the line) and saying what to do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.outputs import STREAMS, looks_like_hdf5, same_file, special_kind
from probe.records.results import Result, parse_results
from probe.records.summary import Summary
from probe.runs.layout import DOMAINS_FILE, HEADS, RUN_FILES, named_files, swapping

# What a run folder holds (docs/results-format.md): what a report reads, and must never write over.
RESULTS, SUMMARY = RUN_FILES


@dataclass
class RunFolder:
    """One `probe fit --out` folder: summary.json and results.jsonl, parsed."""

    path: Path
    summary: Summary
    results: list[Result]
    name: str = ""  # what the report calls it: the path parts that tell it from the others
    labelled: bool = False  # named by its study, not by its path

    @property
    def group_names(self) -> list[str]:
        return self.summary.group_names

    @property
    def selection(self) -> str:
        return self.summary.selection

    @property
    def features(self) -> dict[str, Any]:
        return self.summary.features


def load_runs(paths: Sequence[str | Path | tuple[str | Path, str]]) -> list[RunFolder]:
    """Run folders, each a path or a (path, name) pair (a study names its runs by their
    labels: ``probe.study.jobs.expand_studies`` turns a study folder into such pairs)."""
    return [load_run(*p) if isinstance(p, tuple) else load_run(p) for p in paths]


def load_run(path: str | Path, name: str = "") -> RunFolder:
    """Read and check one run folder; every problem is a one-line UserError naming the file.
    ``name``: what the report calls it (default: told apart from the others by its path)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"run folder {p} does not exist; pass a folder written by `probe fit --out`")
    if not p.is_dir():
        raise UserError(f"{p} is not a folder; pass a run folder written by `probe fit --out`")
    if swapping(p):
        raise UserError(f"{p} is being replaced by `probe fit` (or one stopped while moving its new run in); "
                        "wait for it, or rerun that `probe fit` to finish")
    summary = _read_json(p / SUMMARY)
    results_file = p / RESULTS
    results = parse_results(_read_text(results_file), where=results_file)
    _check_summary(p / SUMMARY, summary)
    return RunFolder(path=p, summary=Summary.from_json(summary), results=results, name=name or p.name, labelled=bool(name))


def run_folder_of(path: Path) -> Path | None:
    """The run folder whose summary.json, results.jsonl, domains.csv or head ``path`` is
    (existing or not), or None."""
    if path.name in (*RUN_FILES, DOMAINS_FILE):
        folder = path.parent
    elif path.parent.name == HEADS and path.suffix == ".safetensors":
        folder = path.parent.parent
    else:
        return None
    return folder if any((folder / f).is_file() for f in (SUMMARY, RESULTS)) else None


def run_files(run: Path) -> list[Path]:
    """Every file of the run folder's format (docs/results-format.md) that ``run`` may hold:
    results, summary, inferred domains, heads, and whatever else its summary names."""
    try:
        named = named_files(json.loads((run / SUMMARY).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        named = ()
    return [run / f for f in dict.fromkeys((*RUN_FILES, DOMAINS_FILE, *named))] + sorted(
        (run / HEADS).glob("*.safetensors"))


def check_output_file(out: Path, run_dirs: Sequence[Path]) -> None:
    """Refuse a report file that would replace what reports are made from: a file of a run
    folder (these or any other), a feature file, a folder, a block device or a socket.
    Other files are replaced (atomically), e.g. the report.md a previous report wrote;
    a character device or a FIFO is written through (``base.io.write_output_text``)."""
    if out.is_dir():
        raise UserError(f"`out` {out}: is a folder; give the report's file name, e.g. {out / 'report.md'}")
    kind = special_kind(out)
    if kind is not None and kind not in STREAMS:
        raise UserError(f"`out` {out}: is {kind}; write the report to a file, a character device or a FIFO")
    for run in run_dirs:
        for own in run_files(run):
            if same_file(out, own):
                raise UserError(f"`out` {out}: is {own.relative_to(run)} of the run folder {run} this report "
                                f"reads; write the report under another name, e.g. {run / 'report.md'}")
    owner = run_folder_of(out)
    if owner is not None:
        raise UserError(f"`out` {out}: is a file of the run folder {owner}; write the report under another name, "
                        f"e.g. {owner / 'report.md'}")
    if out.is_file() and looks_like_hdf5(out):
        raise UserError(f"`out` {out}: is a feature file (HDF5); write the report under another name")


def distinct_names(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing path parts that tell the run folders apart."""
    parts = [p.resolve().parts for p in paths]
    names = []
    for i, pp in enumerate(parts):
        for depth in range(1, len(pp) + 1):
            tail = pp[-depth:]
            if all(q[-depth:] != tail for j, q in enumerate(parts) if j != i and q != pp):
                break
        names.append("/".join(tail) or str(paths[i]))
    # The same folder passed twice: number the repeats.
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}#{seen[n]}"
    return names


def _missing(file: Path) -> UserError:
    return UserError(
        f"{file} is missing: {file.parent} is not a finished `probe fit` run folder "
        f"(rerun `probe fit ... --out {file.parent}`)"
    )


def _read_text(file: Path) -> str:
    if not file.is_file():
        raise _missing(file)
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{file} is not UTF-8 text ({exc.reason}); rerun `probe fit`") from exc
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror}") from exc


def _read_json(file: Path) -> dict[str, Any]:
    text = _read_text(file)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{file} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the run folder is damaged, rerun `probe fit`"
        ) from exc
    if not isinstance(obj, dict):
        raise UserError(f"{file} holds a JSON {type(obj).__name__}, not an object; rerun `probe fit`")
    return obj


def _check_summary(file: Path, summary: dict[str, Any]) -> None:
    methods = summary.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise UserError(f"{file} has no 'methods' object; it is not a finished `probe fit` summary")
    for name, entry in methods.items():
        if not isinstance(entry, dict):
            raise UserError(f"{file}: methods.{name} is not an object; rerun `probe fit`")
        # null: nothing could be selected (every configuration diverged); reported as such.
        selected = entry.get("selected")
        if selected is None:
            continue
        if not isinstance(selected, dict) or not isinstance(selected.get("hparams"), dict):
            raise UserError(f"{file}: methods.{name}.selected.hparams is missing or not an object")
        if not isinstance(selected.get("run_ids", []), list):
            raise UserError(f"{file}: methods.{name}.selected.run_ids is not a list")
