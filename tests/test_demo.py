"""The bundled demo: real digits, a Waterbirds-style spurious background, deterministic from its seed."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from features.datasets import load_dataset
from features.datasets.demo import COLOURS, GROUP_NAMES, IMAGE_SIZE


@pytest.fixture(scope="module")
def spec():
    return load_dataset("demo")


def test_rows_labels_and_groups(spec) -> None:
    digits = load_digits()
    assert len(spec) == len(digits.target) == 1797
    np.testing.assert_array_equal(spec.y, (digits.target >= 5).astype(np.int64))
    np.testing.assert_array_equal(spec.group, 2 * spec.y + spec.a)
    assert spec.group_names == GROUP_NAMES == ["small/blue", "small/green", "large/blue", "large/green"]
    assert spec.class_names == ["small", "large"] and spec.modality == "image"
    assert len(set(spec.ids)) == len(spec)
    assert spec.source["seed"] == 0 and "load_digits" in spec.source["data"]


def test_split_is_stratified_50_20_30(spec) -> None:
    digits = load_digits()
    for d in range(10):
        rows = digits.target == d
        frac = np.bincount(spec.split[rows], minlength=3) / rows.sum()
        np.testing.assert_allclose(frac, [0.5, 0.2, 0.3], atol=0.02)


@pytest.mark.parametrize(("split", "agreement"), [(0, 0.95), (1, 0.5), (2, 0.5)])
def test_background_agrees_with_label_as_in_waterbirds(spec, split: int, agreement: float) -> None:
    for c in (0, 1):
        cell = (spec.split == split) & (spec.y == c)
        agree = (spec.a[cell] == c).mean()
        assert abs(agree - agreement) <= 1.0 / cell.sum() + 1e-9, (split, c, agree)
    train_groups = np.bincount(spec.group[spec.split == 0], minlength=4)
    assert train_groups[1] < train_groups[0] / 10 and train_groups[2] < train_groups[3] / 10


def test_images_show_the_digit_on_its_background(spec) -> None:
    digits = load_digits()
    for i in (0, 1, 500, 1796):
        img = spec.items[i]
        assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
        px = np.asarray(img, dtype=np.float64)
        corner = px[:4, :4].reshape(-1, 3).mean(axis=0)
        expected = np.array(COLOURS[int(spec.a[i])])
        assert np.abs(corner - expected).max() <= 25, (i, corner, expected)
        # Ink is bright where the 8x8 digit is bright: brightness follows the original pixels.
        small = np.asarray(img.convert("L").resize((8, 8)), dtype=np.float64)
        assert np.corrcoef(small.ravel(), digits.images[i].ravel())[0, 1] > 0.8


def test_deterministic_from_seed(spec) -> None:
    again = load_dataset("demo")
    other = load_dataset("demo", seed=1)
    np.testing.assert_array_equal(spec.split, again.split)
    np.testing.assert_array_equal(spec.a, again.a)
    assert np.asarray(spec.items[7]).tobytes() == np.asarray(again.items[7]).tobytes()
    assert (spec.split != other.split).any() and (spec.a != other.a).any()
    with pytest.raises(IndexError):
        spec.items[len(spec)]
