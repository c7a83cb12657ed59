"""`probe extract`: identical numbers whatever the workers, safe reruns, resume after SIGKILL, --skip-bad.

Most cases run a tiny open_clip model (random weights saved to a local folder) on a
few generated JPEGs: the engine is exercised end to end in well under a second each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from base.errors import UserError
from features.datasets.base import DatasetSpec
from features.encoders import Encoder, load_encoder
from features.extract import batch_bounds, extract, parse_shard, partial_path, shard_output_path
from features.store import read_features
from tests.conftest import REPO, run_cli

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


def make_tiny_clip(folder: Path, seed: int = 0, embed_dim: int | None = None) -> Path:
    """An open_clip local-dir model: config + random weights, like a downloaded checkpoint."""
    from open_clip.model import CLIP

    cfg = {**TINY_CLIP, "embed_dim": embed_dim or TINY_CLIP["embed_dim"]}
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**cfg)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def tiny_encoder(tmp_path: Path, seed: int = 0) -> Encoder:
    folder = make_tiny_clip(tmp_path / f"tiny_clip_{seed}", seed)
    return load_encoder("open_clip:tiny", weights=f"local-dir:{folder}", device="cpu")


def image_spec(folder: Path, n: int = 40, seed: int = 0, name: str = "imgs") -> DatasetSpec:
    """JPEGs on disk with labels in every (group, split) cell."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.jpg"
        if not p.exists():
            Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    y = np.arange(n) % 2
    a = (np.arange(n) // 2) % 2
    return DatasetSpec(name=name, modality="image", items=paths, ids=[f"img{i:03d}" for i in range(n)],
                       y=y, a=a, group=2 * y + a, split=np.arange(n) % 3, class_names=["c0", "c1"],
                       group_names=["c0/a0", "c0/a1", "c1/a0", "c1/a1"], source={"made_by": "test"})


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two
    threads stall on each other; the engine is what these tests are about."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def enc(tmp_path: Path) -> Encoder:
    return tiny_encoder(tmp_path)


@pytest.fixture
def spec(tmp_path: Path) -> DatasetSpec:
    return image_spec(tmp_path / "images")


def test_round_trip_matches_direct_encoding(tmp_path: Path, enc: Encoder, spec: DatasetSpec) -> None:
    res = extract(spec, enc, tmp_path / "f.h5", batch_size=8, workers=0)
    assert res.status == "written" and res.rows == len(spec)
    fs = read_features(tmp_path / "f.h5")
    direct = torch.cat([enc.encode_items(spec.items[s:e]) for s, e in batch_bounds(len(spec), 8)]).numpy()
    np.testing.assert_array_equal(fs.features, direct)
    assert list(fs.ids) == spec.ids
    np.testing.assert_array_equal(fs.y, spec.y)
    np.testing.assert_array_equal(fs.group, spec.group)
    np.testing.assert_array_equal(fs.split, spec.split)
    assert fs.group_names == spec.group_names and fs.class_names == spec.class_names
    assert fs.attrs["encoder"] == "open_clip:tiny" and "sha256:" in fs.attrs["weights"]
    assert "Resize(size=32" in fs.attrs["preprocess"] and fs.attrs["source"] == {"made_by": "test"}
    assert not partial_path(tmp_path / "f.h5").exists()


def test_workers_do_not_change_numbers(tmp_path: Path, enc: Encoder, spec: DatasetSpec) -> None:
    extract(spec, enc, tmp_path / "w0.h5", batch_size=8, workers=0)
    extract(spec, enc, tmp_path / "w2.h5", batch_size=8, workers=2)
    a, b = read_features(tmp_path / "w0.h5"), read_features(tmp_path / "w2.h5")
    np.testing.assert_array_equal(a.features, b.features)
    assert list(a.ids) == list(b.ids)


@pytest.mark.cuda
def test_cuda_extraction_with_workers_matches_cpu(tmp_path: Path, spec: DatasetSpec) -> None:
    """The CUDA path of `probe extract` as a GPU user runs it: the model on the GPU under
    float16 autocast, JPEGs decoded by worker processes forked after CUDA started."""
    folder = make_tiny_clip(tmp_path / "clip")
    cpu = load_encoder("open_clip:tiny", weights=f"local-dir:{folder}", device="cpu")
    gpu = load_encoder("open_clip:tiny", weights=f"local-dir:{folder}", device="cuda")
    assert gpu.precision == "amp-float16"
    extract(spec, cpu, tmp_path / "cpu.h5", batch_size=8, workers=0)
    res = extract(spec, gpu, tmp_path / "gpu.h5", batch_size=8, workers=2)
    assert res.status == "written" and res.rows == len(spec)
    a, b = read_features(tmp_path / "cpu.h5"), read_features(tmp_path / "gpu.h5")
    assert list(a.ids) == list(b.ids) and b.features.dtype == np.float32
    # float16 keeps 11 significant bits (relative rounding 5e-4 per operation); through
    # one small transformer layer each row stays within a few times that of float32's.
    cos = (a.features * b.features).sum(1) / (np.linalg.norm(a.features, axis=1) * np.linalg.norm(b.features, axis=1))
    assert cos.min() > 0.999
    np.testing.assert_allclose(b.features, a.features, rtol=0, atol=1e-2 * np.abs(a.features).max())


def test_float16_storage(tmp_path: Path, enc: Encoder, spec: DatasetSpec) -> None:
    extract(spec, enc, tmp_path / "h.h5", batch_size=8, workers=0, dtype="float16")
    extract(spec, enc, tmp_path / "s.h5", batch_size=8, workers=0)
    with h5py.File(tmp_path / "h.h5") as h5:
        assert h5["features"].dtype == np.float16
    half, full = read_features(tmp_path / "h.h5"), read_features(tmp_path / "s.h5")
    np.testing.assert_allclose(half.features, full.features, rtol=2e-3, atol=1e-3)


def test_complete_output_is_left_alone(tmp_path: Path, enc: Encoder, spec: DatasetSpec) -> None:
    out = tmp_path / "f.h5"
    extract(spec, enc, out, batch_size=8, workers=0)
    before = out.read_bytes()
    res = extract(spec, enc, out, batch_size=8, workers=0)
    assert res.status == "already complete" and res.rows == len(spec)
    assert out.read_bytes() == before
    res = extract(spec, enc, out, batch_size=8, workers=0, overwrite=True)
    assert res.status == "written"
    np.testing.assert_array_equal(read_features(out).features, np.asarray(read_features(out).features))


def test_other_encoder_or_rows_refused(tmp_path: Path, enc: Encoder, spec: DatasetSpec) -> None:
    out = tmp_path / "f.h5"
    extract(spec, enc, out, batch_size=8, workers=0)
    before = out.read_bytes()
    other = tiny_encoder(tmp_path, seed=1)
    with pytest.raises(UserError, match=r"f\.h5.*weights.*`overwrite`") as exc:
        extract(spec, other, out, batch_size=8, workers=0)
    assert "\n" not in str(exc.value)
    fewer = image_spec(tmp_path / "images", n=30)
    with pytest.raises(UserError, match="other rows"):
        extract(fewer, enc, out, batch_size=8, workers=0)
    with pytest.raises(UserError, match="features_dtype"):
        extract(spec, enc, out, batch_size=8, workers=0, dtype="float16")
    assert out.read_bytes() == before


def test_not_a_feature_file_at_out_refused(tmp_path: Path, enc: Encoder, spec: DatasetSpec) -> None:
    out = tmp_path / "notes.h5"
    out.write_text("my notes\n")
    with pytest.raises(UserError, match="notes.h5.*`overwrite`"):
        extract(spec, enc, out, batch_size=8, workers=0)
    assert out.read_text() == "my notes\n"


def test_bad_image_stops_then_resumes_identically(tmp_path: Path, enc: Encoder) -> None:
    spec = image_spec(tmp_path / "images")
    ref = tmp_path / "ref.h5"
    extract(spec, enc, ref, batch_size=4, workers=0)
    bad_path = Path(spec.items[21])
    good_bytes = bad_path.read_bytes()
    bad_path.write_bytes(good_bytes[:40])  # a truncated JPEG
    out = tmp_path / "f.h5"
    with pytest.raises(UserError, match=r"img021\.jpg.*`skip_bad`"):
        extract(spec, enc, out, batch_size=4, workers=2, commit_seconds=0)
    part = partial_path(out)
    assert part.exists() and not out.exists()
    with h5py.File(part) as h5:  # the batches before the bad one were kept
        assert int(h5.attrs["rows_written"]) == 20 and not h5.attrs["complete"]
    # An unfinished file made by another encoder is not mixed with this one.
    with pytest.raises(UserError, match=r"\.partial.*weights"):
        extract(spec, tiny_encoder(tmp_path, seed=1), out, batch_size=4, workers=0)
    with pytest.raises(UserError, match="`batch_size` 4"):
        extract(spec, enc, out, batch_size=8, workers=0)
    bad_path.write_bytes(good_bytes)
    res = extract(spec, enc, out, workers=0)  # batch size taken from the partial file
    assert res.status == "resumed" and res.resumed_from == 20
    a, b = read_features(ref), read_features(out)
    np.testing.assert_array_equal(a.features, b.features)
    assert list(a.ids) == list(b.ids)


def test_skip_bad_drops_and_records(tmp_path: Path, enc: Encoder) -> None:
    spec = image_spec(tmp_path / "images")
    ref = tmp_path / "ref.h5"
    extract(spec, enc, ref, batch_size=8, workers=0)
    Path(spec.items[3]).unlink()
    Path(spec.items[17]).write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match=r"img003\.jpg"):
        extract(spec, enc, tmp_path / "stop.h5", batch_size=8, workers=0)
    res = extract(spec, enc, tmp_path / "f.h5", batch_size=8, workers=2, skip_bad=True)
    assert res.skipped == ["img003", "img017"] and res.rows == len(spec) - 2
    fs, full = read_features(tmp_path / "f.h5"), read_features(ref)
    assert json.loads(fs.attrs["skipped"]) == ["img003", "img017"]
    keep = [i for i in range(len(spec)) if i not in (3, 17)]
    assert list(fs.ids) == [spec.ids[i] for i in keep]
    np.testing.assert_array_equal(fs.y, spec.y[keep])
    # The rows kept are the same images: equal features up to batch-composition rounding.
    np.testing.assert_allclose(fs.features, full.features[keep], rtol=1e-4, atol=1e-5)


