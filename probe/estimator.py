"""One linear head as a scikit-learn estimator (:class:`LinearHead`): ``fit``, ``predict``,
``score``, explicit hyperparameters, no hidden state.

Its parameters are read from the registries and the settings: the method, every
method's own hyperparameters, the shared ones, the fit's settings and the options that
methods and preprocessing kinds own (``hessian_method``, ``pca_dim``, ...).
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from base.errors import UserError
from features.store import SPLITS, FeatureSet
from probe import moments
from probe.fitting.dispatch import fit_method
from probe.methods import COMMON, GradientMethod, all_options, all_params, get_method, method_names
from probe.pipeline import check_grid, make_settings
from probe.preprocessing import Preprocessor
from probe.train.settings import Settings, user_settings

#: settings a LinearHead passes on (the fields, then the owned options), with the API's
#: spelling of device and dtype
_SETTINGS = [f.name for f in user_settings()]
_OPTIONS = {name: p.default for name, (_, p) in all_options().items()}
_ESTIMATOR_DEFAULTS = {"device": "auto", "dtype": "float32"}
#: settings whose default differs for one head: it returns no bound terms, so it measures none
_OWN_DEFAULTS = {"bounds": False}


def _estimator_signature() -> inspect.Signature:
    """``LinearHead``'s parameters, read from the registry and the settings: the method,
    every method's own hyperparameters (None: the method's default), the shared ones
    with their defaults, then the settings and the owned options."""
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD), P("method", P.POSITIONAL_OR_KEYWORD, default="erm")]
    own = [n for n in all_params() if n not in COMMON]
    params += [P(n, P.KEYWORD_ONLY, default=None) for n in own]
    params += [P(n, P.KEYWORD_ONLY, default=p.default) for n, p in COMMON.items()]
    defaults = {**{f.name: f.default for f in fields(Settings)}, **_OWN_DEFAULTS}
    params += [P(n, P.KEYWORD_ONLY, default=defaults[n]) for n in _SETTINGS]
    params += [P(n, P.KEYWORD_ONLY, default=v) for n, v in _OPTIONS.items()]
    params += [P(n, P.KEYWORD_ONLY, default=v) for n, v in _ESTIMATOR_DEFAULTS.items()]
    return inspect.Signature(params)


class LinearHead(ClassifierMixin, BaseEstimator):
    """One linear softmax head fitted by one gradient method, scikit-learn style.

    Every hyperparameter is an explicit argument (``get_params``/``set_params``,
    ``sklearn.base.clone`` work): the method's own (``alpha``, ``beta`` for cma;
    ``lam`` for irm, vrex, fishr; ``eta`` for groupdro; None takes the method's
    default), the shared ones (``lr``, ``weight_decay``, ``anneal``, ``seed``,
    ``preprocess``) and the fit's settings (``steps``, ``batch_size``, ...). Fitted
    attributes end in ``_``: ``classes_``, ``coef_`` ((C, d+1) on the preprocessed
    features, bias last), ``preprocessor_`` and ``result_`` (the run's result record).

    >>> head = LinearHead(method="cma", alpha=1e3, beta=1e2).fit(X, y, domains)
    >>> head.predict(X_test)
    """

    def __init__(self, method: str = "erm", **params: Any) -> None:
        sig = type(self).__init__.__signature__  # type: ignore[attr-defined]
        unknown = set(params) - set(sig.parameters)
        if unknown:
            raise TypeError(f"LinearHead got unexpected parameters {sorted(unknown)}")
        self.method = method
        for name, p in list(sig.parameters.items())[2:]:
            setattr(self, name, params.get(name, p.default))

    __init__.__signature__ = _estimator_signature()  # type: ignore[attr-defined]

    def fit(self, X: np.ndarray, y: np.ndarray, domains: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, groups_val: np.ndarray | None = None) -> LinearHead:
        """Fit on ``X`` (N, d) with labels ``y`` and ``domains`` (the penalties' domains,
        also the groups of the metrics). With a validation set (``X_val``, ``y_val``,
        ``groups_val``) the checkpoint with the best validation score is kept, as in
        `probe fit`; without one, the last step's head."""
        cls = get_method(self.method)
        if not issubclass(cls, GradientMethod):
            raise UserError(f"`method` {self.method!r} is not trained by gradient steps; LinearHead fits "
                            f"{', '.join(n for n in method_names() if issubclass(get_method(n), GradientMethod))}")
        fs, has_val = _estimator_features(self, X, y, domains, X_val, y_val, groups_val)
        takes = cls.hyperparameters()
        own = {p: getattr(self, p) for p in all_params() if p not in COMMON and getattr(self, p) is not None}
        unused = set(own) - set(takes)
        if unused:
            raise ValueError(f"method {self.method!r} does not take {', '.join(sorted(unused))}")
        cfg = {n: own.get(n, getattr(self, n, None)) for n in takes}
        cfg = {n: p.default if cfg[n] is None else cfg[n] for n, p in takes.items()}
        check_grid({k: [v] for k, v in cfg.items()})
        given = {n: getattr(self, n) for n in [*_SETTINGS, *_OPTIONS]}
        if not has_val:  # no checkpoint to choose: the last step's head, evaluated nowhere
            given.update(eval_every=self.steps, patience=0, select_checkpoint="last")
        st = make_settings(self.device, self.dtype, **given)
        row = fit_method(fs, cls, cls.configs({k: [v] for k, v in cfg.items()}, st.steps), st)[0]
        self.coef_ = row.theta
        self.preprocessor_ = Preprocessor(cfg["preprocess"], dict(row.pre), **st.options)
        self.result_ = row
        if not has_val:
            row.metrics = {"train": row.metrics["train"], "val": None}
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(N, C) logits."""
        Z = self.preprocessor_.transform(torch.as_tensor(np.asarray(X, np.float32)).to(self.coef_.dtype))
        return moments.logits(self.coef_, Z, self.bias).numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.decision_function(X)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]


def _estimator_features(head: LinearHead, X: Any, y: Any, domains: Any, X_val: Any, y_val: Any,
                        groups_val: Any) -> tuple[FeatureSet, bool]:
    """The arrays as a FeatureSet: train, and val (the given one, or none)."""
    X = np.asarray(X, np.float32)
    head.classes_, y_idx = np.unique(np.asarray(y), return_inverse=True)
    dom = np.asarray(domains).reshape(-1)
    if X.ndim != 2 or len(X) != len(y_idx) or len(dom) != len(y_idx):
        raise ValueError(f"X (N, d), y and domains must have the same N; got {X.shape}, {len(y_idx)}, "
                         f"{len(dom)}")
    has_val = X_val is not None
    if has_val:
        if y_val is None or groups_val is None:
            raise ValueError("X_val needs y_val and groups_val")
        Xv = np.asarray(X_val, np.float32)
        yv = np.searchsorted(head.classes_, np.asarray(y_val))
        if np.any(yv >= len(head.classes_)) or np.any(head.classes_[np.minimum(yv, len(head.classes_) - 1)]
                                                      != np.asarray(y_val)):
            raise ValueError("y_val has labels that y does not have")
        gv = np.asarray(groups_val).reshape(-1)
    else:  # an empty validation split: nothing is scored there, and X is not copied
        Xv, yv, gv = X[:0], y_idx[:0], dom[:0]
    n, nv = len(y_idx), len(yv)
    # groups numbered densely from the values of both, each named by its value: a training
    # domain and a validation group of one value are one group (and an id of 10^12 is one name)
    numeric = all(v.dtype.kind in "biuf" for v in (dom, gv))
    values, group = np.unique(np.concatenate([dom, gv] if numeric else [dom.astype(str), gv.astype(str)]),
                              return_inverse=True)
    fs = FeatureSet(
        features=np.concatenate([X, Xv]) if nv else X, y=np.concatenate([y_idx, yv]).astype(np.int64),
        a=np.full(n + nv, -1, np.int64), group=group.reshape(-1).astype(np.int64),
        split=np.concatenate([np.full(n, SPLITS["train"]), np.full(nv, SPLITS["val"])]).astype(np.int8),
        ids=np.arange(n + nv).astype(str).astype(object), class_names=[str(c) for c in head.classes_],
        group_names=[str(g) for g in values], path="<arrays>")
    return fs, has_val
