"""Zero-shot CLIP rows: class prompts embedded at extraction, a head that is their cosine
similarity, scored, selected and reported beside the trained methods.

A tiny open_clip model (random weights in a local folder) stands in for CLIP; the
expectations are computed by hand here from open_clip's own model and tokenizer.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from base.errors import UserError
from features.extract import extract, shard_output_path
from features.merge import merge
from features.prompts import read_templates
from features.store import read_features
from probe.api import fit_grid
from tests.h5craft import write_feature_file
from tests.test_extract import TINY_CLIP, image_spec, make_tiny_clip, tiny_encoder

TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}."]
NAMES = ["cat", "dog"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def by_hand(folder: Path, names: list[str], templates: list[str]) -> tuple[torch.Tensor, float]:
    """CLIP's zero-shot classifier, from open_clip directly: (classes, dim) unit rows, logit scale."""
    import open_clip
    from open_clip.model import CLIP

    model = CLIP(**TINY_CLIP)
    model.load_state_dict(torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True))
    model.eval()
    texts = [t.format(c) for c in names for t in templates]
    with torch.inference_mode():
        emb = model.encode_text(open_clip.tokenize(texts, context_length=TINY_CLIP["text_cfg"]["context_length"]))
    emb = emb / emb.norm(dim=-1, keepdim=True)
    rows = emb.view(len(names), len(templates), -1).mean(1)
    return rows / rows.norm(dim=-1, keepdim=True), float(model.logit_scale.detach().exp())


@pytest.fixture
def zs_file(tmp_path: Path) -> Path:
    enc = tiny_encoder(tmp_path)
    out = tmp_path / "zs.h5"
    extract(image_spec(tmp_path / "images"), enc, out, batch_size=8, workers=0, prompts=TEMPLATES,
            class_names=",".join(NAMES))
    return out


def test_prompt_embeddings_are_clips_zero_shot_classifier(tmp_path: Path, zs_file: Path) -> None:
    fs = read_features(zs_file)
    rows, scale = by_hand(tmp_path / "tiny_clip_0", NAMES, TEMPLATES)
    np.testing.assert_allclose(fs.prompt_embeddings, rows.numpy(), rtol=0, atol=1e-6)
    meta = fs.attrs["prompts"]
    assert meta["templates"] == TEMPLATES and meta["class_names"] == NAMES
    assert meta["logit_scale"] == pytest.approx(scale, rel=1e-6)
    assert fs.class_names == ["c0", "c1"]  # the file's classes keep their names
    assert fs.provenance()["prompts"] == meta


