"""Zero-shot CLIP (Radford et al. 2021): classify by cosine similarity to the class prompts.

No training: the head is the zero-shot classifier that `probe extract --prompts` stored
in the feature file (``prompt_embeddings``, :mod:`features.prompts`). The logits of a row
x are ``s · cos(x, t_c)`` for each class embedding t_c (unit rows), with s the encoder's
learnt logit scale exp(τ), as CLIP's zero-shot evaluation computes them. As a head file
that is preprocessing ``l2`` and θ = [s·T, 0]: the same linear form as every other
method's head, scored by the same code (``probe.records.metrics.metrics_by_head``), selected and
reported beside them. With nothing to tune, it has one configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from base.errors import UserError
from features.schema import PROMPT_ATTR, PROMPT_DATASET, SPLITS
from probe.methods.base import Method, register
from probe.preprocessing import Preprocessor
from probe.records.metrics import metrics_by_head
from probe.records.results import Result, run_id

if TYPE_CHECKING:
    from features.store import FeatureSet

PREPROCESS = "l2"


def zero_shot_head(fs: FeatureSet) -> Result:
    """The zero-shot head of ``fs``'s stored class prompts, scored on every split."""
    import torch

    cls = ZeroShot
    cls.check_features(fs)
    scale = float(fs.attrs[PROMPT_ATTR]["logit_scale"])
    T = torch.as_tensor(fs.prompt_embeddings, dtype=torch.float32)
    theta = torch.cat([scale * T, torch.zeros(len(T), 1)], dim=1)
    Z = Preprocessor(PREPROCESS).transform(torch.as_tensor(fs.features, dtype=torch.float32))
    pred = (Z @ theta[:, :-1].T + theta[:, -1]).argmax(1)
    metrics = metrics_by_head(fs, {name: pred[torch.as_tensor(fs.split == code)].unsqueeze(0)
                                   for name, code in SPLITS.items()})[0]
    return Result(method=cls.name, hparams={"preprocess": PREPROCESS, "logit_scale": scale}, metrics=metrics,
                  theta=theta, pre={})


@register
class ZeroShot(Method):
    name = "zeroshot"
    display = "Zero-shot CLIP"
    summary = ("zeroshot: zero-shot CLIP, cosine similarity to the class prompts stored by `probe extract "
               "--prompts` times the model's logit scale; no training, one configuration")
    common = ()

    @classmethod
    def check_features(cls, fs, settings=None):
        if fs.prompt_embeddings is None:
            # Literally --prompts: it is `probe extract`'s flag, and only the running command's are translated.
            raise UserError(f"{fs.path}: has no class prompt embeddings ({PROMPT_DATASET}) for `method` zeroshot; "
                            "extract it with an open_clip encoder and --prompts \"a photo of a {}.\"")

    @classmethod
    def fit(cls, fs, configs, settings, results):
        for i, _ in enumerate(configs):
            row = zero_shot_head(fs)
            row.run_id = run_id(cls.name, i)
            results.append(row)
