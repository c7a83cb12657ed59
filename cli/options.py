"""Typer options built from declarations, so flags, help and checks come from registries.

A command that takes options declared elsewhere (a method's hyperparameters, a
dataset's columns) is decorated with :func:`with_options`; the options appear in
its signature (and so in ``--help``) and arrive in one dict, only those given.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class OptionSpec:
    """One flag: its parameter name, help, value type and (optional) metavar."""

    name: str
    help: str
    kind: type = str
    metavar: str | None = None
    flag: str | None = None  # default: --name-with-dashes

    @property
    def long(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def with_options(specs: Sequence[OptionSpec], into: str = "options") -> Callable[[F], F]:
    """Add one optional flag per spec to the decorated command; the command receives
    ``{name: value}`` of the flags given on the command line as its ``into`` argument."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"repeated option names: {names}")

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        if into not in sig.parameters:
            raise TypeError(f"{fn.__name__} has no parameter {into!r} to receive the options")
        clash = set(names) & set(sig.parameters)
        if clash:
            raise TypeError(f"{fn.__name__} already has parameters {sorted(clash)}")
        kept = [p for p in sig.parameters.values() if p.name != into]
        extra = [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation=_annotation(s)) for s in specs]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names if kwargs.get(n) is not None}
            for n in names:
                kwargs.pop(n, None)
            return fn(*args, **kwargs, **{into: given})

        params = kept + extra
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must see this signature, not the function's own
        return command  # type: ignore[return-value]

    return decorate


def _annotation(spec: OptionSpec) -> Any:
    # A switch gets its negative form too (--bias/--no-bias); not giving either keeps the default.
    decl = f"{spec.long}/--no-{spec.long[2:]}" if spec.kind is bool else spec.long
    option = typer.Option(decl, help=spec.help, metavar=spec.metavar, show_default=False)
    return Annotated[spec.kind | None, option]
