"""What an HDF5 feature file (schema ``probe-features/1``) holds: the contract between stages.

Datasets (all of length N):
    features  (N, D) float32 or float16, chunked by rows
    y         (N,) int64   class index into ``class_names``
    a         (N,) int64   spurious attribute, -1 where unknown
    group     (N,) int64   group index into ``group_names``
    split     (N,) int8    0 train, 1 val, 2 test
    id        (N,) UTF-8   the source row, path or index

Root attributes: schema, dataset, encoder, weights, preprocess, class_names and
group_names (JSON lists), created, probe_version, complete (false until the last
row is written), rows_written, and source (JSON: where the data came from).

Optional, for zero-shot rows (``probe extract --prompts``, open_clip encoders):
    prompt_embeddings  (C, D) float32   one unit row per class, in ``class_names``
                       order: CLIP's zero-shot classifier (:mod:`features.prompts`)
    attribute prompts  (JSON) templates, class_names (as filled into the templates),
                       logit_scale (exp of the model's learnt temperature), embedding
                       (how the rows were combined)
Files without them (all files before these existed) read as before; `probe fit
--method zeroshot` needs them.

Written by `probe extract` beside those (readers may ignore them):
    index     (N,) int64   the row's position in the dataset before sharding and
                           skipping; `probe merge` orders rows by it
    attributes: rows_sha256 (fingerprint of the dataset's ids, labels and names,
    so a resume or merge cannot mix rows), total_rows, batch_size, batches_done,
    shard ("i/N", "" when unsharded), shard_rows (JSON [start, stop)), skipped
    (JSON list of ids dropped by ``skip_bad``), modality, precision, device.

Plain declarations (no h5py), so that the command line can offer the choices
without loading the file machinery; :mod:`features.store` reads and writes files.
"""

from __future__ import annotations

SCHEMA = "probe-features/1"
SPLITS = {"train": 0, "val": 1, "test": 2}
SPLIT_NAMES = {v: k for k, v in SPLITS.items()}
LABEL_DATASETS = ("y", "a", "group", "split", "id")
# How the features may be stored (encoding itself is unaffected); the first is the default.
FEATURE_DTYPES = ("float32", "float16")
# Attributes that identify what produced the features: resuming or merging
# files that differ in any of them would silently mix incompatible features.
IDENTITY_ATTRS = ("schema", "dataset", "encoder", "weights", "preprocess")

# The optional zero-shot classifier (see above).
PROMPT_DATASET = "prompt_embeddings"
PROMPT_ATTR = "prompts"

# What must agree before rows of an existing file are resumed, reused or merged:
# the producer (IDENTITY_ATTRS), the rows (fingerprint), the shard, the stored dtype and
# the class prompts (a file holds one zero-shot classifier).
WRITE_IDENTITY = (*IDENTITY_ATTRS, "rows_sha256", "shard", "features_dtype", PROMPT_ATTR)
