"""`probe merge`: shards joined equal the unsharded extraction; bad sets of shards are refused."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from base.errors import UserError
from features.encoders import Encoder
from features.extract import extract, shard_output_path
from features.merge import merge
from features.store import read_features
from tests.test_extract import image_spec, one_torch_thread, tiny_encoder  # noqa: F401 (fixture)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Encoder, object]:
    return tmp_path, tiny_encoder(tmp_path), image_spec(tmp_path / "images", n=45)


def _shards(tmp_path: Path, enc: Encoder, spec: object, count: int, **kw: object) -> list[Path]:
    paths = []
    for i in range(count):
        out = shard_output_path(tmp_path / "f.h5", (i, count))
        extract(spec, enc, out, batch_size=4, workers=0, shard=(i, count), **kw)
        paths.append(out)
    return paths


def _assert_same(a_path: Path, b_path: Path) -> None:
    a, b = read_features(a_path), read_features(b_path)
    np.testing.assert_array_equal(a.features, b.features)  # bit for bit
    for key in ("y", "a", "group", "split", "ids"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    for key in ("dataset", "encoder", "weights", "preprocess", "class_names", "group_names", "source",
                "rows_sha256", "shard", "complete", "rows_written"):
        assert a.attrs[key] == b.attrs[key], key


@pytest.mark.parametrize("count", [1, 3, 5])
def test_merged_shards_equal_unsharded(setup: tuple, count: int) -> None:
    tmp_path, enc, spec = setup
    extract(spec, enc, tmp_path / "full.h5", batch_size=4, workers=0)
    shards = _shards(tmp_path, enc, spec, count)
    sizes = [read_features(p).features.shape[0] for p in shards]
    assert sum(sizes) == 45 and all(s > 0 for s in sizes)
    res = merge(tmp_path / "merged.h5", list(reversed(shards)))  # any order
    assert res.rows == 45 and res.shards == count
    _assert_same(tmp_path / "full.h5", tmp_path / "merged.h5")


def test_merge_with_skipped_rows(setup: tuple) -> None:
    tmp_path, enc, spec = setup
    Path(spec.items[5]).unlink()
    extract(spec, enc, tmp_path / "full.h5", batch_size=4, workers=0, skip_bad=True)
    shards = _shards(tmp_path, enc, spec, 2, skip_bad=True)
    merge(tmp_path / "merged.h5", shards)
    _assert_same(tmp_path / "full.h5", tmp_path / "merged.h5")
    assert read_features(tmp_path / "merged.h5").attrs["skipped"] == '["img005"]'


def test_bad_shard_sets_refused(setup: tuple) -> None:
    tmp_path, enc, spec = setup
    shards = _shards(tmp_path, enc, spec, 3)
    out = tmp_path / "merged.h5"
    with pytest.raises(UserError, match="missing shard.*2/3"):
        merge(out, shards[:2])
    with pytest.raises(UserError, match="pass each shard once"):
        merge(out, [*shards, shards[1]])
    full = tmp_path / "full.h5"
    extract(spec, enc, full, batch_size=4, workers=0)
    with pytest.raises(UserError, match="not a shard"):
        merge(out, [full])
    other = tmp_path / "other"
    other.mkdir()
    other_enc = tiny_encoder(tmp_path, seed=1)
    odd = shard_output_path(other / "f.h5", (1, 3))
    extract(spec, other_enc, odd, batch_size=4, workers=0, shard=(1, 3))
    with pytest.raises(UserError, match="weights"):
        merge(out, [shards[0], odd, shards[2]])
    with h5py.File(shards[2], "r+") as h5:
        h5.attrs["complete"] = False
    with pytest.raises(UserError, match="incomplete"):
        merge(out, shards)
    assert not out.exists()
    out.write_text("keep me")
    for overwrite in (False, True):  # a file that is not a feature file is never replaced
        with pytest.raises(UserError, match="not a feature file.*even with `overwrite`"):
            merge(out, shards, overwrite=overwrite)
    assert out.read_text() == "keep me"
    out.unlink()
    out.write_bytes(b"")  # an empty file (made by mktemp, say) holds nothing to lose
    with pytest.raises(UserError, match="already exists.*`overwrite`"):
        merge(out, shards)
    with pytest.raises(UserError, match="no such file"):
        merge(tmp_path / "m2.h5", [tmp_path / "nope.h5"])


def test_cli_merge(setup: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    tmp_path, enc, spec = setup
    shards = _shards(tmp_path, enc, spec, 2)
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(tmp_path / "m.h5"), *map(str, shards)])
    assert exc.value.code == 0
    assert "merged 2 shards, 45 rows" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(tmp_path / "m.h5"), str(shards[0])])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "m.h5" in err
