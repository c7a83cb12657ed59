"""Issue 17 for `probe extract` and `probe merge`: what a careless or unlucky user does.

Each case runs the CLI in a fresh interpreter, as a user would, and checks the exit
code, that stderr is one line without a traceback, and that every file the user had is
byte-identical afterwards. The full-disk cases run on a small tmpfs the test mounts
(root only; CI runs as root).

Most cases extract the bundled demo dataset (1797 in-memory digits) with a tiny
random open_clip model saved as a local folder: a minute at most on a busy machine.
The model and the uninterrupted reference extraction are built once per test run.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from features.store import read_features
from tests.conftest import REPO, CliResult, assert_user_error, built_once, run_cli, small_tmpfs
from tests.test_extract import make_tiny_clip
from tests.userfiles import sha256, snapshot

DEMO_ROWS = 1797


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 512 features (2 KiB a row): the demo's file is ~4 MiB, enough to fill a small disk.
    return built_once(tmp_path_factory, "tiny-clip-512", lambda folder: make_tiny_clip(folder, embed_dim=512))


def demo_args(clip: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "demo", "--encoder", "open_clip:tiny", "--weights", f"local-dir:{clip}",
            "--batch-size", "64", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="session")
def reference(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo extracted in one go: what every interrupted and resumed run must equal
    (once per test run; the tests read it or copy it)."""
    def extract(folder: Path) -> None:
        res = run_cli(*demo_args(clip, folder / "demo.h5"))
        assert res.code == 0, res.stderr

    return built_once(tmp_path_factory, "demo-tiny-clip-512", extract) / "demo.h5"


def assert_same_features(a: Path, b: Path) -> None:
    fa, fb = read_features(a), read_features(b)
    np.testing.assert_array_equal(fa.features, fb.features)
    assert list(fa.ids) == list(fb.ids)


def popen_cli(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen[str], timeout: float = 300) -> CliResult:
    out, err = proc.communicate(timeout=timeout)
    return CliResult(proc.returncode, out, err)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, finished(proc).stderr
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def rows_written(path: Path) -> int:
    with h5py.File(path, "r", locking=False) as h5:
        return int(h5.attrs["rows_written"])


# --------------------------------------------------------------------------- item 7: a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    with small_tmpfs(tmp_path, "16m") as mnt:
        yield mnt