def test_damaged_partial_restarts_with_warning(tmp_path: Path, enc: Encoder, spec: DatasetSpec,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.h5"
    partial_path(out).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # killed while writing its header
    warnings: list[str] = []
    res = extract(spec, enc, out, batch_size=8, workers=0, warn=warnings.append)
    assert res.status == "written" and read_features(out).features.shape == (len(spec), 16)
    assert len(warnings) == 1 and "starting again from scratch" in warnings[0]
    assert capfd.readouterr().err == ""  # the library reports through its callbacks only


def test_modality_and_flags_checked(tmp_path: Path, enc: Encoder, spec: DatasetSpec) -> None:
    texts = DatasetSpec(name="t", modality="text", items=["a", "b"], ids=["0", "1"], y=[0, 1], a=[0, 1],
                        group=[0, 3], split=[0, 0], class_names=["c0", "c1"], group_names=list("abcd"))
    with pytest.raises(UserError, match="encodes images.*texts"):
        extract(texts, enc, tmp_path / "t.h5")
    with pytest.raises(UserError, match="does not exist"):
        extract(spec, enc, tmp_path / "missing" / "f.h5")
    with pytest.raises(UserError, match="is a folder"):
        extract(spec, enc, tmp_path)
    with pytest.raises(UserError, match="`dtype`"):
        extract(spec, enc, tmp_path / "f.h5", dtype="int8")
    with pytest.raises(UserError, match="`batch_size` 0"):
        extract(spec, enc, tmp_path / "f.h5", batch_size=0)
    with pytest.raises(UserError, match="`workers` -1"):
        extract(spec, enc, tmp_path / "f.h5", workers=-1)
    for bad in ("3", "4/4", "a/b", "-1/2", "1/0"):
        with pytest.raises(UserError, match="`shard`"):
            parse_shard(bad)


def test_text_pairs_tokenised_in_workers(tmp_path: Path) -> None:
    minilm = load_encoder("minilm", device="cpu")
    pairs = [(f"Premise number {i} talks about cats.", "Nobody talks." if i % 3 else "It talks.")
             for i in range(30)]
    spec = DatasetSpec(name="nli", modality="text", items=pairs, ids=[f"p{i}" for i in range(30)],
                       y=np.arange(30) % 3, a=(np.arange(30) % 3 > 0).astype(int), group=np.arange(30) % 6,
                       split=np.arange(30) % 3, class_names=["c", "e", "n"], group_names=list("abcdef"))
    extract(spec, minilm, tmp_path / "w0.h5", batch_size=8, workers=0)
    extract(spec, minilm, tmp_path / "w2.h5", batch_size=8, workers=2)
    a, b = read_features(tmp_path / "w0.h5"), read_features(tmp_path / "w2.h5")
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.shape == (30, 384) and a.attrs["modality"] == "text"
    direct = minilm.encode_items(pairs[:8]).numpy()
    np.testing.assert_array_equal(a.features[:8], direct)


def test_shards_partition_batches() -> None:
    for n_rows in (0, 1, 7, 40, 41):
        for bs in (1, 4, 16):
            full = batch_bounds(n_rows, bs)
            for count in (1, 2, 3, 8):
                parts = [batch_bounds(n_rows, bs, (i, count)) for i in range(count)]
                assert [b for p in parts for b in p] == full  # disjoint, ordered, covering
    assert shard_output_path(Path("x/f.h5"), (2, 8)) == Path("x/f.shard2of8.h5")
    assert shard_output_path(Path("f.h5"), None) == Path("f.h5")


# --------------------------------------------------------------------------- kill and resume


def conv_encoder(delay: float = 0.0) -> Encoder:
    """A small real convnet (fixed seed) that imports nothing heavy: quick to start in a subprocess."""
    from torch import nn
    from torchvision import transforms as T

    from features.encoders import ImagePrepare, describe_transform, stack_images

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    transform = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])

    def forward(x: torch.Tensor) -> torch.Tensor:
        if delay:  # slows the run down so that a test can kill it midway
            time.sleep(delay)
        return net(x)

    return Encoder(name="test:conv", weights="torch seed 0", weights_path="",
                   preprocess=describe_transform(transform), modality="image", dim=8, module=net,
                   forward=forward, device=torch.device("cpu"), prepare=ImagePrepare(transform),
                   collate=stack_images)


