"""A spec's own text with values written in: what `mrc sweep` leaves as best.mrs and what a run
keeps as config.mrs (the spec it actually ran, after `--set`).

Values go where the spec writes each key (`sites`, recorded by the checker: the value replaced,
or `, name=value` added after the statement's last argument). Relative file names that name a
file beside the spec (data files, user code) are made absolute, since the written spec lives
elsewhere; statements may be dropped (best.mrs drops its `sweep`). Keys with no site are
returned, so the caller can say where they went.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mrc import ast
from mrc.diagnostics import Span


def with_values(spec: str | Path, values: Mapping[str, str], sites: Mapping[str, tuple[str, Span]],
                drop: Iterable[str] = (), header: Sequence[str] = ()) -> tuple[str, list[str]]:
    """The text of `spec` with each `values[key]` (spec text) written at `sites[key]`, the
    statements whose keyword is in `drop` removed, and `header` comment lines first. Returns the
    text and the keys that had no site."""
    from mrc.parser import parse

    spec = Path(spec)
    text = spec.read_text(encoding="utf-8")
    tree = parse(text, str(spec))
    starts = offsets(text)

    def at(line: int, col: int) -> int:
        return starts[line - 1] + col - 1

    edits: list[tuple[int, int, str]] = []
    unplaced: list[str] = []
    for key, value in values.items():
        site = sites.get(key)
        if site is None:
            unplaced.append(key)
            continue
        how, span = site
        if how == "replace":
            edits.append((at(span.line, span.col), at(span.end_line, span.end_col), value))
        else:
            end = at(span.end_line, span.end_col)
            edits.append((end, end, f", {key.rpartition('.')[2]}={value}"))
    base = spec.resolve().parent
    dropped = set(drop)
    for st in tree.statements:
        if st.keyword.id in dropped:
            start, end = at(st.span.line, st.span.col), at(st.span.end_line, st.span.end_col)
            if not text[starts[st.span.line - 1]:start].strip():
                start = starts[st.span.line - 1]
            line_end = starts[st.span.end_line] if st.span.end_line < len(starts) else len(text)
            if not text[end:line_end].strip():
                end = line_end
            edits.append((start, end, ""))
            continue
        for s in _strings(st):
            absolute = _absolute(s.value, base)
            if absolute is not None:
                edits.append((at(s.span.line, s.span.col), at(s.span.end_line, s.span.end_col), json.dumps(absolute)))
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + new + text[end:]
    return "".join(f"{line}\n" for line in header) + text, unplaced


def effective(spec: str | Path, overrides: Sequence[str]) -> tuple[str, list[str]]:
    """The spec a run with `--set` items `overrides` ran: the spec's text with each override's
    value written where the spec writes that key, headed by a comment naming the source and
    the overrides. Returns the text and the keys with no place in the text (kept in the header;
    they are run with `--set`)."""
    from mrc.check.checker import Checker
    from mrc.parser import parse, parse_overrides

    spec = Path(spec)
    parsed = parse_overrides(list(overrides))
    checker = Checker(parsed)
    checker.check(parse(spec.read_text(encoding="utf-8"), str(spec)), spec.resolve().parent)
    values = {k: item.partition("=")[2].strip() for item in overrides for k in [item.partition("=")[0].strip()]}
    header = [f"# config.mrs: the spec this run ran — {spec.resolve()}"
              + (f" with --set {' '.join(overrides)}" if overrides else " as written")]
    text, unplaced = with_values(spec, values, checker.sites, header=header)
    if unplaced:
        note = "# not written in the text (no place for them); run with: " + " ".join(
            f"--set {k}={values[k]}" for k in unplaced)
        text = note + "\n" + text
    return text, unplaced


def offsets(text: str) -> list[int]:
    """Where each line starts — lines split at "\n" only, as the parser counts them."""
    starts, pos = [0], 0
    for line in text.split("\n"):
        pos += len(line) + 1
        starts.append(pos)
    return starts


def _strings(node: Any) -> list[ast.Str]:
    """Every string literal under an AST node."""
    if isinstance(node, ast.Str):
        return [node]
    if isinstance(node, tuple | list):
        return [s for item in node for s in _strings(item)]
    if dataclasses.is_dataclass(node) and not isinstance(node, Span | type):
        return [s for f in dataclasses.fields(node) for s in _strings(getattr(node, f.name))]
    return []


def _absolute(value: str, base: Path) -> str | None:
    """A relative file name (or `file.py:factory`) that names a file next to the spec, made
    absolute; None for anything else."""
    path, colon, rest = value.partition(":")
    if not path or Path(path).is_absolute() or not (base / path).is_file():
        return None
    return str((base / path).resolve()) + colon + rest
