"""Spurious-correlation tasks built from real data that installs offline, for the defaults study.

Each follows the Waterbirds recipe: a label carried by real content, and a planted
attribute that agrees with the label in 95% of the training rows and in 50% of
validation and test rows, so groups = label × attribute and worst-group accuracy
measures how much a head relies on the attribute.

* ``demo``: the bundled task (scikit-learn's handwritten digits on coloured
  backgrounds), encoded with EfficientNet-Lite0 (1,280-d).
* ``photo``: 96×96 patches of the left or the right half of scikit-learn's
  ``china.jpg`` photograph (the label), in a blue or an orange frame (the
  attribute), encoded with EfficientNet-Lite0 (1,280-d).
* ``packages``: this machine's Debian package descriptions (``/var/lib/dpkg/status``),
  library or program (the label, from the package's section), followed by one of two
  fixed sentences (the attribute), encoded with MiniLM (384-d). The rows depend on the
  packages installed here, which the results record.

Each builder writes a ``table`` dataset (CSV plus images) under a cache folder and
returns the ``probe extract`` arguments that encode it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

AGREEMENT = {0: 0.95, 1: 0.5, 2: 0.5}  # split -> P(attribute agrees with the label)
SPLIT_FRACTIONS = (0.5, 0.2, 0.3)
DPKG_STATUS = Path("/var/lib/dpkg/status")
LIBRARY_SECTIONS = ("libs", "libdevel", "oldlibs")
PLANTED_SENTENCES = ("Listed in the archive index.", "Part of the default installation.")
FRAME_COLOURS = ((30, 60, 200), (230, 120, 20))
PATCH = 96


def _splits_and_attributes(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    split = np.empty(len(y), np.int64)
    for c in np.unique(y):  # stratified by label
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = np.cumsum([int(f * len(idx)) for f in SPLIT_FRACTIONS[:2]])
        split[idx[:cut[0]]], split[idx[cut[0]:cut[1]]], split[idx[cut[1]:]] = 0, 1, 2
    agree = rng.random(len(y)) < np.vectorize(AGREEMENT.get)(split)
    return split, np.where(agree, y, 1 - y)


def _write_table(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def packages(cache: Path, seed: int = 0) -> list[str]:
    """The package-description text task; returns `probe extract` arguments."""
    folder = cache / "packages"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for block in DPKG_STATUS.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        section = re.search(r"^Section: (.*)$", block, re.M)
        desc = re.search(r"^Description: (.*(?:\n .*)*)", block, re.M)
        if section and desc:
            words = " ".join(line.strip() for line in desc.group(1).splitlines() if line.strip() != ".").split()
            entries.append((section.group(1).split("/")[-1] in LIBRARY_SECTIONS, " ".join(words[:60])))
    rng = np.random.default_rng(seed)
    y = np.array([int(lib) for lib, _ in entries])
    split, a = _splits_and_attributes(y, rng)
    rows = [{"text": f"{text} {PLANTED_SENTENCES[a[i]]}", "y": ["program", "library"][y[i]], "a": int(a[i]),
             "split": int(split[i])} for i, (_, text) in enumerate(entries)]
    _write_table(folder / "table.csv", rows)
    return ["table", "--root", str(folder), "--metadata", "table.csv", "--text-col", "text", "--encoder", "minilm"]


def photo(cache: Path, seed: int = 0, n: int = 1200) -> list[str]:
    """The photo-patch image task; returns `probe extract` arguments."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = cache / "photo"
    (folder / "img").mkdir(parents=True, exist_ok=True)
    china = load_sample_images().images[0]  # 427 × 640 × 3
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2  # 0: a patch of the left half, 1: of the right half
    split, a = _splits_and_attributes(y, rng)
    half = china.shape[1] // 2
    rows = []
    for i in range(n):
        top = rng.integers(0, china.shape[0] - PATCH)
        left = rng.integers(0, half - PATCH) + half * y[i]
        patch = china[top:top + PATCH, left:left + PATCH].copy()
        patch[:8], patch[-8:], patch[:, :8], patch[:, -8:] = (FRAME_COLOURS[a[i]],) * 4
        name = f"img/{i:05d}.png"
        Image.fromarray(patch).save(folder / name)
        rows.append({"path": name, "y": ["left", "right"][y[i]], "a": int(a[i]), "split": int(split[i])})
    _write_table(folder / "table.csv", rows)
    return ["table", "--root", str(folder), "--metadata", "table.csv", "--image-col", "path",
            "--encoder", "efficientnet-lite0"]


def demo(cache: Path, seed: int = 0) -> list[str]:
    return ["demo"]


TASKS: dict[str, Callable[[Path], list[str]]] = {"demo": demo, "photo": photo, "packages": packages}