# One torch thread, as for the in-process reference (fixture one_torch_thread).
_KILL_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from features.datasets import load_dataset
from features.extract import extract
from tests.test_extract import conv_encoder
out, delay = sys.argv[1], float(sys.argv[2])
res = extract(load_dataset("demo"), conv_encoder(delay), out, batch_size=32, workers=1,
              commit_seconds=0)
print(res.status, res.resumed_from, flush=True)
"""


def _run_script(out: Path, delay: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out), str(delay)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows_written(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as h5:
            return int(h5.attrs.get("rows_written", 0))
    except (OSError, KeyError, ValueError):
        return 0  # not created yet, or caught mid-write: look again


@pytest.mark.slow
def test_sigkill_then_rerun_is_bit_identical(tmp_path: Path) -> None:
    from features.datasets import load_dataset

    out = tmp_path / "killed.h5"
    proc = _run_script(out, delay=0.05)
    killed_at = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        killed_at = _rows_written(partial_path(out))
        if killed_at >= 320:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert partial_path(out).exists() and not out.exists()
    assert 320 <= killed_at < 1797

    resumed = _run_script(out, delay=0.0)
    ref = tmp_path / "ref.h5"
    extract(load_dataset("demo"), conv_encoder(), ref, batch_size=32, workers=1)
    res_out, res_err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, res_err
    status, resumed_from = res_out.split()
    assert status == "resumed" and int(resumed_from) >= killed_at
    a, b = read_features(ref), read_features(out)
    assert a.features.shape == (1797, 8)
    np.testing.assert_array_equal(a.features, b.features)
    assert list(a.ids) == list(b.ids)
    np.testing.assert_array_equal(a.group, b.group)


# --------------------------------------------------------------------------- the command line


def _main(*args: str | Path) -> int:
    from cli.main import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0)


def test_cli_extract_info_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = make_tiny_clip(tmp_path / "clip")
    out = tmp_path / "demo.h5"
    args = ["extract", "demo", "--encoder", "open_clip:tiny", "--weights", f"local-dir:{clip}",
            "--batch-size", "64"]
    assert _main(*args, "--out", out, "--quiet") == 0
    fs = read_features(out)
    assert fs.features.shape == (1797, 16) and fs.attrs["dataset"] == "demo"
    assert _main("info", out) == 0
    info = capsys.readouterr().out
    for text in ("complete", "open_clip:tiny", "small/green", "large/blue", "1797", "Resize(size=32"):
        assert text in info, (text, info)
    assert _main(*args, "--out", out) == 0
    assert "already complete" in capsys.readouterr().err
    assert _main("extract", "waterbirds", "--out", out, "--shard", "2/2") == 2
    assert "--shard" in capsys.readouterr().err
    # As a user runs it: a fresh interpreter, one line on stderr, exit code 2.
    res = run_cli(*args, "--out", tmp_path / "nope" / "f.h5")
    assert res.code == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "nope" in res.stderr and "does not exist" in res.stderr


def test_out_a_symbolic_link_stays_and_the_file_it_names_is_written(tmp_path: Path, enc: Encoder,
                                                                     spec: DatasetSpec) -> None:
    from base.outputs import link_target

    target = tmp_path / "store" / "f.h5"
    target.parent.mkdir()
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    for overwrite in (False, True):  # written, then replaced
        assert extract(spec, enc, link, batch_size=8, workers=0, overwrite=overwrite).status == "written"
        assert link.is_symlink() and link.resolve() == target.resolve() and target.is_file()
        assert read_features(link).features.shape == (len(spec), enc.dim)
        assert not partial_path(link).exists() and not partial_path(target).exists()
    # /dev/stdout is a link too, to whatever the shell opened: kept as it is, to be refused as a descriptor
    assert link_target("/dev/stdout") == Path("/dev/stdout")
