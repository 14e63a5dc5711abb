"""Argument tables: call arguments checked against `Param` records, with `--set` overrides.

Every statement that takes `(ARGS)` or `{ key = value }` settings declares them as a tuple of
`mrc.registry.Param`; `Arguments.arguments` checks what the spec gives against it (unknown names
with did-you-mean, repeats, positional order, types and ranges) and fills the defaults, and
`Arguments.component` does the same for a `KEYWORD NAME(ARGS)` statement naming a built-in of a
registry or user code. A `--set statement.argument=…` replaces the argument's expression.
"""

from __future__ import annotations

import math
from typing import Any

from mrc import ast
from mrc.check.expressions import Bad, Expressions, Symbol, Value, plain
from mrc.check.registry import check_form
from mrc.diagnostics import Note, Span
from mrc.program import Component
from mrc.registry import Param, Registry, did_you_mean


class Arguments(Expressions):
    """Checks argument lists against parameter tables; values come from `Expressions`."""

    def arguments(self, what: str, params: tuple[Param, ...], args: tuple[ast.Arg, ...] | None,
                  at: Span, prefix: str = "",
                  own: frozenset[str] = frozenset()) -> tuple[dict[str, Any], dict[str, Span]]:
        """Check call arguments against `params`; return the values (defaults filled) and spans.

        `prefix` is the `--set` key of the statement (`train.`), so `--set train.epochs=3` works
        whether or not the spec gives `epochs`. `own`: parameters the caller reads itself (words or
        lists of words, such as MGRIT's `relax`): named in hints and settable, but their `--set`
        values and where a sweep writes them are the caller's.
        """
        given: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        first: dict[str, Span] = {}
        names_ = [p.name for p in params]
        positional = 0
        for i, arg in enumerate(args or ()):
            if arg.name is None:
                if any(a.name for a in (args or ())[:i]):
                    self.r.error("a positional argument cannot follow a named one; name this one",
                                 arg.span, hint=f"its parameters are {names(names_)}")
                    continue
                if positional >= len(params):
                    self.r.error(f"{what} takes {len(params)} positional argument"
                                 f"{'s' if len(params) != 1 else ''} at most; name this one",
                                 arg.span, hint=f"its parameters are {names(names_)}")
                    continue
                name, name_span = params[positional].name, arg.span
                positional += 1
            else:
                name, name_span = arg.name.id, arg.name.span
            if name in first:
                self.r.error(f"`{name}` is given twice", name_span,
                             notes=[Note("first given here", first[name])])
                continue
            first[name] = name_span
            param = next((p for p in params if p.name == name), None)
            if param is None:
                guess = did_you_mean(name, names_)
                hint = f"did you mean `{guess}`?" if guess else (
                    f"{what} takes {names(names_)}" if names_ else f"{what} takes no arguments")
                self.r.error(f"unknown argument `{name}` for {what}", name_span, hint=hint)
                continue
            expr = self.override(f"{prefix}{name}", arg.value)
            try:
                v = self.value(expr)
            except Bad:
                continue
            self.store(param, v, given, spans, name)
        for param in params:
            key = f"{prefix}{param.name}"
            if prefix:
                self.settable.add(key)
                if param.name not in first and args and param.name not in own:  # after the last argument
                    self.sites.setdefault(key, ("after", args[-1].span))
            if param.name not in first and key in self.overrides and param.name not in own:  # not given
                try:
                    v = self.value(self.override(key, None))
                except Bad:
                    continue
                self.store(param, v, given, spans, param.name)
        for param in params:
            if param.name not in given and param.name not in first:
                if param.required:
                    self.r.error(f"{what} needs `{param.name}`", at,
                                 hint=f"add `{param.name}=…`: {param.doc}" if param.doc else None)
                else:
                    given[param.name] = param.default
        order = {p.name: i for i, p in enumerate(params)}
        given = dict(sorted(given.items(), key=lambda kv: order.get(kv[0], len(order))))
        spans = dict(sorted(spans.items(), key=lambda kv: order.get(kv[0], len(order))))
        return given, spans

    def store(self, param: Param, v: Value, given: dict[str, Any], spans: dict[str, Span],
              name: str) -> None:
        """Validate one value against its parameter; record it, or report why not."""
        raw = v.value
        if isinstance(raw, Symbol) and param.kind != "choice":
            if param.kind == "str":
                raw = raw.name
            else:
                self.unknown_name(raw.name, v.span)
                return
        if isinstance(raw, Symbol):
            raw = raw.name
        if raw is None and param.kind == "choice" and "none" in param.choices:
            raw = "none"  # `none` is both the constant and a choice word (drift = none)
        try:
            value, err = param.validate(raw)
        except OverflowError:  # an integer too large for a float
            value, err = raw, f"`{param.name}` is too large"
        if err:
            hint = _choice_hint(param, raw)
            if isinstance(raw, float) and math.isinf(raw):
                hint = "numbers beyond ±1.8e308 are infinite (`inf`)"
            self.r.error(err, v.span, hint=hint)
            return
        given[name] = value
        spans[name] = v.span

    def component(self, st: ast.Statement | None, kw: str, registry: Registry,
                  extra: tuple[Param, ...] = (), key: str | None = None) -> Component | None:
        """`KEYWORD NAME(ARGS)`: a built-in of `registry` or user code, with checked arguments.

        `extra` are parameters every target takes (the data options); `key` is the `--set`
        prefix of its arguments (default: the keyword).
        """
        key = key or kw
        if st is None or not check_form(self.r, st):
            return None
        target = st.target
        assert target is not None
        if isinstance(target, ast.Str) or is_user_ref(target.id):
            return self._user_component(st, target, kw, extra, key)
        entry = registry.get(target.id)
        if entry is None:
            guess = registry.suggest(target.id)
            self.r.error(f"unknown {registry.family} `{target.id}`", target.span,
                         hint=f"did you mean `{guess}`?" if guess else
                         f"built-in {registry.family}s are {names(registry.names())}, or give "
                         'user code as "file.py:factory"')
            return None
        kwargs, spans = self.arguments(f"{kw} `{entry.name}`", tuple(entry.params) + extra,
                                       st.args, st.span, f"{key}.")
        return Component(entry.name, kwargs, target.span, False, spans)

    def _user_component(self, st: ast.Statement, target: ast.Name | ast.Str, kw: str,
                        extra: tuple[Param, ...], key: str) -> Component:
        name = target.value if isinstance(target, ast.Str) else target.id
        kwargs: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        if extra:
            known = {p.name for p in extra}
            own = tuple(a for a in st.args or () if a.name is not None and a.name.id not in known)
            common = tuple(a for a in st.args or () if a.name is None or a.name.id in known)
            kwargs, spans = self.arguments(f"{kw} {name}", extra, common, st.span, f"{key}.")
        else:
            own = ()
            for a in st.args or ():
                if a.name is None:
                    self.r.error("arguments of user code must be named", a.span)
                    continue
                own += (a,)
        for a in own:
            assert a.name is not None
            try:
                kwargs[a.name.id] = plain(self.value(self.override(f"{key}.{a.name.id}", a.value)).value)
                spans[a.name.id] = a.value.span
            except Bad:
                pass
        return Component(name, kwargs, target.span, True, spans)

    def report_unused_overrides(self) -> None:
        """A `--set` key that no statement read is an error at the key, with the closest key
        this spec has (same statement first: `optimizer.learning_rate` → `optimizer.lr`)."""
        from mrc.diagnostics import Span

        for key in sorted(set(self.overrides) - self.used_overrides):
            expr = self.overrides[key]
            at = Span(expr.span.file, 1, 1, 1, len(key) + 1) if expr.span.file.startswith("<--set") else expr.span
            guess = suggest_key(key, sorted(self.settable | set(self.lets)))
            self.r.error(f"`--set {key}` matches no setting of this spec", at,
                         hint=f"did you mean `{guess}`?" if guess else
                         "keys are `let` names or statement.argument, e.g. `optimizer.lr`, "
                         "`train.epochs`, `data.batch`, `partition.NAME.every`")


def suggest_key(key: str, keys: list[str]) -> str | None:
    """The settable key closest to a misspelt `--set` key: among the keys of the same statement
    (`optimizer.…`), the closest argument name; else the closest key overall."""
    head, dot, last = key.rpartition(".")
    if dot:
        same = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == head]
        guess = did_you_mean(last, same)
        if guess:
            return f"{head}.{guess}"
    return did_you_mean(key, keys)


def is_user_ref(text: str) -> bool:
    """`"file.py:factory"`, `"package.module:factory"` or a data file path."""
    return ":" in text or "/" in text or "." in text


def names(items: list[str]) -> str:
    """Names as `a`, `b`, … for hints (at most 12 shown)."""
    shown = [f"`{n}`" for n in items]
    if len(shown) > 12:
        shown = [*shown[:12], "…"]
    return ", ".join(shown)


def _choice_hint(param: Param, raw: Any) -> str | None:
    if param.kind == "choice" and isinstance(raw, str):
        guess = did_you_mean(raw, list(param.choices))
        if guess:
            return f"did you mean `{guess}`?"
    return None
