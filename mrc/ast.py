"""The syntax tree of a .mrs spec: frozen records, each with the span it was parsed from.

The parser builds these and nothing else; meaning is given by the checker (mrc/check/).
"""

from __future__ import annotations

from dataclasses import dataclass

from mrc.diagnostics import Span

MAX_NESTING = 200
"""How deeply a spec may nest (brackets, operators, calls, blocks): the parser reports deeper
input as an error, so no later stage recurses further than this (docs/language.md)."""


@dataclass(frozen=True, slots=True)
class Num:
    value: int | float
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Arg:
    """A call argument: `name = value` when `name` is set, else positional."""

    name: Name | None
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    func: Name
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    """`left op right` with op one of + - * / ** | &."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    span: Span


Expr = Num | Str | Name | ListExpr | Call | BinOp | Neg


@dataclass(frozen=True, slots=True)
class Assign:
    """`key = value` inside a block; `key` may be dotted (`optimizer.lr`)."""

    key: tuple[Name, ...]
    value: Expr
    span: Span

    @property
    def dotted(self) -> str:
        return ".".join(k.id for k in self.key)


@dataclass(frozen=True, slots=True)
class Block:
    items: tuple[Statement | Assign, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Statement:
    """`keyword [target | name = value] [(args)] [{block}]`.

    `target` is the built-in name or user reference after the keyword (`model mlp`,
    `data "file.npz"`); `name`/`value` are set by the binding form (`partition head = ...`).
    """

    keyword: Name
    target: Name | Str | None
    name: Name | None
    value: Expr | None
    args: tuple[Arg, ...] | None
    block: Block | None
    span: Span


@dataclass(frozen=True, slots=True)
class Spec:
    """A whole parsed file."""

    file: str
    statements: tuple[Statement, ...]
