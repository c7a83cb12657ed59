"""``open_clip:<arch>``: either tower of an open_clip model, with explicit weights.

``weights`` is a checkpoint file, ``local-dir:FOLDER`` (a folder holding
``open_clip_config.json`` and the weights, for architectures open_clip does not
know), a pretrained tag (needs internet or a filled cache), or ``none`` for a
reproducible random initialisation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base.errors import UserError, either
from features.encoders.core import (
    MODALITIES,
    Encoder,
    TextPrepare,
    file_identity,
    folder_identity,
    image_encoder,
    looks_like_path,
    one_line,
)
from features.encoders.registry import EncoderOption, check_choice, register

if TYPE_CHECKING:
    import torch

WEIGHTS = EncoderOption(
    "weights", "open_clip weights: a checkpoint file, local-dir:FOLDER (with open_clip_config.json), a "
               "pretrained tag (needs internet or a filled cache) or none (random init).")
TOWER = EncoderOption("tower", "open_clip tower; default: the dataset's modality.",
                      check=check_choice("tower", MODALITIES, either(MODALITIES)))


class ClipTextCollate:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: list[Any]) -> torch.Tensor:
        if texts and isinstance(texts[0], tuple):
            # Checked before extraction starts; kept as a guard for direct use.
            raise UserError("open_clip text towers encode single texts, not sentence pairs; use an hf: encoder")
        return self.tokenizer(list(texts))


def _local_dir(open_clip: Any, arch: str, weights: str) -> tuple[str, str, str, Any]:
    """``local-dir:FOLDER`` -> (model name for open_clip, identity, weights path, embed dim)."""
    folder = Path(weights.split(":", 1)[1]).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise UserError(f"`weights` {weights}: {folder} has no open_clip_config.json; pass the folder "
                        "that holds open_clip_config.json and the weights")
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    known = open_clip.get_model_config(arch)
    if known is not None and known != cfg.get("model_cfg"):
        raise UserError(f"`weights` {weights}: its open_clip_config.json does not describe {arch}; "
                        "name the architecture the folder holds")
    return (f"local-dir:{folder.resolve()}", f"local-dir {folder_identity(folder)}", str(folder.resolve()),
            cfg.get("model_cfg", {}).get("embed_dim"))


def _named_weights(open_clip: Any, arch: str, weights: str) -> tuple[str | None, str, str]:
    """``none``, a checkpoint file or a pretrained tag -> (pretrained for open_clip, identity, weights path)."""
    if weights == "none":
        return None, "none (random initialisation, torch seed 0)", ""
    if Path(weights).expanduser().is_file():
        path = Path(weights).expanduser().resolve()
        return str(path), file_identity(path), str(path)
    if looks_like_path(weights):
        raise UserError(f"`weights` {weights}: no such file; pass an existing checkpoint file")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if weights not in tags:
        raise UserError(f"`weights` {weights}: not a file and not a pretrained tag of {arch} "
                        f"(tags: {', '.join(tags) or 'none'})")
    return weights, f"tag:{weights}", ""


@register("open_clip:", help="open_clip:<arch> (with `weights`)", modalities=MODALITIES,
          options=(WEIGHTS, TOWER), example="open_clip:ViT-B-32 `weights` FILE")
def load(arch: str, *, device: torch.device, weights: str | None, tower: str) -> Encoder:
    import open_clip
    import torch

    if not arch:
        raise UserError("`encoder` open_clip: needs an architecture, e.g. open_clip:ViT-B-32")
    if weights is None:
        raise UserError(
            f"`encoder` open_clip:{arch} needs `weights`: a checkpoint file, local-dir:FOLDER, a pretrained "
            "tag (needs internet or a filled cache), or none for random initialisation"
        )
    pretrained = None
    if weights.startswith("local-dir:"):
        model_name, identity, weights_path, embed_dim = _local_dir(open_clip, arch, weights)
    else:
        if arch not in open_clip.list_models():
            raise UserError(f"`encoder` open_clip:{arch}: unknown architecture; see open_clip.list_models() "
                            "(or pass `weights` local-dir:FOLDER with its own config)")
        model_name, embed_dim = arch, open_clip.get_model_config(arch).get("embed_dim")
        pretrained, identity, weights_path = _named_weights(open_clip, arch, weights)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random initialisation (weights none) must be reproducible
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device)
    except (RuntimeError, OSError, ValueError) as exc:
        if pretrained is not None and identity.startswith("tag:"):
            raise UserError(
                f"`weights` {weights}: the pretrained tag could not be loaded (offline?); download the "
                f"checkpoint on a connected machine and pass its local file: `weights` /path/to/{arch}.bin"
            ) from exc
        raise UserError(f"`encoder` open_clip:{arch} `weights` {weights}: cannot load ({one_line(exc, 160)})") from exc
    model.eval()
    if embed_dim is None:
        embed_dim = int(getattr(model.visual, "output_dim", 0))
    name = f"open_clip:{arch}"
    tokenizer = open_clip.get_tokenizer(model_name)
    # Either tower can score class prompts: both embed into the one joint space.
    two_tower = {"text_encoder": PromptEncoder(model, tokenizer, device), "logit_scale": _logit_scale(model)}
    if tower == "image":
        return image_encoder(
            name=name, weights=identity, weights_path=weights_path, transform=preprocess,
            preprocess_prefix="image tower: ", dim=int(embed_dim), module=model, forward=model.encode_image,
            device=device, **two_tower)
    ctx = getattr(tokenizer, "context_length", "?")
    return Encoder(
        name=name, weights=identity, weights_path=weights_path,
        preprocess=f"text tower: open_clip {type(tokenizer).__name__}, context_length={ctx}",
        modality="text", dim=int(embed_dim), module=model, forward=model.encode_text, device=device,
        prepare=TextPrepare(), collate=ClipTextCollate(tokenizer), **two_tower)


class PromptEncoder:
    """Class prompts -> open_clip text embeddings (unnormalised, as ``encode_text`` gives them)."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def _logit_scale(model: Any) -> float | None:
    """exp(logit_scale), the temperature CLIP's zero-shot logits use; read on the CPU so that
    shards extracted on different devices record the same number."""
    scale = getattr(model, "logit_scale", None)
    return None if scale is None else float(scale.detach().float().cpu().exp())