def fill(disk: Path, leave_mib: float) -> Path:
    """A file taking all but ``leave_mib`` of ``disk``'s free space."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, free - int(leave_mib * 2**20)))
    return filler


def assert_disk_full(res: CliResult, path: str) -> None:
    assert res.code == 2, (res.code, res.stderr)  # not 139 (segfault), not 1 (traceback)
    assert_user_error(res, path, "no space left")


@pytest.mark.slow
def test_full_disk_keeps_the_rows_and_a_rerun_resumes_bit_identical(clip: Path, reference: Path,
                                                                     small_disk: Path) -> None:
    out = small_disk / "demo.h5"
    # 8.5 MiB free: the lock file's 4 MiB reserve, then room for a commit or two (the file needs ~4.3).
    filler = fill(small_disk, 8.5)
    res = run_cli(*demo_args(clip, out))
    assert_disk_full(res, "demo.h5.partial")
    assert not out.exists() and not (small_disk / "demo.h5.lock").exists()
    partial = small_disk / "demo.h5.partial"
    kept = rows_written(partial) if partial.exists() else 0
    if kept:
        assert f"the {kept} rows written so far are kept" in res.stderr and "rerun the same command" in res.stderr
    else:  # a machine fast enough to encode it all before its first commit (every 5 s)
        assert "nothing was kept" in res.stderr and not partial.exists()
    filler.unlink()
    res = run_cli(*demo_args(clip, out)[:-1])  # not quiet: it says where it resumed
    assert res.code == 0, res.stderr
    if kept:
        assert f"{kept} rows already written" in res.stderr
    assert_same_features(reference, out)
    assert sorted(p.name for p in small_disk.iterdir()) == ["demo.h5"]


@pytest.mark.slow
def test_full_disk_leaves_the_previous_file_as_it_was(clip: Path, reference: Path, small_disk: Path) -> None:
    out = small_disk / "demo.h5"
    out.write_bytes(reference.read_bytes())
    fill(small_disk, 8.5)
    before = snapshot(small_disk)
    res = run_cli(*demo_args(clip, out, "--overwrite"))
    assert_disk_full(res, "demo.h5.partial")
    assert sha256(out) == before["demo.h5"]
    partial = small_disk / "demo.h5.partial"
    if partial.exists():  # what a resume needs, and how: the old file is in the way of one
        assert "move demo.h5 (unchanged) away" in res.stderr and "without --overwrite" in res.stderr
    assert sorted(set(os.listdir(small_disk)) - {"demo.h5.partial"}) == ["demo.h5", "filler"]


# --------------------------------------------------------------------------- item 8: two at once


@pytest.mark.slow
def test_second_overwrite_at_once_is_refused(clip: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo.h5"
    out.write_bytes(reference.read_bytes())
    first = popen_cli(*demo_args(clip, out, "--overwrite"))
    try:
        wait_for(tmp_path / "demo.h5.partial", first)
        first.send_signal(signal.SIGSTOP)  # frozen mid-extraction, so the second surely overlaps it
        before = snapshot(tmp_path)
        second = run_cli(*demo_args(clip, out, "--overwrite"))
        assert_user_error(second, "demo.h5", "another `probe extract` is writing it")
        assert snapshot(tmp_path) == before
    finally:
        first.send_signal(signal.SIGCONT)
    res = finished(first)
    assert res.code == 0, res.stderr
    assert_same_features(reference, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.h5"]


# --------------------------------------------------------------------------- item 11: signals


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_extraction_says_what_it_kept(clip: Path, tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "demo.h5"
    proc = popen_cli(*demo_args(clip, out))
    wait_for(tmp_path / "demo.h5.partial", proc)
    time.sleep(0.2)  # the tiny demo finishes within a second on a quiet machine: signal it while it runs
    proc.send_signal(sig)
    res = finished(proc)
    assert res.code == 128 + sig, (res.code, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"probe extract: interrupted ({sig.name}); "), lines[0]
    partial = tmp_path / "demo.h5.partial"
    if partial.exists():
        assert f"the {rows_written(partial)} rows written so far are kept in demo.h5.partial" in lines[0]
        assert "rerun the same command to resume" in lines[0]
    else:
        assert "nothing was kept" in lines[0]
    assert not out.exists() and not (tmp_path / "demo.h5.lock").exists()


# --------------------------------------------------------------------------- item 9: shards


@pytest.mark.slow
def test_more_shards_than_batches_still_merge(clip: Path, reference: Path, tmp_path: Path) -> None:
    """One batch of 2048 rows, two shards: shard 0 is empty, and the shards still tile the rows."""
    out = tmp_path / "demo.h5"
    for i in range(2):
        args = demo_args(clip, out, "--shard", f"{i}/2")
        args[args.index("--batch-size") + 1] = "2048"
        res = run_cli(*args)
        assert res.code == 0, res.stderr
    assert read_features(tmp_path / "demo.shard0of2.h5").features.shape == (0, 512)
    res = run_cli("merge", out, tmp_path / "demo.shard0of2.h5", tmp_path / "demo.shard1of2.h5", "--quiet")
    assert res.code == 0, res.stderr
    merged, ref = read_features(out), read_features(reference)
    assert list(merged.ids) == list(ref.ids)
    # Batches of another size: equal up to the rounding of a different batch composition.
    np.testing.assert_allclose(merged.features, ref.features, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- image tables


def image_table(folder: Path, images: dict[str, object]) -> Path:
    """meta.csv (path, y, a, split) over ``images`` (file name -> PIL image or bytes), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "meta.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "y", "a", "split"])
        for i, (name, img) in enumerate(images.items()):
            if isinstance(img, bytes):
                (folder / name).write_bytes(img)
            else:
                img.save(folder / name)  # type: ignore[attr-defined]
            w.writerow([name, i % 2, (i // 2) % 2, i % 3])
    return folder / "meta.csv"


def table_args(clip: Path, meta: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "table", "--root", str(meta.parent), "--metadata", meta.name, "--image-col", "path",
            "--encoder", "open_clip:tiny", "--weights", f"local-dir:{clip}", "--out", str(out), "--quiet", *extra]


def gradient(seed: int = 0) -> np.ndarray:
    """A smooth 16-bit picture: what a scientific camera or a medical scanner saves."""
    yy, xx = np.mgrid[0:48, 0:40]
    rng = np.random.default_rng(seed)
    picture = 0.5 + 0.25 * np.sin(xx / 5.0 + rng.uniform()) + 0.2 * np.cos(yy / 7.0)
    return np.clip(picture * 65535, 0, 65535).astype(np.uint16)


@pytest.mark.slow
def test_sixteen_bit_grayscale_is_scaled_not_clipped(clip: Path, tmp_path: Path) -> None:
    from PIL import Image

    wide = gradient()
    narrow = np.rint(wide / 257.0).astype(np.uint8)  # the 8-bit version of the same picture
    meta = image_table(tmp_path / "imgs", {"wide.png": Image.fromarray(wide), "narrow.png": Image.fromarray(narrow)})
    assert Image.open(tmp_path / "imgs" / "wide.png").mode == "I;16"
    out = tmp_path / "f.h5"
    res = run_cli(*table_args(clip, meta, out))
    assert res.code == 0, res.stderr
    f = read_features(out).features
    cosine = float(f[0] @ f[1] / np.linalg.norm(f[0]) / np.linalg.norm(f[1]))
    assert cosine > 0.999, cosine


@pytest.mark.slow
def test_image_of_unknown_range_is_refused_naming_it(clip: Path, tmp_path: Path) -> None:
    from PIL import Image

    depth = Image.fromarray((gradient().astype(np.float32) / 10.0), "F")  # a float depth map in mm
    meta = image_table(tmp_path / "imgs", {"ok.png": Image.fromarray(np.rint(gradient() / 257).astype(np.uint8)),
                                           "depth.tif": depth})
    before = snapshot(tmp_path)
    res = run_cli(*table_args(clip, meta, tmp_path / "f.h5"))
    assert_user_error(res, "depth.tif", "range", "8-bit", "--skip-bad")
    assert snapshot(tmp_path) == before  # its batch was the first: no unfinished file to resume


def jpeg(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.slow
def test_rerun_after_the_images_changed_is_refused(clip: Path, tmp_path: Path) -> None:
    """Item 13: a finished file whose images changed since is not reused as "already complete"."""
    meta = image_table(tmp_path / "imgs", {f"{i}.jpg": jpeg(i) for i in range(6)})
    out = tmp_path / "f.h5"
    res = run_cli(*table_args(clip, meta, out))
    assert res.code == 0, res.stderr
    (tmp_path / "imgs" / "3.jpg").write_bytes(jpeg(99))  # replaced by another picture
    before = snapshot(tmp_path)
    res = run_cli(*table_args(clip, meta, out))
    assert_user_error(res, "f.h5", "files changed", "--overwrite")
    assert snapshot(tmp_path) == before


def test_skip_bad_that_skips_every_row_writes_nothing(clip: Path, tmp_path: Path) -> None:
    """Item 13: not a complete file of 0 rows and exit 0, but one line and nothing left behind."""
    meta = image_table(tmp_path / "imgs", {f"{i}.jpg": b"not a jpeg" for i in range(4)})
    before = snapshot(tmp_path)
    res = run_cli(*table_args(clip, meta, tmp_path / "f.h5", "--skip-bad"))
    assert_user_error(res, "every row is unreadable", "4", "--skip-bad")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- checked before anything slow


def test_extract_refuses_to_write_over_its_inputs_or_a_run(tmp_path: Path) -> None:
    """Item 5: --out onto the dataset's own table or image, or a run's summary, even with --overwrite."""
    meta = image_table(tmp_path / "imgs", {f"{i}.jpg": jpeg(i) for i in range(4)})
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"methods": {}}\n')
    before = snapshot(tmp_path)
    for target in (meta, tmp_path / "imgs" / "2.jpg", run / "summary.json"):
        args = table_args(Path("unused"), meta, target, "--overwrite")
        res = run_cli(*args)
        assert_user_error(res, "--out", target.name, "not a feature file", "even with --overwrite")
    assert snapshot(tmp_path) == before


def test_flags_are_checked_before_the_model_loads(tmp_path: Path) -> None:
    """Item 12: a bad --batch-size or --workers is named even with an encoder that cannot load."""
    meta = image_table(tmp_path / "imgs", {f"{i}.jpg": jpeg(i) for i in range(2)})
    for flag, value in (("--batch-size", "0"), ("--workers", "-1")):
        args = table_args(Path("/nowhere"), meta, tmp_path / "f.h5", flag, value)
        assert_user_error(run_cli(*args), flag, value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_error_after_a_text_model_loaded_is_one_line(tmp_path: Path) -> None:
    """Item 12: no Hugging Face progress bar or log line before the error (with or without -q)."""
    from tests.fixtures.formats import text_table

    built = text_table(tmp_path)
    res = run_cli("extract", "table", "--root", built.root, "--metadata", "texts.csv", "--text-col", "text",
                  "--group-col", "group", "--encoder", "minilm", "--max-length", "100000",
                  "--out", tmp_path / "t.h5")
    assert_user_error(res, "--max-length", "100000", "at most")


def test_latin1_byte_is_reported_on_its_line(tmp_path: Path) -> None:
    """Item 13: the line of the first byte that is not UTF-8, not the line being parsed (often 1)."""
    meta = image_table(tmp_path / "imgs", {f"{i}.jpg": jpeg(i) for i in range(60)})
    lines = meta.read_bytes().split(b"\n")
    lines[41] = lines[41].replace(b".jpg", "é.jpg".encode("latin-1"))  # line 42 of the file
    meta.write_bytes(b"\n".join(lines))
    res = run_cli(*table_args(Path("unused"), meta, tmp_path / "f.h5"))
    assert_user_error(res, "meta.csv", "not UTF-8", "line 42")


# --------------------------------------------------------------------------- the pieces, in this process


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "PA", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B", "I", "F"])
def test_every_mode_comes_out_as_a_viewer_shows_it(mode: str) -> None:
    from PIL import Image

    from features.encoders.core import load_image

    gray = np.rint(gradient() / 257.0).astype(np.uint8)
    white = {"I;16": 65535, "I;16B": 65535, "I": 65535, "F": 1.0}.get(mode)
    if white is None:
        img = Image.fromarray(gray, "L").convert(mode)
    else:  # the same picture in a wide mode, its white at the mode's top
        img = Image.fromarray(gray.astype(np.float64) * (white / 255.0)).convert("F")
        img = img if mode == "F" else Image.fromarray(np.rint(np.asarray(img)).astype(np.int32), "I").convert(mode)
    rgb = np.asarray(load_image(img))
    assert rgb.dtype == np.uint8 and rgb.shape == (*gray.shape, 3)
    expected = np.asarray(Image.fromarray(gray, "L").convert(mode if white is None else "L").convert("RGB"))
    np.testing.assert_allclose(rgb.astype(int), expected.astype(int), atol=1 if mode == "YCbCr" else 0)


def test_images_without_a_known_range_are_refused() -> None:
    from PIL import Image

    from features.encoders.core import ImagePrepare, load_image

    for arr, mode in ((np.full((4, 4), 3.5, np.float32), "F"), (np.full((4, 4), 70000, np.int32), "I"),
                      (np.full((4, 4), np.nan, np.float32), "F")):
        with pytest.raises(ValueError, match="8-bit"):
            load_image(Image.fromarray(arr, mode))
    bad = ImagePrepare(lambda img: img)(Image.fromarray(np.full((4, 4), -1, np.int32), "I"))
    assert "outside 0..65535" in bad.reason


def test_shards_tile_the_rows_whatever_their_number() -> None:
    from features.extract import batch_bounds, shard_span

    for n_rows in (0, 1, 7, 64, 65, 1797):
        for batch in (1, 16, 64, 2048):
            for count in (1, 2, 3, 8, 40):
                spans = [shard_span(n_rows, batch, (i, count)) for i in range(count)]
                assert spans[0][0] == 0 and spans[-1][1] == n_rows
                assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
                for i, (start, stop) in enumerate(spans):
                    rows = [r for s, e in batch_bounds(n_rows, batch, (i, count)) for r in range(s, e)]
                    assert rows == list(range(start, stop))


def test_output_lock_refuses_another_process_and_is_reentrant(tmp_path: Path) -> None:
    from base.errors import UserError
    from base.outputs import output_lock

    target = tmp_path / "f.h5"
    holder = [sys.executable, "-c", "import sys, time; from base.outputs import output_lock\n"
              "with output_lock(sys.argv[1], 'busy'):\n print('held', flush=True); time.sleep(60)", str(target)]
    proc = subprocess.Popen(holder, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="^someone else$"), output_lock(target, "someone else"):
            pass
    finally:
        proc.kill()
        proc.wait()
    with output_lock(target, "busy") as outer, output_lock(target, "busy") as inner:
        assert inner is outer and (tmp_path / "f.h5.lock").exists()
    assert not (tmp_path / "f.h5.lock").exists()  # the killed holder's lock went with it


def test_bad_utf8_is_found_on_its_line(tmp_path: Path) -> None:
    from features.datasets._tables import first_bad_utf8_line

    path = tmp_path / "t.csv"
    text = "".join(f"row {i},é\n" for i in range(100_000)).encode()  # several MiB: crosses read blocks
    path.write_bytes(text + b"bad \xe9 byte\n")
    assert first_bad_utf8_line(path) == 100_001
    path.write_bytes("é".encode() * (1 << 19) + b"\n\xff")  # a character split across the 1 MiB blocks
    assert first_bad_utf8_line(path) == 2
    path.write_bytes(b"all good\n")
    assert first_bad_utf8_line(path) is None
