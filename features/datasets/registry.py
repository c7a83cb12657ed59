"""Dataset adapters declare themselves here; :func:`load_dataset` loads one by name.

An adapter module decorates its ``load(root, **options) -> DatasetSpec`` with
:func:`register`: its name, modalities, whether it uses a root folder, its default
encoder, and the keyword options it takes (name, help). The command line builds
its dataset argument, flags and help from these declarations, and options an
adapter does not take are refused here, before it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from base.errors import UserError
from features.datasets.base import DatasetSpec

RootUse = Literal["required", "optional", "unused"]


@dataclass(frozen=True)
class DatasetOption:
    """A keyword option of an adapter's ``load``; ``help`` says what it means for that dataset."""

    name: str
    help: str
    metavar: str | None = None
    # The help of the option shared by several datasets, when this dataset means something else by it.
    shared_help: str | None = None

    def meaning(self, help: str) -> DatasetOption:
        """This shared option as one dataset reads it (listed first in its help)."""
        return replace(self, help=help, shared_help=self.shared_help or self.help)


# Taken by most adapters: their standard metadata table, replaced by another file.
METADATA_OPTION = DatasetOption("metadata", "a metadata file name overriding the standard one", metavar="FILE")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset adapter as the registry knows it."""

    name: str
    modalities: tuple[str, ...]
    load: Callable[..., DatasetSpec]
    root: RootUse = "required"
    options: tuple[DatasetOption, ...] = ()
    default_encoder: str | None = None
    help: str | None = None  # a short note after the name in the command line's list of datasets
    # False: options the adapter does not take are ignored instead of refused (demo always has).
    strict: bool = True

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)


_DATASETS: dict[str, DatasetInfo] = {}


def register(name: str, *, modalities: Iterable[str], root: RootUse = "required",
             options: Iterable[DatasetOption] = (), default_encoder: str | None = None,
             help: str | None = None, strict: bool = True,
             ) -> Callable[[Callable[..., DatasetSpec]], Callable[..., DatasetSpec]]:
    """Declare the decorated ``load(root, **options)`` as the adapter of dataset ``name``."""

    def decorate(load: Callable[..., DatasetSpec]) -> Callable[..., DatasetSpec]:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = DatasetInfo(name=name, modalities=tuple(modalities), load=load, root=root,
                                      options=tuple(options), default_encoder=default_encoder, help=help,
                                      strict=strict)
        return load

    return decorate


def datasets() -> Mapping[str, DatasetInfo]:
    """Every registered dataset by name, in registration order."""
    return dict(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(_DATASETS)}")
    return _DATASETS[name]


def options() -> dict[str, list[tuple[DatasetInfo, DatasetOption]]]:
    """Option name -> the datasets that take it, with their declaration; first-declared first."""
    out: dict[str, list[tuple[DatasetInfo, DatasetOption]]] = {}
    for info in _DATASETS.values():
        for option in info.options:
            out.setdefault(option.name, []).append((info, option))
    return out


def option_help(name: str) -> str:
    """``celeba: target attribute (default Blond_Hair).`` A shared option lists the datasets that
    read it their own way first, then what it means for the "other datasets"."""
    parts, shared = [], {}
    for info, option in options()[name]:
        if option.shared_help is not None:
            parts.append(f"{info.name}: {option.help}")
        else:
            shared.setdefault(option.help, []).append(info.name)
    general = {o.shared_help for _, o in options()[name]} - {None}
    for help, names in shared.items():
        parts.append(f"{'other datasets' if help in general else ', '.join(names)}: {help}")
    return "; ".join(parts) + "."


def check_options(info: DatasetInfo, given: Mapping[str, Any]) -> None:
    """Refuse an option the dataset does not use, rather than silently ignoring it."""
    for key in given:
        if key not in info.option_names:
            takes = ", ".join(f"`{k}`" for k in info.option_names) or "no dataset options"
            raise UserError(f"`{key}` does not apply to dataset {info.name!r}; it takes `root` and {takes}")


def load_dataset(name: str, root: Path | None = None, **options: Any) -> DatasetSpec:
    """The dataset ``name`` (see :func:`datasets`) with its keyword options; mistakes are UserErrors."""
    info = dataset_info(name)
    if info.strict:
        check_options(info, options)
    return info.load(root, **options)
