"""Shared reading and checking of the metadata tables behind the dataset adapters.

Every way a user's file can be wrong (missing, unreadable, not UTF-8, a missing
column, a ragged row, a value that is not what the format says) becomes one
:class:`UserError` naming the file, the column and the row. Rows are named as
``data row N (line L)``: N counts data rows from 1 after the header, L is the
line of the file where the row starts (they differ by the header and by quoted
fields that span lines).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from base.errors import UserError

# GLUE's MNLI TSVs hold whole parse trees in one field, longer than csv's default limit.
_FIELD_LIMIT = 2**31 - 1
_INT = re.compile(r"[+-]?[0-9]+(\.0*)?")  # "1" and "1.0" (a column a tool saved as floats) are integers
SPLIT_WORDS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}
SPLIT_CODES = (0, 1, 2)
_BOOLS = {"false": 0, "true": 1}


def resolve_root(root: str | Path | None, dataset: str, expected: str) -> Path:
    """The ``root`` folder, which must exist; ``expected`` says what it should hold."""
    if root is None:
        raise UserError(f"`root` is required for dataset {dataset!r}: the folder holding {expected}")
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"`root` {path}: no such folder; give the folder holding {expected}")
    if not path.is_dir():
        raise UserError(f"`root` {path}: is a file, not a folder; give the folder holding {expected}")
    return path.resolve()


def resolve_file(name: str | Path, base: Path, what: str) -> Path:
    """A user-given file: absolute, or relative to ``base`` (the ``root`` folder)."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise UserError(f"{what} {name}: no such file (looked for {path}); relative paths are taken from `root`")
    if path.is_dir():
        raise UserError(f"{what} {name}: {path} is a folder; give the file")
    return path


def first_existing(candidates: Iterable[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def suggest(name: str, choices: Sequence[str], n: int = 5) -> str:
    """A few valid names, the closest to ``name`` first, for an error message."""
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    rest = [c for c in choices if c not in close]
    shown = close + rest[: max(0, n - len(close))]
    more = len(choices) - len(shown)
    return ", ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def row_name(i: int, line: int | None = None) -> str:
    """Row ``i`` (0-based) as users count it."""
    return f"data row {i + 1}" + (f" (line {line})" if line is not None else "")


@contextmanager
def open_text(path: Path, what: str) -> Iterator[TextIO]:
    """Open a UTF-8 text file (a byte-order mark is skipped), as a UserError when it cannot be."""
    try:
        fh = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such {what}; check `root`") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{path}: is a folder, not the {what}") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror}); check its permissions") from exc
    with fh:
        yield fh


def not_text_error(path: Path, what: str, line: int) -> UserError:
    """The file is not UTF-8: name the line of its first bad byte (``line`` if it cannot be read again)."""
    line = first_bad_utf8_line(path) or line
    return UserError(f"{path}: the {what} is not UTF-8 text (the first byte that is not is on line {line}); "
                     "re-save it as UTF-8 (or is it the wrong file, or compressed?)")


def first_bad_utf8_line(path: Path) -> int | None:
    """The 1-based line of the first byte that is not UTF-8, or None.

    Text files are decoded a block at a time ahead of the parser, so the line being
    parsed when decoding fails is not where the bad byte is (often line 1); the bytes say.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as exc:
                    # exc.object is the decoder's held-back bytes (never a newline) + this block.
                    return line + exc.object.count(b"\n", 0, exc.start)
                line += block.count(b"\n")
    except OSError:
        return None
    return None


def iter_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) for each line of a text file."""
    with open_text(path, what) as fh:
        line_no = 0
        try:
            for line_no, line in enumerate(fh, start=1):  # noqa: B007 - line_no is read after the loop
                if "\x00" in line:
                    raise UserError(f"{path}: line {line_no} contains a NUL byte; the {what} is not a "
                                    "text file (is it the right file, uncompressed?)")
                yield line_no, line.rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise not_text_error(path, what, line_no + 1) from exc


