"""Source spans and diagnostics: `file:line:col: error: message`, the line, carets, notes, hints.

Every stage of the compiler reports problems as `Diagnostic`s and keeps going where it can, so one
run shows every error. A stage that cannot go on raises `CompileError` with all it collected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """A range of source text: 1-based line and column of its first and one-past-last character."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def to(self, other: Span) -> Span:
        """The span from the start of this one to the end of `other`."""
        return Span(self.file, self.line, self.col, other.end_line, other.end_col)


NOWHERE = Span("<unknown>", 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Note:
    message: str
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem: a severity, a message at a span, notes with their own spans, and a hint."""

    message: str
    span: Span | None
    severity: str = "error"
    notes: tuple[Note, ...] = ()
    hint: str | None = None


@dataclass
class Sources:
    """The text of every file a run has read, so diagnostics can quote the offending line."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        self.texts[name] = text

    def line(self, name: str, number: int) -> str | None:
        text = self.texts.get(name)
        if text is None or number < 1:
            return None
        lines = text.split("\n")  # as the parser counts lines: a form feed or a lone \r is no break
        return lines[number - 1].rstrip("\r") if number <= len(lines) else ""


SOURCES = Sources()
"""Process-wide source registry: every file or `--set` text the front end reads is added here."""


QUOTE_WIDTH = 160
"""Source lines longer than this are quoted as a window around the span, cut with `…`."""
MESSAGE_WIDTH = 1000
"""Messages and hints longer than this are cut in the middle (a 5 MB name stays out of stderr)."""


def _quote(span: Span, sources: Sources) -> list[str]:
    text = sources.line(span.file, span.line)
    if text is None:
        return []
    text = text.expandtabs(1)
    start = max(span.col, 1)
    end = span.end_col if span.end_line == span.line else len(text) + 1
    width = max(end - start, 1)
    if len(text) > QUOTE_WIDTH:
        text, start, width = _window(text, start, width)
    gutter = " " * len(str(span.line))
    return [f" {span.line} | {text}", f" {gutter} | {' ' * (start - 1)}{'^' * width}"]


def _window(text: str, start: int, width: int) -> tuple[str, int, int]:
    """The part of a long line around column `start`, with `…` where it is cut, and the caret
    column and width within it (carets end at the window's edge)."""
    keep = QUOTE_WIDTH - 2
    left = max(0, min(start - 1 - keep // 4, len(text) - keep))  # index of the first shown char
    shown = text[left:left + keep]
    prefix, suffix = ("…" if left > 0 else ""), ("…" if left + keep < len(text) else "")
    col = start - left + len(prefix)
    width = max(1, min(width, len(prefix) + len(shown) - col + 1))
    return prefix + shown + suffix, col, width


def clip(text: str, limit: int = MESSAGE_WIDTH) -> str:
    """`text`, cut in the middle with `…` when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return f"{text[:half]}…{text[len(text) - half:]}"


def render(diag: Diagnostic, sources: Sources = SOURCES) -> str:
    """The diagnostic as text, in the compiler-standard form that editors recognise."""
    where = f"{diag.span}: " if diag.span and diag.span.line > 0 else (
        f"{diag.span.file}: " if diag.span else "")
    out = [f"{where}{diag.severity}: {clip(diag.message)}"]
    if diag.span and diag.span.line > 0:
        out += _quote(diag.span, sources)
    for note in diag.notes:
        if note.span and note.span.line > 0:
            out.append(f"{note.span}: note: {clip(note.message)}")
            out += _quote(note.span, sources)
        else:
            out.append(f"note: {clip(note.message)}")
    if diag.hint:
        out.append(f"hint: {clip(diag.hint)}")
    return "\n".join(out)


def render_all(diags: Iterable[Diagnostic], sources: Sources = SOURCES) -> str:
    diags = list(diags)
    text = "\n".join(render(d, sources) for d in diags)
    errors = sum(d.severity == "error" for d in diags)
    if errors:
        text += f"\n{errors} error{'s' if errors != 1 else ''} found"
    return text


class CompileError(Exception):
    """Raised when a stage cannot go on; carries every diagnostic collected so far."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__(render_all(self.diagnostics))


class Reporter:
    """Collects diagnostics for one run of the front end."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def error(self, message: str, span: Span | None, *, notes: Iterable[Note] = (),
              hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(message, span, "error", tuple(notes), hint))

    def warning(self, message: str, span: Span | None, *, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(message, span, "warning", (), hint))

    @property
    def failed(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def raise_if_failed(self) -> None:
        """Raise CompileError with every diagnostic, in source order, if any is an error."""
        if self.failed:
            raise CompileError(sorted(self.diagnostics, key=_position))


def _position(d: Diagnostic) -> tuple[str, int, int]:
    return (d.span.file, d.span.line, d.span.col) if d.span else ("", 0, 0)
