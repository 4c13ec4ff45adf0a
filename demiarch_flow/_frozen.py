"""Frozen values that are cheap to make and to copy: a run makes about thirty of them.

A frozen dataclass refuses ``setattr``, so its generated ``__init__`` sets every field through
``object.__setattr__`` — a slot wrapper call per field, about as costly as the rest of a small
function — and with ``slots=True`` a copy must do the same. The run's hot values (the run
state, the steps, the records, the parsed answer) are plain frozen dataclasses *without*
slots instead, decorated with :func:`quick`: the same fields, signature, equality, hash and
immutability, made by filling the instance's ``__dict__`` in one dictionary update, and copied
by :func:`evolve` the same way (five times cheaper, counted on a run's ``RunState`` copies).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import operator
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")
_V = TypeVar("_V")


def quick(cls: type[_T]) -> type[_T]:
    """Give frozen dataclass ``cls`` (no slots) an ``__init__`` that fills ``__dict__`` at once.

    The signature is the generated one (positional or keyword, same defaults), so type
    checkers and callers see no difference; an instance's ``__dict__`` holds every field in
    field order (so does a copy by :func:`evolve`), which the checkpoint JSON relies on; the class must have no ``__post_init__``, no
    ``default_factory`` and no keyword-only or non-init field, which the generated
    ``__init__`` would treat differently.

    Raises:
        TypeError: ``cls`` is not such a class.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__name__}: not a frozen dataclass")
    if "__slots__" in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: slots or __post_init__ (the generated init is needed)")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    defaults: dict[str, Any] = {}
    args = []
    for f in fields:
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: not a plain init field with a default")
        if f.default is dataclasses.MISSING:
            args.append(f.name)
        else:
            defaults[f"_default_{f.name}"] = f.default
            args.append(f"{f.name}=_default_{f.name}")
    values = ", ".join(f"{f.name!r}: {f.name}" for f in fields)
    source = f"def __init__(self, {', '.join(args)}):\n    self.__dict__.update({{{values}}})\n"
    exec(source, defaults)  # as dataclasses makes its own __init__
    init = defaults["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    setattr(cls, "__init__", init)  # noqa: B010 (mypy refuses assigning a method)
    return cls


_COPIERS: dict[
    type, tuple[frozenset[str], Callable[[Any], tuple[Any, ...]] | None, tuple[str, ...]]
] = {}
_QUICK: dict[type, frozenset[str]] = {}
"""The field names of each non-slotted kind :func:`evolve` has copied: its fast path."""


def evolve(value: _V, **changes: Any) -> _V:
    """``dataclasses.replace`` for frozen values, without calling ``__init__``.

    A :func:`quick` value (no slots) is copied as its ``__dict__``; a slotted one as its
    fields read in one ``attrgetter`` call and set in a loop in C. Both skip ``replace``'s
    per-field checks, which is safe because these classes have no ``__post_init__`` and every
    field is an ``__init__`` field.

    Raises:
        TypeError: a name in ``changes`` is not a field (as ``replace`` raises).
    """
    kind = type(value)
    known = _QUICK.get(kind)
    if known is not None and changes.keys() <= known:
        new = object.__new__(kind)
        fresh = new.__dict__
        fresh.update(value.__dict__)
        fresh.update(changes)
        return new
    return _evolve(value, kind, changes)


def _evolve(value: _V, kind: type[_V], changes: dict[str, Any]) -> _V:
    """:func:`evolve` of a kind met for the first time, a slotted kind, or a wrong name."""
    found = _COPIERS.get(kind)
    if found is None:
        fields = dataclasses.fields(kind)  # type: ignore[arg-type]
        assert all(f.init for f in fields), kind
        assert not hasattr(kind, "__post_init__"), kind
        names = tuple(f.name for f in fields)
        getter: Callable[[Any], tuple[Any, ...]] | None = None
        if "__slots__" in kind.__dict__:
            getter = operator.attrgetter(*names)
        else:
            _QUICK[kind] = frozenset(names)
        found = _COPIERS[kind] = (frozenset(names), getter, names)
    known, read, names = found
    if not known.issuperset(changes):
        raise TypeError(f"{kind.__name__} has no field {sorted(set(changes) - known)}")
    new = object.__new__(kind)
    if read is None:
        fresh = new.__dict__
        fresh.update(value.__dict__)
        fresh.update(changes)
        return new
    put = object.__setattr__
    collections.deque(map(put, itertools.repeat(new), names, read(value)), 0)  # loop in C
    for name, changed in changes.items():
        put(new, name, changed)
    return new
