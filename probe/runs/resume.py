"""A fit that survives being killed: the journal of finished chunks, and the swap.

``fit_grid`` with an ``out`` folder keeps, in ``OUT/.partial/``:

* ``plan.json``: the fingerprint of the fit (the data's content and the resolved
  plan: methods, settings, configurations, protocol; see :func:`fit_fingerprint`);
* ``chunks/<method>-<first>-<n>/``: one folder per finished chunk, its rows
  (``rows.jsonl``) and heads with preprocessing (``tensors.safetensors``), flushed
  to the disk and renamed into place, so a chunk is in the journal whole or not at all;
* ``staging/``: the new run, written in full beside the previous one before
  :func:`probe.runs.folder.publish` moves it in (``READY`` marks it complete).

A rerun with the same fingerprint fits only the configurations no chunk holds and
ends with the same rows and heads as an uninterrupted fit (results do not depend on
chunking). Another fingerprint is refused unless ``overwrite``. ``OUT/.lock`` is held
for the whole fit so that two fits never write one folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from base.errors import UserError
from base.io import NoSpace, fsync_path, no_space_names, write_json_atomic
from base.locks import exclusive
from base.outputs import no_space_message
from base.version import code_version, source_hash
from probe.records.results import Result, parse_results, to_jsonl
from probe.records.summary import Summary
from probe.runs.folder import (
    DOMAINS_FILE,
    RunSpec,
    RunState,
    check_run_dir,
    publish,
    run_state,
    write_run,
)
from probe.runs.layout import JOURNAL, LOCK

_CHUNK = re.compile(r"^[A-Za-z0-9_]+-\d+-\d+$")


def data_fingerprint(fs: Any) -> str:
    """The content of a FeatureSet (arrays and names), wherever its file lies."""
    h = hashlib.blake2b(digest_size=20)
    for name in ("features", "y", "a", "group", "split"):
        arr = getattr(fs, name)
        h.update(f"{name}{arr.dtype}{arr.shape}".encode())
        h.update(memoryview(arr.reshape(-1).view("uint8") if arr.flags.c_contiguous else arr.tobytes()))
    h.update(json.dumps([list(map(str, fs.ids)), fs.class_names, fs.group_names]).encode())
    return h.hexdigest()


def fit_fingerprint(data: str, plan: dict[str, Any]) -> str:
    """The data's fingerprint with everything that decides the results: per method its
    settings and configurations (``plan``), probe's version and the source of its fitting
    code (``base.version.source_hash``)."""
    text = json.dumps({"data": data, "plan": plan, "version": code_version().get("probe_version"),
                       "source": source_hash()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class RunSession:
    """One fit's hold on its ``out`` folder: what is finished, what to write, the swap."""

    def __init__(self, out: Path, fingerprint: str, overwrite: bool) -> None:
        self.out, self.fingerprint, self.overwrite = out, fingerprint, overwrite
        self.journal = out / JOURNAL
        self.complete = False  # the folder holds this very fit, finished: nothing to do
        self.previous = RunState("none")
        self._lock: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ opening

    def __enter__(self) -> RunSession:
        check_run_dir(self.out)
        with no_space_names(self.out):
            self.out.mkdir(exist_ok=True)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(exclusive(self.out / LOCK, f"`out` {self.out} is being written by another "
                                           "`probe fit`; wait for it to finish or choose another folder"))
        try:
            self._open()
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.close()

    def _open(self) -> None:
        self._finish_swap()
        prev = self.previous = run_state(self.out)
        found = self._journal_fingerprint()
        if prev.kind == "complete" and prev.fingerprint == self.fingerprint and not self.overwrite:
            self.complete = True
            self._discard()  # left by a crash after the swap
            return
        if not self.overwrite:
            if prev.kind != "none" and prev.fingerprint != self.fingerprint:
                what = "the finished part of another fit" if prev.kind == "partial" else "a run"
                raise UserError(f"`out` {self.out} already holds {what} (other data, settings or code); pass "
                                "`overwrite` to replace it or choose another folder")
            if found is not None and found != self.fingerprint:
                raise UserError(f"`out` {self.out} holds an unfinished fit of other data, settings or code; rerun "
                                "that command (with that code) to finish it, pass `overwrite` to discard it, or "
                                "choose another folder")
        if found != self.fingerprint:
            self._discard()
            try:
                with no_space_names(self.journal):
                    (self.journal / "chunks").mkdir(parents=True)
                write_json_atomic(self.journal / "plan.json", {"fingerprint": self.fingerprint})
            except BaseException:
                self._discard()  # a journal without its plan is of no use to a rerun
                raise

    def _journal_fingerprint(self) -> str | None:
        """The fingerprint of the journal's fit; None when it holds no finished chunk
        (then there is nothing to lose: a fit stopped at once, to fix a flag, is no obstacle)."""
        chunks = self.journal / "chunks"
        if not chunks.is_dir() or not any(_CHUNK.match(c.name) for c in chunks.iterdir()):
            return None
        try:
            return json.loads((self.journal / "plan.json").read_text(encoding="utf-8"))["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _discard(self) -> None:
        shutil.rmtree(self.journal, ignore_errors=True)

    def drop_if_empty(self) -> None:
        """Remove the journal when it holds no finished chunk (a fit refused before its first
        chunk finished leaves the folder as it found it)."""
        if self._journal_fingerprint() is None:
            self._discard()

    # ------------------------------------------------------------------ chunks

    def finished(self) -> dict[str, dict[int, Result]]:
        """Every configuration the journal holds: method -> config index -> row (with its head)."""
        from safetensors.torch import load_file

        out: dict[str, dict[int, Result]] = {}
        chunks = self.journal / "chunks"
        for folder in sorted(chunks.iterdir()) if chunks.is_dir() else []:
            if not _CHUNK.match(folder.name):
                continue  # a chunk being written when the fit was killed
            try:
                tensors = load_file(str(folder / "tensors.safetensors"))
                rows = parse_results((folder / "rows.jsonl").read_text(encoding="utf-8"), folder / "rows.jsonl")
                pre_of = json.loads((folder / "pre.json").read_text(encoding="utf-8"))
            except (OSError, ValueError, UserError):
                shutil.rmtree(folder, ignore_errors=True)  # damaged outside probe: fitted again
                continue
            for j, row in enumerate(rows):
                row.theta = tensors[f"theta.{j}"]
                p = pre_of[j]
                row.pre = None if p is None else {k.split(".", 2)[2]: v for k, v in tensors.items()
                                                  if k.startswith(f"pre.{p}.")}
                out.setdefault(row.method, {})[row.sort_key()[1]] = row
        return out

    def save_chunk(self, rows: list[Result]) -> None:
        """Write one finished chunk's rows durably (a folder renamed into place)."""
        from safetensors.torch import save

        if not rows:
            return
        first = min(r.sort_key()[1] for r in rows)
        final = self.journal / "chunks" / f"{rows[0].method}-{first:04d}-{len(rows)}"
        tmp = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        pres: dict[int, int] = {}  # a chunk's heads share one preprocessing: stored once
        tensors = {}
        for j, row in enumerate(rows):
            tensors[f"theta.{j}"] = row.theta.detach().cpu().contiguous().clone()
            if row.pre is not None and id(row.pre) not in pres:
                p = pres[id(row.pre)] = len(pres)
                tensors.update({f"pre.{p}.{k}": v.detach().cpu().contiguous().clone() for k, v in row.pre.items()})
        pre_of = [pres.get(id(r.pre)) if r.pre is not None else None for r in rows]
        try:
            with no_space_names(final):
                tmp.mkdir()
                for name, data in (("rows.jsonl", to_jsonl(rows).encode()), ("pre.json", json.dumps(pre_of).encode()),
                                   ("tensors.safetensors", save(tensors))):
                    (tmp / name).write_bytes(data)
                    fsync_path(tmp / name)
                fsync_path(tmp)
                os.replace(tmp, final)
                fsync_path(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ the run

    def commit(self, rows: dict[str, list[Result]], spec: RunSpec, complete: bool = True) -> Summary:
        """Write the run beside the previous one, then swap it in. ``complete`` False:
        an interrupted fit's finished configurations (the journal stays for a rerun)."""
        staging = self.journal / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            summary = write_run(staging, rows, replace(spec, provenance={**spec.provenance,
                                                                         "fingerprint": self.fingerprint}), complete)
            new_files = {f"heads/{p.name}" for p in (staging / "heads").glob("*.safetensors")}
            new_files |= {DOMAINS_FILE} if (staging / DOMAINS_FILE).exists() else set()
            stale = sorted(set(run_state(self.out).files) - new_files)
            write_json_atomic(staging / "READY", {"complete": complete, "stale": stale})
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # what a resume needs is the journal, not this
            raise
        self._finish_swap()
        if complete:
            self._discard()
        return summary

    def _finish_swap(self) -> None:
        """Publish a staged run (again, after a crash during the swap: renames are repeatable)."""
        staging = self.journal / "staging"
        try:
            ready = json.loads((staging / "READY").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        publish(staging, self.out, ready.get("stale", []))
        (staging / "READY").unlink()
        shutil.rmtree(staging, ignore_errors=True)
        if ready.get("complete"):
            self._discard()

    def keep_partial(self) -> bool:
        """Whether an interrupted fit may write its finished configurations as the run:
        only over no run or a partial one, never over a complete previous run."""
        return self.previous.kind != "complete"


def fit_no_space_message(exc: NoSpace, out: Path, kept: int) -> str:
    """A full disk during a fit, in one line: where, and what is intact."""
    return (f"{no_space_message(exc.path)}; the previous contents of `out` {out} are unchanged"
            + (f" and the {kept} finished configurations are kept for the rerun" if kept else "")
            + ": free some space and run the command again")
