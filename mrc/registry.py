"""Named building blocks (models, data sets, optimizers, schedules) and their typed parameters.

Every built-in that a spec can name — `model mlp(...)`, `optimizer sgd(...)`, `data digits(...)` —
is an `Entry` in a `Registry`. An entry declares its keyword parameters as `Param` records with a
kind, a default and a range, so the checker can report an unknown keyword (with a did-you-mean),
a wrong type or an out-of-range value at the argument's span *before* anything is built, and the
reference in docs/language.md can be generated from the same records.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

REQUIRED: Any = object()
"""Sentinel default of a parameter that the spec must give."""

KINDS = ("int", "float", "bool", "str", "ints", "floats", "strs", "choice", "any")


@dataclass(frozen=True, slots=True)
class Param:
    """One keyword parameter of a built-in.

    kind: "int", "float" (ints accepted), "bool", "str", "ints" / "floats" / "strs" (a list; a
    single item is taken as a one-element list), "choice" (one of `choices`), "any".
    lo/hi bound numbers (and every element of a list); `lo_open`/`hi_open` make a bound strict.
    """

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe_range(self) -> str:
        """The accepted range as interval text, e.g. `[0, 1)`."""
        lo = "-inf" if self.lo is None else _num(self.lo)
        hi = "inf" if self.hi is None else _num(self.hi)
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}"

    def validate(self, value: Any) -> tuple[Any, str | None]:
        """Coerce `value` to this parameter's kind; return (value, error message or None)."""
        if value is None and self.nullable:
            return None, None
        kind = self.kind
        if kind == "any":
            return value, None
        if kind == "bool":
            if isinstance(value, bool):
                return value, None
            return value, f"`{self.name}` must be true or false, not {_show(value)}"
        if kind == "str":
            if isinstance(value, str):
                return value, None
            return value, f"`{self.name}` must be a string, not {_show(value)}"
        if kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return value, None
            options = ", ".join(f"`{c}`" for c in self.choices)
            return value, f"`{self.name}` must be one of {options}, not {_show(value)}"
        if kind in ("int", "float"):
            return self._number(value)
        # lists
        items = value if isinstance(value, list | tuple) else [value]
        out = []
        for item in items:
            v, err = Param(self.name, kind[:-1], lo=self.lo, hi=self.hi, lo_open=self.lo_open,
                           hi_open=self.hi_open).validate(item)
            if err:
                return value, err
            out.append(v)
        return out, None

    def _number(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool) or not isinstance(value, int | float):
            what = "an integer" if self.kind == "int" else "a number"
            return value, f"`{self.name}` must be {what}, not {_show(value)}"
        if self.kind == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    return value, f"`{self.name}` must be an integer, not {_num(value)}"
                value = int(value)
        else:
            value = float(value)
            if math.isnan(value):
                return value, f"`{self.name}` must be a number, not nan"
            if math.isinf(value):  # no parameter means "infinitely much": each has a finite range
                return value, f"`{self.name}` must be a finite number, not {_num(value)}"
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return value, f"`{self.name}` = {_num(value)} is out of range: it must lie in {self.describe_range()}"
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            return value, f"`{self.name}` = {_num(value)} is out of range: it must lie in {self.describe_range()}"
        return value, None


@dataclass(frozen=True, slots=True)
class Entry:
    """A named built-in: its builder, its parameters and one line of documentation."""

    name: str
    build: Callable[..., Any]
    params: tuple[Param, ...] = ()
    doc: str = ""
    aliases: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if not p.required}


class Registry:
    """A name → Entry table for one family (models, data sets, optimizers, schedules…)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> Entry:
        for key in (entry.name, *entry.aliases):
            if key in self._entries:
                raise ValueError(f"{self.family} `{key}` registered twice")
            self._entries[key] = entry
        return entry

    def register(self, name: str, *params: Param, doc: str = "", aliases: tuple[str, ...] = (),
                 **extra: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of `add`: `@MODELS.register("mlp", Param(...), doc="...")`."""

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Entry(name, fn, tuple(params), doc or (fn.__doc__ or "").strip().split("\n")[0],
                           aliases, extra))
            return fn

        return wrap

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        seen: set[str] = set()
        for entry in self._entries.values():
            if entry.name not in seen:
                seen.add(entry.name)
                yield entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def suggest(self, name: str) -> str | None:
        return did_you_mean(name, self.names())


def did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The closest candidate to a misspelt name, or None if nothing is close: a candidate that
    is the name's initials (`learning_rate` → `lr`, `weight_decay` → `wd`) first, then the
    closest by edit similarity."""
    words = [w for w in name.lower().replace("-", "_").split("_") if w]
    if len(words) > 1:
        initials = "".join(w[0] for w in words)
        found = [c for c in candidates if c.lower() == initials]
        if found:
            return found[0]
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if matches:
        return matches[0]
    lowered = {c.lower(): c for c in candidates}
    return lowered.get(name.lower())


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x) if isinstance(x, float) else str(x)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "a list"
    return str(value)
