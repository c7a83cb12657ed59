"""Zero-shot class prompts: templates filled with class names, embedded by a two-tower encoder.

Each class's embedding is CLIP's zero-shot classifier weight (Radford et al. 2021, the
``zeroshot_classifier`` of their ImageNet notebook, as CLIP_benchmark computes it): the
text embedding of every template filled with the class name, each L2-normalised, averaged
over templates and L2-normalised again. A template holds ``{}`` where the class name goes
(``"a photo of a {}."``); a ``prompts`` value without one is read as a file of templates,
one per line (blank lines and lines starting with ``#`` are skipped).

The feature file stores the (classes, dim) matrix as ``prompt_embeddings`` and the
templates, the class names and the encoder's logit scale in its ``prompts`` attribute
(:mod:`features.schema`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from base.errors import UserError
from features.encoders.core import Encoder

PLACEHOLDER = "{}"
COMBINE = ("mean over templates of the L2-normalised text embeddings, L2-normalised again "
           "(CLIP's zero-shot classifier)")
# Prompts per text-tower forward pass: the 80 ImageNet templates x a few classes in a handful.
PROMPT_BATCH = 256


def _template_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"`prompts` {path}: cannot read the template file ({exc})") from exc
    out = []
    for n, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if PLACEHOLDER not in text:
            raise UserError(f"`prompts` {path}: line {n} ({text[:60]!r}) has no {{}} where the class name goes")
        out.append(text)
    if not out:
        raise UserError(f"`prompts` {path}: the template file holds no templates (one per line, each with {{}})")
    return out


def read_templates(values: Sequence[str]) -> list[str]:
    """The templates ``values`` give: each a template with ``{}``, or a file of templates."""
    out: list[str] = []
    for value in values:
        if PLACEHOLDER in value:
            out.append(value)
        elif Path(value).expanduser().is_file():
            out.extend(_template_file(Path(value).expanduser()))
        else:
            raise UserError(f"`prompts` {value!r}: a template needs {{}} where the class name goes (e.g. "
                            "\"a photo of a {}.\"), or give a file of templates, one per line")
    if not out:
        raise UserError("`prompts`: no templates given; e.g. `prompts` \"a photo of a {}.\"")
    return list(dict.fromkeys(out))


def prompt_class_names(classes: Sequence[str], given: Sequence[str] | str | None) -> list[str]:
    """The names filled into the templates: ``given`` (a list or a comma list, one per class in
    class order), else the dataset's class names."""
    if given is None:
        return list(classes)
    names = [n.strip() for n in given.split(",")] if isinstance(given, str) else [str(n).strip() for n in given]
    if len(names) != len(classes) or not all(names):
        raise UserError(f"`class_names`: give {len(classes)} non-empty names, one per class in the order "
                        f"{', '.join(map(repr, classes))}; got {len(names)}")
    return names


@dataclass
class ClassPrompts:
    """The zero-shot classifier of one extraction: what the file's ``prompts`` attribute records
    and the ``prompt_embeddings`` matrix."""

    templates: list[str]
    class_names: list[str]
    logit_scale: float
    embeddings: np.ndarray  # (classes, dim) float32, unit rows

    def attribute(self) -> dict[str, Any]:
        return {"templates": self.templates, "class_names": self.class_names, "logit_scale": self.logit_scale,
                "embedding": COMBINE}


def class_prompts(encoder: Encoder, classes: Sequence[str], prompts: Sequence[str],
                  class_names: Sequence[str] | str | None = None) -> ClassPrompts:
    """Embed every class's prompts with ``encoder``'s text tower (module docstring)."""
    import torch

    templates = read_templates(prompts)
    names = prompt_class_names(classes, class_names)
    if not encoder.has_text_tower or encoder.logit_scale is None:
        raise UserError(f"`prompts`: `encoder` {encoder.name} has no text tower to embed class prompts; "
                        "zero-shot rows need a two-tower encoder such as open_clip:<arch>")
    texts = [t.replace(PLACEHOLDER, name) for name in names for t in templates]
    emb = torch.cat([encoder.encode_texts(texts[i:i + PROMPT_BATCH]).cpu()
                     for i in range(0, len(texts), PROMPT_BATCH)])
    if emb.shape[1] != encoder.dim:
        raise UserError(f"`prompts`: `encoder` {encoder.name} embeds texts in {emb.shape[1]} dimensions and "
                        f"its features in {encoder.dim}; zero-shot needs one joint space")
    emb = torch.nn.functional.normalize(emb, dim=-1).view(len(names), len(templates), -1).mean(1)
    emb = torch.nn.functional.normalize(emb, dim=-1)
    return ClassPrompts(templates, names, float(encoder.logit_scale), emb.numpy().astype(np.float32))
