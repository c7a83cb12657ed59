"""What every encoder family builds on: the :class:`Encoder`, its prepare/collate pieces, identities.

An :class:`Encoder` is split the way a DataLoader wants it: ``prepare`` (decode and
transform one item, to uint8 for images) and ``collate`` (stack or tokenise a batch)
are small picklable objects that run in worker processes; ``encode`` finishes the
preprocessing on the device (scale, normalise) and runs the model in the main
process. Everything that determines the numbers is described in ``name``,
``weights`` and ``preprocess``, which extraction stores in the feature file.

Importing this module does not import torch (``probe --help`` reads the encoder
declarations and must answer at once): torch is imported where it is used.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

# What an encoder can encode: also the towers of a two-tower model.
MODALITIES = ("image", "text")
# Rows per forward pass unless a family declares its own: modality -> device type -> rows.
# On CPU small image batches are faster (they stay in cache).
BATCH_SIZES: Mapping[str, Mapping[str, int]] = {
    "image": {"cuda": 256, "cpu": 16},
    "text": {"cuda": 256, "cpu": 64},
}
# Hash weight files up to this size: a few seconds at most; bigger ones are named by size.
HASH_LIMIT_BYTES = 4 << 30


@dataclass(frozen=True)
class BadItem:
    """An item that could not be read: the row is reported (or skipped with ``skip_bad``)."""

    what: str
    reason: str


def _describe_item(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, dict) and item.get("path"):
        return str(item["path"])
    return type(item).__name__


def _encoded_image(item: Any) -> Any:
    """An encoded image's bytes as a file object, or the path it names (Hugging Face's
    Image feature stores ``{"bytes": ..., "path": ...}``, with bytes or a path)."""
    if isinstance(item, dict):
        item = item.get("bytes") or item.get("path")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return io.BytesIO(item)
    return item
# One-channel modes whose values are not 8-bit, and the value each one's white is.
# PIL's convert("RGB") clips them at 255 (a 16-bit PNG comes out all white); they
# are scaled instead. "I" (32-bit integers) is what 16-bit PNGs and PGMs open as in
# some Pillow versions; "F" (floats) is taken as 0..1, the usual float-image convention.
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def to_rgb(img: Any) -> Any:
    """A PIL image of any mode -> 8-bit RGB as a viewer shows it (wide values scaled, not clipped).

    ValueError for an image whose values cannot be mapped to 8 bits without guessing
    (a float image outside 0..1, integers outside 0..65535) or a mode PIL cannot convert.
    """
    if img.mode == "RGB":
        return img
    if img.mode not in WIDE_MODES:
        return img.convert("RGB")
    import numpy as np
    from PIL import Image

    arr = np.asarray(img)
    white = WIDE_MODES[img.mode]
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo and hi <= white):
        raise ValueError(f"mode {img.mode} image with values {lo}..{hi}, outside 0..{white}: its range is "
                         "unknown; save it as an 8-bit image")
    gray = np.rint(arr.astype(np.float64) * (255.0 / white)).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def load_image(item: Any) -> Any:
    """A path, encoded bytes (or a ``{"bytes", "path"}`` record), a PIL image or an (H, W[, C])
    uint8 array -> RGB PIL image (decoded now, file closed). Bytes decode exactly as the
    same file on disk would."""
    import numpy as np
    from PIL import Image

    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise ValueError(f"array of {item.dtype} with shape {item.shape} is not an 8-bit image")
        return Image.fromarray(item).convert("RGB")
    item = _encoded_image(item)
    if not isinstance(item, (str, os.PathLike, io.BytesIO)):
        raise ValueError(f"{type(item).__name__} is not an image path, image bytes or a PIL image")
    with Image.open(item) as img:
        img.load()  # decoded now: the image stays usable after the file is closed
    return to_rgb(img)


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
    import torch

    return torch.stack(batch)


class TextPrepare:
    """Check one text item: a string, or a (premise, hypothesis) pair of strings."""

    def __call__(self, item: Any) -> Any:
        if isinstance(item, str):
            return item
        if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
            return (item[0], item[1])
        return BadItem(repr(item)[:80], "not a text or a pair of texts (missing value?)")


def _to_device(batch: Any, device: torch.device) -> Any:
    import torch

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
                 finish: Callable[[Any], Any] | None = None, supports_pairs: bool = False,
                 text_encoder: Callable[[list[str]], torch.Tensor] | None = None,
                 logit_scale: float | None = None) -> None:
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
        # A two-tower model's text side, for zero-shot class prompts (None: the family has none),
        # and the temperature its contrastive training learnt for cosine logits.
        self._text_encoder = text_encoder
        self.logit_scale = logit_scale
        # Mixed precision where it pays and is standard practice (GPUs); exact fp32 on CPU.
        self.precision = "amp-float16" if device.type == "cuda" else "float32"
        # load_encoder replaces these with what the encoder's family declares.
        self.batch_sizes: Mapping[str, int] = BATCH_SIZES[modality]

    @property
    def default_batch_size(self) -> int:
        """Rows per forward pass when the caller names none, for this encoder's device."""
        return self.batch_sizes.get(self.device.type, self.batch_sizes["cpu"])

    def _run(self, forward: Callable[[Any], torch.Tensor], batch: Any) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    out = forward(batch)
            else:
                out = forward(batch)
            return out.float()

    def encode(self, batch: Any) -> torch.Tensor:
        """A collated batch -> (B, dim) float32 features on the encoder's device."""
        import torch

        with torch.inference_mode():
            batch = _to_device(batch, self.device)
            if self._finish is not None:
                batch = self._finish(batch)
            return self._run(self._forward, batch)

    @property
    def has_text_tower(self) -> bool:
        """Whether :meth:`encode_texts` can embed class prompts in this encoder's space."""
        return self._text_encoder is not None

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (n, dim) float32 embeddings from the text tower, in the space of the
        features (the same precision rules as :meth:`encode`)."""
        if self._text_encoder is None:
            raise ValueError(f"{self.name} has no text tower")
        return self._run(self._text_encoder, list(texts))

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


def looks_like_path(text: str) -> bool:
    """Whether a weights or model argument was meant as a file (so "not found" is the right error)."""
    return (os.sep in text or text.startswith((".", "~"))
            or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")))


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
        import torch

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


def image_encoder(*, transform: Any, describe_extra: str = "", **kw: Any) -> Encoder:
    """An image Encoder whose ``transform`` (PIL -> tensor) is split between workers and device."""
    worker_part, finish = split_transform(transform)
    return Encoder(preprocess=kw.pop("preprocess_prefix", "") + "PIL RGB > " + describe_transform(transform)
                   + describe_extra, modality="image", prepare=ImagePrepare(worker_part), collate=stack_images,
                   finish=finish, **kw)


def one_line(exc: BaseException, limit: int) -> str:
    """An exception's message on one line, cut to ``limit`` characters, for a UserError."""
    return " ".join(str(exc).split())[:limit]
