"""Feeding an encoder: items prepared in worker processes or threads, batches in a fixed order.

Each row's item is prepared (decoded, transformed or checked) by the encoder's
``prepare`` and each batch collated by its ``collate``, in DataLoader worker
processes or, with ``workers`` 0, by threads of this process between forward
passes. Unreadable items come through as :class:`BadItem` for the caller to
refuse or skip. Also here: the process-wide memory settings that keep a forward
pass on the CPU fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from features.datasets.base import DatasetSpec
from features.encoders.core import BadItem, Encoder

Batch = tuple[list[int], Any, list[tuple[int, BadItem]]]  # good rows, their collated items, bad rows


def tune_cpu_allocator(mmap_threshold_mb: int = 256, trim_threshold_mb: int = 1024) -> bool:
    """Keep freed tensor memory in the process instead of returning it to the OS (glibc only).

    glibc hands every large block back to the kernel when it is freed, so a
    convnet's forward pass re-faults its activations page by page on every batch:
    ~120k page faults per EfficientNet-Lite0 batch of 16, about 40% of its CPU
    time. Raising the mmap and trim thresholds keeps those pages mapped (and lets
    resident memory stay up to ``trim_threshold_mb`` higher). Process-wide, so the
    command line calls it, not the library. Returns whether it took effect.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        ok = libc.mallopt(m_mmap_threshold, mmap_threshold_mb << 20) == 1
        return bool(libc.mallopt(m_trim_threshold, trim_threshold_mb << 20) == 1 and ok)
    except (OSError, AttributeError):
        return False


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def default_workers(device_type: str = "cpu") -> int:
    """Loader processes when ``workers`` is not given.

    On CUDA, worker processes decode while the GPU encodes. On the CPU none: each
    batch is decoded by a pool of threads in this process between forward passes
    (``_in_process_batches``). The model already keeps every core busy there, and
    decoding alongside it stalls its parallel regions, which all wait for their
    slowest thread (measured with benchmarks/extract.py on 2 cores, EfficientNet-Lite0:
    2 overlapped worker processes reach 0.63 of the forward-only rate, one thread in
    the main process 0.77, a thread per core between passes 0.83).
    """
    return min(4, os.cpu_count() or 1) if device_type == "cuda" else 0


def decode_threads(modality: str) -> int:
    """Threads that prepare a batch in this process (``workers`` 0): one per core torch
    uses for images, whose decoding and resizing release the GIL; one for texts,
    which the tokenizer batches itself."""
    import torch

    return max(1, torch.get_num_threads()) if modality == "image" else 1


class _Rows:
    """Map-style dataset for the DataLoader: row i -> (i, prepared item or BadItem)."""

    def __init__(self, items: Sequence[Any], prepare: Any) -> None:
        self.items = items
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.prepare(self.items[i])


class _Collate:
    """Split a batch into readable rows (collated by the encoder) and bad ones."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, rows: list[tuple[int, Any]]) -> Batch:
        good = [(i, x) for i, x in rows if not isinstance(x, BadItem)]
        bad = [(i, x) for i, x in rows if isinstance(x, BadItem)]
        batch = self.collate([x for _, x in good]) if good else None
        return [i for i, _ in good], batch, bad


def _in_process_batches(rows: _Rows, collate: _Collate, todo: list[tuple[int, int]],
                        threads: int) -> Iterator[Batch]:
    """What the DataLoader yields with ``workers`` 0, each batch's items prepared by
    ``threads`` threads at once and collated before the model runs on it.

    Not overlapped with the forward pass on purpose (see default_workers): between
    passes the decoding has every core to itself.
    """
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(threads, thread_name_prefix="probe-decode") if threads > 1 else None
    try:
        for start, end in todo:
            prepared = list(pool.map(rows.__getitem__, range(start, end)) if pool
                            else map(rows.__getitem__, range(start, end)))
            yield collate(prepared)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# Niceness of DataLoader workers when the model runs on the CPU. The workers then
# share cores with torch's intra-op threads, whose parallel regions all wait for
# their slowest thread: a worker holding a core stalls every region of the forward
# pass. At a lower priority the kernel hands the core back to a waking torch thread
# sooner, and the workers still get the time the model leaves idle. Not the lowest
# priority (19): with other processes busy on the machine the workers would starve
# and the model wait for them (measured on 2 cores: 19 collapses under outside load,
# 5-10 holds up, 0 loses most of the overlap).
CPU_WORKER_NICE = 10


class _WorkerInit:
    def __init__(self, nice: int) -> None:
        self.nice = nice

    def __call__(self, _: int) -> None:
        if self.nice and hasattr(os, "nice"):
            try:
                os.nice(self.nice)
            except OSError:  # not permitted here: run at normal priority
                pass


def batches(spec: DatasetSpec, encoder: Encoder, todo: list[tuple[int, int]], workers: int) -> Iterable[Batch]:
    """The batches ``todo`` ([start, stop) rows), prepared by ``workers`` processes or (0) in this one.

    Worker processes start when iteration does.
    """
    from torch.utils.data import DataLoader

    if workers > 0 and spec.modality == "text":
        # Tokenizers' own threads and forked workers deadlock; workers already parallelise.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows_ds, collate = _Rows(spec.items, encoder.prepare), _Collate(encoder.collate)
    if workers > 0 and todo:
        return DataLoader(
            rows_ds, batch_sampler=[list(range(s, e)) for s, e in todo], num_workers=workers, collate_fn=collate,
            worker_init_fn=_WorkerInit(CPU_WORKER_NICE if encoder.device.type == "cpu" else 0),
            pin_memory=encoder.device.type == "cuda", prefetch_factor=4,
        )
    return _in_process_batches(rows_ds, collate, todo, decode_threads(spec.modality))
