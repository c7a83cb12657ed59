"""The bundled demo: scikit-learn's real handwritten digits as a Waterbirds-style task.

Recipe (deterministic from ``seed``):
- rows: the 1,797 8x8 digits of ``sklearn.datasets.load_digits``;
- label y: digit >= 5 ("large") versus digit <= 4 ("small");
- split: 50/20/30 train/val/test, stratified by digit;
- spurious attribute a: background colour, blue (0) or green (1). It agrees with the
  label (small/blue, large/green) in exactly 95% of each class's training rows and
  50% of its validation and test rows, as in Waterbirds;
- group = 2*y + a: small/blue, small/green, large/blue, large/green;
- image: the digit upscaled (bicubic) to 64x64, white ink over its background colour,
  with a small per-image jitter of the colour; rendered on demand in memory.

A model that leans on the colour does well on average and badly on the minority
groups (small/green, large/blue); one that reads the digit does well on all four.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from features.datasets.base import DatasetSpec
from features.datasets.registry import register

CLASS_NAMES = ["small", "large"]
ATTRIBUTE_NAMES = ["blue", "green"]
GROUP_NAMES = [f"{c}/{a}" for c in CLASS_NAMES for a in ATTRIBUTE_NAMES]
COLOURS = {0: (40, 80, 190), 1: (40, 150, 60)}  # RGB of the blue and green backgrounds
COLOUR_JITTER = 20  # +- per channel, per image
IMAGE_SIZE = 64
SPLIT_FRACTIONS = (0.5, 0.2, 0.3)
AGREEMENT = {0: 0.95, 1: 0.5, 2: 0.5}  # split -> P(background colour agrees with the label)


class DigitImages(Sequence):
    """Renders row i as a PIL image when asked (in DataLoader workers during extraction)."""

    def __init__(self, digits: np.ndarray, background: np.ndarray, seed: int, size: int = IMAGE_SIZE) -> None:
        self.digits = digits  # (N, 8, 8) float in 0..16
        self.background = background  # (N,) int attribute
        self.seed = seed
        self.size = size

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        from PIL import Image

        if not 0 <= i < len(self):
            raise IndexError(i)
        ink = Image.fromarray((self.digits[i] * (255.0 / 16.0)).astype(np.uint8), mode="L")
        alpha = np.asarray(ink.resize((self.size, self.size), Image.BICUBIC), dtype=np.float32)[..., None] / 255.0
        jitter = np.random.default_rng([self.seed, i]).integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        bg = np.clip(np.array(COLOURS[int(self.background[i])]) + jitter, 0, 255).astype(np.float32)
        rgb = bg * (1.0 - alpha) + 255.0 * alpha
        return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mode="RGB")


def _stratified_split(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    split = np.empty(len(digit), dtype=np.int8)
    for d in np.unique(digit):
        idx = rng.permutation(np.flatnonzero(digit == d))
        n_train = int(round(SPLIT_FRACTIONS[0] * len(idx)))
        n_val = int(round(SPLIT_FRACTIONS[1] * len(idx)))
        split[idx[:n_train]] = 0
        split[idx[n_train:n_train + n_val]] = 1
        split[idx[n_train + n_val:]] = 2
    return split


def _background(y: np.ndarray, split: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact agreement rates per (split, class) cell, so group sizes do not depend on luck."""
    a = np.empty(len(y), dtype=np.int64)
    for s, p_agree in AGREEMENT.items():
        for c in (0, 1):
            idx = rng.permutation(np.flatnonzero((split == s) & (y == c)))
            n_agree = int(round(p_agree * len(idx)))
            a[idx[:n_agree]] = c
            a[idx[n_agree:]] = 1 - c
    return a


# Bundled and built in memory: no folder, and (as always) options it has no use for are ignored.
@register("demo", modalities=("image",), root="unused", default_encoder="efficientnet-lite0",
          help="bundled, built from scikit-learn digits", strict=False)
def load(root: Path | None = None, seed: int = 0, **_: Any) -> DatasetSpec:
    import sklearn
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64)
    digit = np.asarray(digits.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    y = (digit >= 5).astype(np.int64)
    split = _stratified_split(digit, rng)
    a = _background(y, split, rng)
    group = 2 * y + a
    source = {
        "data": "sklearn.datasets.load_digits (1,797 handwritten 8x8 digits, UCI optdigits test set)",
        "sklearn_version": sklearn.__version__,
        "seed": seed,
        "label": "y = digit >= 5 (small: 0-4, large: 5-9)",
        "attribute": "a = background colour (0 blue, 1 green); agrees with y (small/blue, large/green) in "
                     "95% of each class's train rows, 50% of val and test rows",
        "group": "2*y + a",
        "split": "50/20/30 train/val/test, stratified by digit",
        "image": f"digit upscaled bicubic to {IMAGE_SIZE}x{IMAGE_SIZE}, white ink over the background colour "
                 f"{COLOURS} +-{COLOUR_JITTER} per channel",
    }
    return DatasetSpec(
        name="demo",
        modality="image",
        items=DigitImages(images, a, seed),
        ids=[f"digits/{i:04d}" for i in range(len(y))],
        y=y, a=a, group=group, split=split,
        class_names=list(CLASS_NAMES), group_names=list(GROUP_NAMES),
        source=source,
    )
