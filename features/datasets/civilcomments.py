"""CivilComments in the WILDS layout (``civilcomments_v1.0/all_data_with_identities.csv``).

The CSV (read as WILDS reads it, ``pandas.read_csv(..., index_col=0)``) has an unnamed
index column, ``comment_text``, ``split`` (train/val/test), ``toxicity`` (the fraction of
raters who found the comment toxic) and one column per identity (the fraction of raters
who saw it mentioned). As in WILDS (``wilds/datasets/civilcomments_dataset.py``):

- label y = toxicity >= 0.5 (0 non-toxic, 1 toxic);
- an identity is mentioned when its column is >= 0.5; WILDS's eight identities are
  male, female, LGBTQ, christian, muslim, other_religions, black, white. An empty
  field counts as not mentioned (pandas reads it as NaN, and NaN >= 0.5 is false).

Groups (``identity``):

- ``any`` (default): DFR's coarse groups (``WildsCivilCommentsCoarse`` in the DFR
  authors' ``spurious_feature_learning/data/datasets.py``): a = any of the eight
  identities mentioned, group = 2*y + a (4 groups);
- one of the eight: a = that identity mentioned, group = 2*y + a. WILDS's own
  evaluation takes the worst of 16 overlapping (identity mentioned, y) groups, which no
  single group column can hold; each identity's two of them are its groups 1 and 3 here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from base.errors import UserError
from features.datasets import _tables as T
from features.datasets.base import DatasetSpec
from features.datasets.registry import METADATA_OPTION, DatasetOption, register

FILE = "all_data_with_identities.csv"
FOLDER = "civilcomments_v1.0"
# WILDS's identity variables, in its order.
IDENTITIES = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")
THRESHOLD = 0.5
CLASS_NAMES = ["non-toxic", "toxic"]
ANY = "any"
IDENTITY = DatasetOption("identity", f"{ANY} (default: any of WILDS's eight identities mentioned, DFR's coarse "
                                     f"groups) or one of {', '.join(IDENTITIES)}", metavar="NAME")
TEXT, LABEL, SPLIT = "comment_text", "toxicity", "split"
HINT = f"WILDS's {FILE} has an unnamed index column, {TEXT}, {SPLIT}, {LABEL} and the identity columns"


def _find(base: Path) -> Path:
    for candidate in (base / FILE, base / FOLDER / FILE):
        if candidate.is_file():
            return candidate
    raise UserError(f"`root` {base}: no {FILE} there or in {FOLDER}/; point `root` at the WILDS CivilComments "
                    "folder")


def _ids(table: T.Table, index_col0: bool) -> list[str]:
    """The pandas index of each row (WILDS's row identity), else its row number."""
    ids = [i.strip() for i in table.index] if index_col0 else [str(i) for i in range(len(table))]
    T.check_unique(table, None, ids)
    return ids


@register("civilcomments", modalities=("text",), options=(IDENTITY, METADATA_OPTION))
def load(root: Path | None, **options: Any) -> DatasetSpec:
    base = T.resolve_root(root, "civilcomments", f"{FILE} (or {FOLDER}/{FILE})")
    identity = str(options.get("identity", ANY))
    if identity != ANY and identity not in IDENTITIES:
        raise UserError(f"`identity` {identity!r}: choose {ANY} or one of {', '.join(IDENTITIES)}")
    path = T.resolve_file(options["metadata"], base, "`metadata`") if "metadata" in options else _find(base)
    what = "CivilComments file"
    header = T.read_header(path, what)
    index_col0 = bool(header) and header[0] in ("", "Unnamed: 0")
    table = T.read_table(path, (TEXT, LABEL, SPLIT, *IDENTITIES), what=what, hint=HINT, index_col0=index_col0)
    toxicity = table.floats(LABEL, hint="toxicity is the fraction of raters who found the comment toxic")
    y = (toxicity >= THRESHOLD).astype(np.int64)
    mentioned = np.stack([table.floats(c, empty=np.nan) >= THRESHOLD for c in IDENTITIES], axis=1)
    if identity == ANY:
        a = mentioned.any(axis=1).astype(np.int64)
        attrs = ["no identity", "identity"]
        rule = f"a = any of {', '.join(IDENTITIES)} >= {THRESHOLD} (DFR's coarse groups)"
    else:
        a = mentioned[:, IDENTITIES.index(identity)].astype(np.int64)
        attrs = [f"not {identity}", identity]
        rule = f"a = {identity} >= {THRESHOLD}"
    return DatasetSpec(
        name="civilcomments",
        modality="text",
        items=list(table.columns[TEXT]),
        ids=_ids(table, index_col0),
        y=y, a=a, group=2 * y + a, split=table.splits(SPLIT, words=True),
        class_names=list(CLASS_NAMES), group_names=[f"{c}/{v}" for c in CLASS_NAMES for v in attrs],
        source={
            "root": str(base), "files": [str(path)], "format": f"WILDS CivilComments {FILE}",
            "label": f"y = toxicity >= {THRESHOLD} (0 non-toxic, 1 toxic)", "attribute": rule,
            "identity": identity, "group": "2*y + a", "item": TEXT, "options": dict(options),
        },
    )
