"""Encoder families declare themselves here; :func:`load_encoder` turns a name into an encoder.

A family module decorates its loader with :func:`register` (timm's ``@register_model``
style): its name or ``prefix:``, the modalities it encodes, the keyword options of
:func:`load_encoder` it takes, its default batch sizes and a help line. Everything
else (the "unknown encoder" message, the command line's ``--encoder`` help, which
option applies to which encoder) is read from these declarations.

Declarations are plain data: reading them imports no model library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from base.errors import UserError
from features.encoders.core import BATCH_SIZES, MODALITIES, Encoder

if TYPE_CHECKING:
    import torch

# The keyword options of load_encoder that families may take, in signature order.
OPTION_NAMES = ("weights", "pooling", "tower", "max_length")


@dataclass(frozen=True)
class EncoderOption:
    """A keyword of :func:`load_encoder` as one family takes it.

    ``help`` is one sentence for the command line (parameters in backquotes);
    ``check`` refuses a bad value with a UserError, whatever the encoder.
    """

    name: str
    help: str
    check: Callable[[Any], None] | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTION_NAMES:
            raise ValueError(f"{self.name!r} is not an option of load_encoder ({', '.join(OPTION_NAMES)})")


@dataclass(frozen=True)
class EncoderFamily:
    """One way to name an encoder: a whole name (``minilm``) or a prefix (``open_clip:``)."""

    name: str
    help: str  # how to write the name, e.g. "open_clip:<arch> (with `weights`)"
    modalities: tuple[str, ...]  # several: a model with one tower per modality
    load: Callable[..., Encoder]  # (argument, *, device, **options) -> Encoder
    options: tuple[EncoderOption, ...] = ()
    batch_size: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: BATCH_SIZES)
    default_for: tuple[str, ...] = ()  # modalities whose datasets get this encoder when none is named
    example: str | None = None  # a complete choice for hints; a whole name is its own example

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith(":")

    def matches(self, name: str) -> bool:
        return name.startswith(self.name) if self.is_prefix else name == self.name

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    @property
    def hint(self) -> str | None:
        return self.example or (None if self.is_prefix else self.name)


_FAMILIES: dict[str, EncoderFamily] = {}


def register(name: str, *, help: str, modalities: Iterable[str], options: Iterable[EncoderOption] = (),
             batch_size: Mapping[str, Mapping[str, int]] | None = None, default_for: Iterable[str] = (),
             example: str | None = None) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Declare the decorated loader as the encoder family ``name``.

    The loader is called as ``load(argument, device=..., **options)`` with the part
    of the name after a prefix (else the whole name) and only the options declared.
    """

    def decorate(load: Callable[..., Encoder]) -> Callable[..., Encoder]:
        mods = tuple(modalities)
        sizes = batch_size if batch_size is not None else {m: BATCH_SIZES[m] for m in mods}
        if name in _FAMILIES:
            raise ValueError(f"encoder family {name!r} is registered twice")
        if not mods or not set(mods) <= set(MODALITIES) or set(sizes) != set(mods):
            raise ValueError(f"encoder family {name!r}: modalities {mods} and batch sizes {sorted(sizes)} "
                             f"must be the same, among {MODALITIES}")
        _FAMILIES[name] = EncoderFamily(name=name, help=help, modalities=mods, load=load,
                                        options=tuple(options), batch_size=sizes,
                                        default_for=tuple(default_for), example=example)
        return load

    return decorate


def families() -> tuple[EncoderFamily, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


def option_help(name: str) -> str:
    """What the option ``name`` does, from every family that takes it (each sentence once)."""
    return " ".join(dict.fromkeys(o.help for f in families() for o in f.options if o.name == name))


def default_encoder(modality: str) -> str | None:
    """The encoder a dataset of ``modality`` gets when it declares none (None: it must be named)."""
    return next((f.name for f in families() if modality in f.default_for), None)


def encoder_hints(modality: str) -> list[str]:
    """Complete encoder choices for ``modality``, for "e.g." hints in messages."""
    return [f.hint for f in families() if modality in f.modalities and f.hint]


def find(name: str) -> EncoderFamily:
    for family in families():
        if family.matches(name):
            return family
    raise UserError(f"`encoder` {name!r} is not known; use one of: {', '.join(f.help for f in families())}")


def load_encoder(name: str, weights: str | None = None, device: str | torch.device = "auto",
                 pooling: str | None = None, tower: str | None = None, max_length: int | None = None,
                 modality: str | None = None) -> Encoder:
    """Build an encoder from its name (``open_clip:ViT-B-32``, ``minilm``...); every bad choice is a UserError.

    ``modality`` is that of the data to encode: a two-tower family uses that tower
    unless ``tower`` says otherwise. Whether the encoder suits the data is checked
    by extraction, not here.
    """
    from base.device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else device
    given = {"weights": weights, "pooling": pooling, "tower": tower, "max_length": max_length}
    # Values are checked before the name, whichever family takes them.
    checks = {o.check: o.name for f in families() for o in f.options if o.check is not None}
    for check, option in checks.items():
        if given[option] is not None:
            check(given[option])
    family = find(name)
    for option, value in given.items():
        if value is not None and option != "tower" and option not in family.option_names:
            raise UserError(f"`{option}` does not apply to `encoder` {name}; drop it")
    if "tower" in family.option_names:
        given["tower"] = tower or (modality if modality in family.modalities else family.modalities[0])
    elif tower is not None and tower != family.modalities[0]:
        raise UserError(f"`tower` {tower}: `encoder` {name} only encodes {family.modalities[0]}s")
    argument = name[len(family.name):] if family.is_prefix else name
    encoder = family.load(argument, device=dev, **{k: given[k] for k in family.option_names})
    encoder.batch_sizes = family.batch_size[encoder.modality]
    return encoder


def check_choice(option: str, choices: tuple[str, ...], joined: str) -> Callable[[Any], None]:
    """A ``check`` that refuses values not in ``choices``: "`option` 'x': choose <joined>"."""

    def check(value: Any) -> None:
        if value not in choices:
            raise UserError(f"`{option}` {value!r}: choose {joined}")

    return check
