"""ERM head vs scikit-learn LogisticRegression at the same L2 strength (issue 4).

    python -m benchmarks.erm_vs_sklearn [FEATURES.h5]   # default demo_out/demo.h5 (make demo)

Same standardized features, same penalty: probe's weight decay λ on a 2-row
softmax head equals sklearn's binary C = 2/(λ N_train) (C = 1/(λ N) for more classes).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks._common import write_results
from features.store import read_features
from probe.api import fit_grid


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    path = sys.argv[1] if len(sys.argv) > 1 else "demo_out/demo.h5"
    fs = read_features(path)
    tr, te = fs.split == 0, fs.split == 2
    Z = (fs.features - fs.features[tr].mean(0)) / fs.features[tr].std(0, ddof=1).clip(1e-6)
    rows = []
    for wd in (1e-2, 1e-3):
        scale = 2.0 if fs.num_classes == 2 else 1.0
        t0 = time.perf_counter()
        sk = LogisticRegression(C=scale / (wd * tr.sum()), max_iter=10000, tol=1e-10).fit(Z[tr], fs.y[tr])
        sk_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = fit_grid(fs, ["erm"], {"weight_decay": [wd], "lr": [1e-2]}, None, steps=3000, batch_size=0,
                       eval_every=3000)
        probe_s = time.perf_counter() - t0
        row = res["rows"]["erm"][0]
        sk_acc = float((sk.predict(Z[te]) == fs.y[te]).mean())
        ours = row.metrics["test"]["acc"]
        rows.append({"weight_decay": wd, "sklearn_test_acc": sk_acc, "probe_test_acc": ours,
                     "diff_points": 100 * abs(ours - sk_acc), "sklearn_s": sk_s, "probe_s": probe_s,
                     "target": "<= 0.5 points", "met": 100 * abs(ours - sk_acc) <= 0.5})
        print(rows[-1])
    write_results("erm_vs_sklearn", rows, ["weight_decay", "sklearn_test_acc", "probe_test_acc", "diff_points",
                                           "sklearn_s", "probe_s", "target", "met"],
                  extra={"command": f"python -m benchmarks.erm_vs_sklearn {path}", "features": path,
                         "model": "full batch, 3000 Adam steps, lr 1e-2, last checkpoint"},
                  title="ERM head vs scikit-learn LogisticRegression (same L2 strength, demo features)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
