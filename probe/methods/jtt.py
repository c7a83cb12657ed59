"""JTT, Just Train Twice (Liu et al., ICML 2021), on the head, with no group label read (as SpuCo's
``jtt_inference`` applies it to a last layer):

* stage 1: an ERM head stopped early identifies the error set: ``first_steps`` steps of
  full-batch gradient descent at step size 1/L from zero (``probe.train.gd``: a step
  count that means the same whatever the features' scale), every row weighted equally;
  the error set is the training rows it misclassifies;
* stage 2: ERM again with the error set up-weighted ``upweight`` times (λ_up; JTT
  upsamples, which weights the rows the same in expectation), solved to its optimum by
  the full-batch solver at the configuration's weight decay.

Default grid: λ_up ∈ {20, 50, 100} (the paper's values across its datasets; SpuCo's
{50, 100}), stage 1 at 50 steps.
"""

from __future__ import annotations

from base.lazy import lazy_import
from probe.methods.base import register
from probe.methods.retrain import Retrained, solve
from probe.records.grid import Param

torch = lazy_import("torch")


def error_set(X: torch.Tensor, y: torch.Tensor, steps: int, num_classes: int, bias: bool = True) -> torch.Tensor:
    """(n,) bool, on X's device: the rows an ERM head (with a bias column, or without) after
    ``steps`` full-batch steps from zero misclassifies."""
    from probe.moments.basics import logits
    from probe.train.gd import descend

    w = torch.full((1, len(y)), 1.0 / len(y), dtype=torch.float64, device=X.device)
    head = descend(X, y, w, steps, num_classes=num_classes, bias=bias)[0]
    return logits(head, X.to(torch.float64), bias).argmax(1) != y.to(X.device)


@register
class JTT(Retrained):
    name = "jtt"
    display = "JTT"
    summary = ("jtt: Just Train Twice, the rows an early-stopped ERM head gets wrong up-weighted (upweight) in a "
               "second ERM fit; no group labels")
    params = (
        Param("upweight", "jtt: the error set's weight λ_up in the second fit.", default=50.0, grid=(20.0, 50.0, 100.0),
              search=("log", 5.0, 100.0), minimum=1.0, symbol="λ_up"),
        Param("first_steps", "jtt: full-batch gradient steps (at step size 1/L) of the early-stopped first head.",
              kind=int, default=50, minimum=1),
    )

    @classmethod
    def fit_cohort(cls, fs, splits, configs, seed, settings):
        tr = splits["train"]
        X, y = tr.X().to(torch.float64), tr.y
        errors = {T: error_set(X, y, T, fs.num_classes, settings.bias)
                  for T in sorted({int(c["first_steps"]) for c in configs})}
        out = torch.empty(len(configs), fs.num_classes, X.shape[1] + int(settings.bias), dtype=torch.float64,
                          device=X.device)
        status = [""] * len(configs)
        problems: dict[tuple, list[int]] = {}  # configurations with the same row weights share one solve
        for i, c in enumerate(configs):
            problems.setdefault((int(c["first_steps"]), float(c["upweight"])), []).append(i)
        for (T, up), idx in problems.items():
            w = torch.where(errors[T], up, 1.0).to(torch.float64)
            sol = solve(X, y, w, [configs[i]["weight_decay"] for i in idx], fs.num_classes, settings)
            out[idx] = sol.theta
            for i, verdict in zip(idx, sol.status, strict=True):
                status[i] = verdict
        tuned = [{"error_set": int(errors[int(c["first_steps"])].sum()), "train_rows": len(y)} for c in configs]
        return out, tuned, status