@dataclass
class Table:
    """The wanted columns of a delimited file, as strings, with where each row came from."""

    path: Path | str  # a file, or a description of where the rows come from
    header: list[str]
    columns: dict[str, list[str]]
    lines: list[int]  # file line where each data row starts
    index: list[str] = field(default_factory=list)  # first column, when read with index_col0
    what: str = "table"

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, i: int, column: str | None = None) -> str:
        col = f", column {column!r}" if column is not None else ""
        return f"{self.path}{col}, {row_name(i, self.lines[i])}"

    def ints(self, column: str, allowed: Sequence[int] | None = None, hint: str = "") -> np.ndarray:
        """The column as int64; a value that is not an integer (or not ``allowed``) is a UserError."""
        values = self.columns[column]
        out = np.empty(len(values), dtype=np.int64)
        ok = set(allowed) if allowed is not None else None
        for i, text in enumerate(values):
            value = parse_int(text)
            if value is None or (ok is not None and value not in ok):
                expected = "an integer" if ok is None else "one of " + ", ".join(map(str, allowed or ()))
                raise UserError(f"{self.where(i, column)}: {text!r} is not {expected}"
                                + (f"; {hint}" if hint else ""))
            out[i] = value
        return out

    def binary(self, column: str, hint: str = "") -> np.ndarray:
        """A 0/1 column; True/False (as pandas writes booleans) are accepted too."""
        values = self.columns[column]
        out = np.empty(len(values), dtype=np.int64)
        for i, text in enumerate(values):
            value = parse_int(text)
            if value is None:
                value = _BOOLS.get(text.strip().lower())
            if value not in (0, 1):
                raise UserError(f"{self.where(i, column)}: {text!r} is not 0/1 or True/False"
                                + (f"; {hint}" if hint else ""))
            out[i] = value
        return out

    def floats(self, column: str, empty: float | None = None, hint: str = "") -> np.ndarray:
        """The column as float64; an empty field is ``empty`` (None: an error), anything else
        that is not a number a UserError."""
        values = self.columns[column]
        out = np.empty(len(values), dtype=np.float64)
        for i, text in enumerate(values):
            text = text.strip()
            if not text and empty is not None:
                out[i] = empty
                continue
            try:
                out[i] = float(text)
            except ValueError:
                raise UserError(f"{self.where(i, column)}: {text!r} is not a number"
                                + (f"; {hint}" if hint else "")) from None
        return out

    def splits(self, column: str, words: bool = False) -> np.ndarray:
        """Split codes 0/1/2; with ``words`` also train/val/valid/validation/test (any case)."""
        values = self.columns[column]
        out = np.empty(len(values), dtype=np.int8)
        for i, text in enumerate(values):
            code = parse_split(text, words)
            if code is None:
                accepted = "0 (train), 1 (val) or 2 (test)"
                if words:
                    accepted += ", or train/val/valid/validation/test"
                raise UserError(f"{self.where(i, column)}: unknown split {text!r}; use {accepted}")
            out[i] = code
        return out

    def nonempty(self, column: str, hint: str = "") -> list[str]:
        """The column's values, none of them empty."""
        values = self.columns[column]
        for i, text in enumerate(values):
            if not text.strip():
                raise UserError(f"{self.where(i, column)}: empty value" + (f"; {hint}" if hint else ""))
        return values


def parse_int(text: str) -> int | None:
    text = text.strip()
    if not _INT.fullmatch(text):
        return None
    return int(text.split(".", 1)[0])


def parse_split(text: str, words: bool = False) -> int | None:
    value = parse_int(text)
    if value is not None:
        return value if value in SPLIT_CODES else None
    if words:
        return SPLIT_WORDS.get(text.strip().lower())
    return None


def read_header(path: Path, what: str, delimiter: str = ",") -> list[str]:
    """The first non-blank line's fields, stripped ([] for an empty file)."""
    for line_no, line in iter_lines(path, what):
        if line.strip():
            try:
                return [h.strip() for h in next(csv.reader([line], delimiter=delimiter))]
            except csv.Error as exc:
                raise UserError(f"{path}: line {line_no}: not a readable {what} ({exc})") from exc
    return []


