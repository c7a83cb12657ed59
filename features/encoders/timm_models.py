"""``timm:<model name>``: a timm image backbone with local weights, built offline.

The model is created with ``pretrained=False`` (nothing is downloaded) and its weights
come from ``weights``: a ``.safetensors``/``.pth`` state dict, a folder in the Hugging
Face layout (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, as
timm's ``save_for_hf`` and the Hub's ``timm/`` repositories have it), or ``none``.
A pretrained tag in the name (``vit_base_patch16_clip_384.laion2b_ft_in1k``) selects
that tag's preprocessing; a folder's ``config.json`` overrides it, as timm's own
``local-dir:`` loading does.

Preprocessing is timm's: ``timm.data.resolve_data_config`` on the model, then
``timm.data.create_transform(is_training=False)``. Features are the pooled
pre-logits as timm defines them for every architecture:
``forward_head(forward_features(x), pre_logits=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base.errors import UserError
from features.encoders.core import (
    Encoder,
    file_identity,
    folder_identity,
    image_encoder,
    looks_like_path,
    one_line,
)
from features.encoders.registry import EncoderOption, register

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS = EncoderOption(
    "weights", "timm: a .safetensors or .pth state dict, a folder in the Hugging Face layout (config.json + "
               "model.safetensors), or none (random init).")
# The weight files of timm's Hugging Face layout, in the order timm itself prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _check_name(timm: Any, name: str) -> str:
    """The architecture of ``name`` (``arch`` or ``arch.tag``), refusing names timm does not know."""
    import difflib

    if not name:
        raise UserError("`encoder` timm: needs a model name, e.g. timm:resnet50.a1_in1k")
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise UserError(f"`encoder` timm:{name}: unknown timm model{hint}; see timm.list_models()")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        raise UserError(f"`encoder` timm:{name}: {tag!r} is not a pretrained tag of {arch} "
                        f"(tags: {', '.join(tags[:8]) or 'none'}); the tag chooses the preprocessing")
    return arch


def _folder_weights(folder: Path) -> Path:
    found = next((folder / f for f in HF_WEIGHT_FILES if (folder / f).is_file()), None)
    if not (folder / "config.json").is_file() or found is None:
        raise UserError(f"`weights` {folder}: not a timm model folder; it needs config.json and "
                        f"{' or '.join(HF_WEIGHT_FILES)} (the Hugging Face layout)")
    return found


def _build(timm: Any, name: str, arch: str, weights: str) -> tuple[nn.Module, Path | None, str]:
    """(model with its pretrained_cfg, weight file or None, identity) for ``weights``."""
    import torch

    source = Path(weights).expanduser()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random initialisation (weights none) must be reproducible
            if weights != "none" and source.is_dir():
                path = _folder_weights(source)
                model = timm.create_model(f"local-dir:{source.resolve()}", pretrained=False)
                found = model.pretrained_cfg.get("architecture")
                if found != arch:
                    raise UserError(f"`weights` {weights}: its config.json describes {found}, not {arch}; name "
                                    "the architecture the folder holds")
                return model, path, f"local-dir {folder_identity(source)}"
            model = timm.create_model(name, pretrained=False)
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise UserError(f"`encoder` timm:{name} `weights` {weights}: cannot build it ({one_line(exc, 160)})") from exc
    if weights == "none":
        return model, None, "none (random initialisation, torch seed 0)"
    if not source.is_file():
        what = "no such file" if looks_like_path(weights) or not source.exists() else "not a file"
        raise UserError(f"`weights` {weights}: {what}; pass a .safetensors/.pth state dict, a folder in the "
                        "Hugging Face layout, or none")
    return model, source.resolve(), file_identity(source.resolve())


def _load_weights(timm: Any, model: nn.Module, path: Path, name: str) -> None:
    """Load a state dict strictly, after fitting the classifier to the one it carries (a
    backbone saved without its head, or fine-tuned to other classes, keeps its features)."""
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever torch/safetensors raise, the file is not a state dict
        raise UserError(f"`weights` {path}: not a readable state dict ({one_line(exc, 120)})") from exc
    classifier = model.pretrained_cfg.get("classifier")
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    if classifier and hasattr(model, "reset_classifier"):
        head = state.get(f"{classifier}.weight")
        classes = int(head.shape[0]) if head is not None and head.ndim >= 1 else 0
        if classes != getattr(model, "num_classes", classes):
            model.reset_classifier(classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"`weights` {path}: does not fit timm:{name} ({_mismatch(exc)}); pass the weights of "
                        "this architecture") from exc


def _mismatch(exc: RuntimeError) -> str:
    """The first lines of torch's load_state_dict complaint, on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
    return " ".join(" ".join(lines[:2]).split())[:200] or one_line(exc, 200)


@register("timm:", help="timm:<model name> (with `weights`)", modalities=("image",), options=(WEIGHTS,),
          example="timm:vit_base_patch16_clip_384.laion2b_ft_in1k `weights` FILE")
def load(name: str, *, device: torch.device, weights: str | None) -> Encoder:
    import timm
    import timm.data

    arch = _check_name(timm, name)
    if weights is None:
        raise UserError(f"`encoder` timm:{name} needs `weights`: a .safetensors/.pth state dict, a folder in the "
                        "Hugging Face layout (config.json + model.safetensors), or none for random initialisation")
    model, path, identity = _build(timm, name, arch, weights)
    if path is not None:
        _load_weights(timm, model, path, name)
    model = model.eval().to(device)
    config = timm.data.resolve_data_config(model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(x), pre_logits=True)

    shown = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()})
    return image_encoder(
        name=f"timm:{name}", weights=identity, weights_path=str(path or ""), transform=transform,
        preprocess_prefix=f"timm data config {shown}: ",
        describe_extra=f" > forward_features + forward_head(pre_logits=True) ({dim}-d)",
        dim=dim, module=model, forward=forward, device=device)