def test_zero_shot_head_predicts_the_cosine_argmax_and_is_reported(tmp_path: Path, zs_file: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    from cli.main import main

    fs = read_features(zs_file)
    rows, scale = by_hand(tmp_path / "tiny_clip_0", NAMES, TEMPLATES)
    x = torch.as_tensor(fs.features)
    cosine = (x / x.norm(dim=1, keepdim=True)) @ rows.T
    pred = cosine.argmax(1).numpy()
    run = tmp_path / "run"
    res = fit_grid(fs, ["erm", "zeroshot"], {"seed": [0, 1]}, run, steps=30, batch_size=0, device="cpu")
    (row,) = res["rows"]["zeroshot"]
    assert row.status == "ok" and row.hparams["logit_scale"] == pytest.approx(scale, rel=1e-6)
    for name, code in (("train", 0), ("val", 1), ("test", 2)):
        sel = fs.split == code
        assert row.metrics[name]["acc"] == pytest.approx(float((pred[sel] == fs.y[sel]).mean()), abs=1e-12)
        for g, gname in enumerate(fs.group_names):
            in_g = sel & (fs.group == g)
            assert row.metrics[name]["per_group"][gname]["acc"] == pytest.approx(
                float((pred[in_g] == fs.y[in_g]).mean()), abs=1e-12)
    # The saved head is the same classifier: l2 rows, then s * T.
    head = load_file(run / "heads" / "zeroshot.safetensors")
    logits = (x / x.norm(dim=1, keepdim=True)) @ head["theta"][:, :-1].T + head["theta"][:, -1]
    torch.testing.assert_close(logits, scale * cosine, rtol=1e-5, atol=1e-5)
    assert res["summary"].methods["zeroshot"].selected.run_ids == ["zeroshot-0000"]

    with pytest.raises(SystemExit) as info:
        main(["report", str(run), "--format", "csv"])
    assert info.value.code == 0
    table = {r["method"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert set(table) == {"erm", "zeroshot"}  # one comparison table, side by side
    assert float(table["zeroshot"]["test_wga_mean"]) == pytest.approx(row.metrics["test"]["wga"])
    assert float(table["zeroshot"]["test_acc_mean"]) == pytest.approx(row.metrics["test"]["acc"])


def test_a_file_without_prompts_names_the_flag(tmp_path: Path) -> None:
    path = write_feature_file(tmp_path / "plain.h5")
    assert read_features(path).prompt_embeddings is None  # files without prompts read as before
    with pytest.raises(UserError, match=r'--prompts "a photo of a \{\}\."') as info:
        fit_grid(path, ["erm", "zeroshot"], out=tmp_path / "run", steps=5)
    assert "`method` zeroshot" in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything was fitted or written


def test_templates_from_a_file_and_bad_templates(tmp_path: Path) -> None:
    path = tmp_path / "templates.txt"
    path.write_text("# CLIP's ImageNet templates, a few\na photo of a {}.\n\nitap of a {}.\n")
    assert read_templates([str(path), "a {} in the wild."]) == ["a photo of a {}.", "itap of a {}.",
                                                                 "a {} in the wild."]
    with pytest.raises(UserError, match="`prompts` 'a photo of a': a template needs {}"):
        read_templates(["a photo of a"])
    path.write_text("a photo\n")
    with pytest.raises(UserError, match="line 1 .* has no {}"):
        read_templates([str(path)])


def test_prompts_need_a_text_tower_and_one_name_per_class(tmp_path: Path) -> None:
    from features.encoders import Encoder, TextPrepare

    spec = image_spec(tmp_path / "images", n=6)
    enc = tiny_encoder(tmp_path)
    with pytest.raises(UserError, match="`class_names`: give 2 non-empty names"):
        extract(spec, enc, tmp_path / "a.h5", prompts=TEMPLATES, class_names="cat,dog,bird")
    with pytest.raises(UserError, match="give `prompts` too"):
        extract(spec, enc, tmp_path / "a.h5", class_names="cat,dog")
    image_only = Encoder(name="toy", weights="none", weights_path="", preprocess="", modality="image", dim=16,
                         module=torch.nn.Identity(), forward=lambda b: b, device=torch.device("cpu"),
                         prepare=TextPrepare(), collate=list)
    with pytest.raises(UserError, match="has no text tower"):
        extract(spec, image_only, tmp_path / "a.h5", prompts=TEMPLATES)


def test_prompts_are_part_of_the_file_identity_and_survive_a_merge(tmp_path: Path) -> None:
    spec = image_spec(tmp_path / "images", n=24)
    enc = tiny_encoder(tmp_path)
    whole = tmp_path / "whole.h5"
    extract(spec, enc, whole, batch_size=4, workers=0, prompts=TEMPLATES)
    with pytest.raises(UserError, match="different prompts"):
        extract(spec, enc, whole, batch_size=4, workers=0, prompts=TEMPLATES[:1])
    with pytest.raises(UserError, match="different prompts"):
        extract(spec, enc, whole, batch_size=4, workers=0)
    parts = [extract(spec, enc, shard_output_path(tmp_path / "part.h5", (i, 2)), batch_size=4, workers=0,
                     shard=(i, 2), prompts=TEMPLATES).path for i in range(2)]
    merge(tmp_path / "merged.h5", parts)
    a, b = read_features(whole), read_features(tmp_path / "merged.h5")
    np.testing.assert_array_equal(a.prompt_embeddings, b.prompt_embeddings)
    assert a.attrs["prompts"] == b.attrs["prompts"]
    np.testing.assert_array_equal(a.features, b.features)


def test_a_damaged_prompt_matrix_is_refused(tmp_path: Path, zs_file: Path) -> None:
    with h5py.File(zs_file, "r+") as h5:
        del h5["prompt_embeddings"]
        h5.create_dataset("prompt_embeddings", data=np.zeros((3, TINY_CLIP["embed_dim"]), np.float32))
        h5.attrs["prompts"] = json.dumps({"templates": TEMPLATES})
    with pytest.raises(UserError, match="prompt_embeddings has shape"):
        read_features(zs_file)


def test_random_clip_folder_helper_is_deterministic(tmp_path: Path) -> None:
    # Guards by_hand: the folder make_tiny_clip writes is what the encoder loads.
    a = make_tiny_clip(tmp_path / "a")
    b = make_tiny_clip(tmp_path / "b")
    sa = torch.load(a / "open_clip_pytorch_model.bin", weights_only=True)
    sb = torch.load(b / "open_clip_pytorch_model.bin", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
