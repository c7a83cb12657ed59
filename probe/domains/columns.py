"""Domains read from a column of the feature file: the groups, the spurious attribute, the classes."""

from __future__ import annotations

import numpy as np

from base.errors import UserError
from probe.domains.base import DomainSource, register


@register
class Groups(DomainSource):
    name = "group"
    help = "group (the file's groups: class × attribute)"
    reads = frozenset({"train_groups"})

    @classmethod
    def domains(cls, fs, settings):
        return fs.group[fs.split_mask("train")], fs.group_names


@register
class Attribute(DomainSource):
    name = "a"
    help = "a (the spurious attribute)"
    reads = frozenset({"train_groups"})

    @classmethod
    def domains(cls, fs, settings):
        a = fs.a[fs.split_mask("train")]
        if (a < 0).any():
            raise UserError(f"{fs.path}: `domain` a needs the spurious attribute on every training row (found -1)")
        return a, {int(v): f"a={int(v)}" for v in np.unique(a)}


@register
class Classes(DomainSource):
    name = "y"
    help = "y (the classes: no group labels read)"

    @classmethod
    def domains(cls, fs, settings):
        return fs.y[fs.split_mask("train")], fs.class_names