def read_table(path: Path, columns: Sequence[str], *, what: str, hint: str = "",
               named_by: Mapping[str, str] | None = None, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL,
               index_col0: bool = False, ragged_ok: bool = False) -> Table:
    """Read ``columns`` (by header name) of a delimited file with a header line.

    ``named_by`` maps a column name to the option that named it (```label_col```), for the error message.
    ``index_col0`` keeps the first column as the row index (pandas' ``index_col=0``),
    whatever its header says. A row with a different number of fields than the header
    is an error unless ``ragged_ok`` (then only the wanted fields must be present).
    Blank lines are skipped, as pandas does.
    """
    named_by = named_by or {}
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(min(_FIELD_LIMIT, sys.maxsize))
    with open_text(path, what) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting, strict=False)
        line = 0
        try:
            header: list[str] | None = None
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    header = [cell.strip() for cell in row]
                    break
                line = reader.line_num
            if header is None:
                raise UserError(f"{path}: the {what} is empty (no header line); {hint or 'check the file'}")
            positions = column_positions(path, header, columns, what, named_by, hint)
            first = 1 if index_col0 else 0
            values: dict[str, list[str]] = {c: [] for c in columns}
            index: list[str] = []
            lines: list[int] = []
            width = max([first - 1, *positions.values()]) + 1
            line = reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                n = len(lines)
                if (len(row) != len(header) and not ragged_ok) or len(row) < width:
                    raise UserError(f"{path}: {row_name(n, start)} has {len(row)} field(s) but the header has "
                                    f"{len(header)}; fix or remove that row")
                lines.append(start)
                if index_col0:
                    index.append(row[0])
                for c, pos in positions.items():
                    values[c].append(row[pos])
        except csv.Error as exc:
            raise UserError(f"{path}: line {reader.line_num}: not a readable {what} ({exc}); "
                            f"{hint or 'check the file'}") from exc
        except UnicodeDecodeError as exc:
            raise not_text_error(path, what, line + 1) from exc
    if not lines:
        raise UserError(f"{path}: the {what} has a header but no rows; {hint or 'check the file'}")
    return Table(path=path, header=header, columns=values, lines=lines, index=index, what=what)


def column_positions(path: Path | str, header: list[str], columns: Sequence[str], what: str,
                     named_by: Mapping[str, str], hint: str = "") -> dict[str, int]:
    """Where each of ``columns`` is in ``header``; a missing or repeated one is a UserError that
    names the option that asked for it (``named_by``) and lists the columns there are."""
    positions: dict[str, int] = {}
    for c in columns:
        hits = [i for i, h in enumerate(header) if h == c]
        named = f"{named_by[c]} {c!r}" if c in named_by else f"column {c!r}"
        if not hits:
            shown = ", ".join(repr(h) for h in header[:40]) + (" ..." if len(header) > 40 else "")
            advice = f"; {hint}" if hint and c not in named_by else ""
            raise UserError(f"{path}: {named} not found in the {what}; its columns are: {shown}{advice}")
        if len(hits) > 1:
            raise UserError(f"{path}: {named} appears {len(hits)} times in the header; rename the duplicates")
        positions[c] = hits[0]
    return positions


def sorted_values(values: Iterable[str]) -> list[str]:
    """Distinct values, numerically when all are integers (2 before 10), else as text."""
    distinct = set(values)
    as_int = {v: parse_int(v) for v in distinct}
    if all(i is not None for i in as_int.values()):
        return sorted(distinct, key=lambda v: (as_int[v], v))
    return sorted(distinct)


def encode(values: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Index of each value in ``names``."""
    lookup = {v: i for i, v in enumerate(names)}
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def check_unique(table: Table, column: str | None, ids: Sequence[str] | None = None) -> None:
    """Refuse a repeated id (``ids``, default the column's values): rows must stay distinguishable."""
    seen: dict[str, int] = {}
    values = ids if ids is not None else table.columns[column or ""]
    for i, key in enumerate(values):
        if key in seen:
            j = seen[key]
            raise UserError(f"{table.where(i, column)}: {key!r} already appears in {row_name(j, table.lines[j])}; "
                            "each row needs its own")
        seen[key] = i
