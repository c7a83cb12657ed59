"""Dataset adapters, one module each, selected by name.

Each adapter module registers its ``load(root, **options) -> DatasetSpec`` with
:func:`features.datasets.registry.register`, declaring its name, modalities,
root folder, default encoder and options. A new dataset is one module here that
registers its loader, plus its import below.
"""

# isort: off
# Each module registers its dataset; the order here is the order datasets are listed in.
from features.datasets import demo, waterbirds, celeba, multinli, civilcomments, table, hf  # noqa: F401
# isort: on
from features.datasets.base import DatasetSpec
from features.datasets.registry import (
    DatasetInfo,
    DatasetOption,
    dataset_info,
    datasets,
    load_dataset,
)

__all__ = ["DatasetInfo", "DatasetOption", "DatasetSpec", "dataset_info", "datasets", "load_dataset"]
