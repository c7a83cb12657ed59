"""`timm:<model name>`: a timm model saved to a file extracts to exactly what timm computes.

A tiny timm architecture (``test_vit``, 0.4 M parameters) with random weights stands in
for a downloaded checkpoint; "calling timm directly" is timm's own recipe, written out
here: ``resolve_data_config`` + ``create_transform`` on the PIL images, then
``forward_head(forward_features(x), pre_logits=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from base.errors import UserError
from features.encoders import load_encoder
from features.extract import extract
from features.store import read_features
from tests.test_extract import image_spec

ARCH = "test_vit"
NAME = f"{ARCH}.r160_in1k"


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same random test_vit as a .safetensors file, a .pth checkpoint and a Hugging Face folder."""
    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = timm.create_model(NAME, pretrained=False).eval()
    save_file(model.state_dict(), folder / "vit.safetensors")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, folder / "vit.pth")  # a training checkpoint
    timm.models.save_for_hf(model, folder / "hf", safe_serialization=True)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_file(backbone, folder / "backbone.safetensors")  # saved without its classifier
    return {"model": model, "folder": folder}


def by_timm(model: torch.nn.Module, items: list[str]) -> torch.Tensor:
    import timm.data
    from PIL import Image

    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in items])
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def test_extracted_features_are_timms_own(tmp_path: Path, saved: dict) -> None:
    spec = image_spec(tmp_path / "images", n=12)
    weights = saved["folder"] / "vit.safetensors"
    enc = load_encoder(f"timm:{NAME}", weights=str(weights), device="cpu")
    extract(spec, enc, tmp_path / "f.h5", batch_size=5, workers=0)
    fs = read_features(tmp_path / "f.h5")
    expected = by_timm(saved["model"], list(spec.items)).numpy()
    assert fs.features.shape == (12, saved["model"].num_features)
    np.testing.assert_array_equal(fs.features, expected)
    assert fs.attrs["encoder"] == f"timm:{NAME}"
    assert fs.attrs["weights"].startswith("vit.safetensors sha256:")
    config = json.loads(fs.attrs["preprocess"].split("timm data config ", 1)[1].split(": PIL", 1)[0])
    assert config == {"input_size": [3, 160, 160], "interpolation": "bicubic", "mean": [0.5] * 3,
                      "std": [0.5] * 3, "crop_pct": 0.95, "crop_mode": "center"}
    assert "CenterCrop(size=(160, 160))" in fs.attrs["preprocess"]
    assert "forward_head(pre_logits=True)" in fs.attrs["preprocess"]


@pytest.mark.parametrize("weights", ["vit.pth", "hf", "backbone.safetensors"])
def test_every_weights_form_gives_the_same_features(tmp_path: Path, saved: dict, weights: str) -> None:
    spec = image_spec(tmp_path / "images", n=3)
    name = ARCH if weights == "hf" else NAME  # a folder's config.json names the preprocessing itself
    enc = load_encoder(f"timm:{name}", weights=str(saved["folder"] / weights), device="cpu")
    torch.testing.assert_close(enc.encode_items(spec.items), by_timm(saved["model"], list(spec.items)),
                               rtol=0, atol=0)
    if weights == "hf":
        assert enc.weights.startswith("local-dir model.safetensors sha256:")


def test_random_initialisation_is_reproducible(tmp_path: Path) -> None:
    spec = image_spec(tmp_path / "images", n=2)
    first = load_encoder(f"timm:{NAME}", weights="none", device="cpu").encode_items(spec.items)
    again = load_encoder(f"timm:{NAME}", weights="none", device="cpu").encode_items(spec.items)
    assert torch.equal(first, again)


@pytest.mark.parametrize(("name", "weights", "match"), [
    ("timm:no_such_net", "none", "unknown timm model"),
    ("timm:test_vitt", "none", "closest: test_vit"),
    (f"timm:{ARCH}.no_such_tag", "none", "not a pretrained tag of test_vit"),
    (f"timm:{NAME}", None, "needs `weights`"),
    (f"timm:{NAME}", "/no/such/file.safetensors", "no such file"),
    ("timm:test_vit2", "vit.safetensors", "does not fit timm:test_vit2"),
    ("timm:test_resnet", "hf", "describes test_vit, not test_resnet"),
])
def test_bad_choices_are_one_line_user_errors(saved: dict, name: str, weights: str | None, match: str) -> None:
    if weights is not None and not weights.startswith(("/", "none")):
        weights = str(saved["folder"] / weights)
    with pytest.raises(UserError, match=match) as info:
        load_encoder(name, weights=weights, device="cpu")
    assert "\n" not in str(info.value)
