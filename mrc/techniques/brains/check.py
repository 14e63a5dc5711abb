"""Checks of brains: `brain NAME { every, lr, data, optimizer }` and `merge RULE(ARGS)`, and what
a spec with brains must and may not have (two or more of them, a merge rule, no early stopping,
no averaged momentum with partitions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrc import ast
from mrc.check.arguments import names
from mrc.check.registry import finisher, statement
from mrc.diagnostics import Note, Span
from mrc.program import Brain, Merge
from mrc.registry import Param, did_you_mean
from mrc.techniques.core.check import registries

if TYPE_CHECKING:
    from mrc.check.checker import Checker

BRAIN_KEYS = (
    Param("every", "int", 1, "the brain steps once per `every` steps of the fastest clock", lo=1),
    Param("lr", "float", None, "its step size (default: every × the base learning rate)", lo=0,
          nullable=True),
    Param("data", "choice", "shared", "which batches it sees", choices=("shared", "own")),
)
MERGE_RULES: dict[str, tuple[Param, ...]] = {
    "mean": (),
    "weighted": (Param("weights", "floats", doc="one weight per brain, in declaration order", lo=0),),
    "best": (Param("metric", "choice", "val_loss", "validation metric that picks the brain",
                   choices=("val_loss", "val_acc")),),
    "ema": (Param("decay", "float", 0.9, "weight of the running average", lo=0, hi=1, hi_open=True),),
}
MERGE_MOMENTUM = Param("momentum", "choice", "keep", "optimizer state at a merge",
                       choices=("keep", "reset", "average"))


@statement("brain", "a copy of the network on its own time-scale", technique="brains",
           target=True, block=True)
def check_brain(ck: Checker, st: ast.Statement | None) -> None:
    """`brain NAME { every = k; lr; data; optimizer … }`, in source order."""
    assert st is not None
    brain = _brain(ck, st)
    if brain is None:
        return
    spans: dict[str, Span] = ck.facts.setdefault("brain_spans", {})
    if brain.name in spans:
        ck.r.error(f"brain `{brain.name}` is defined twice", brain.span,
                   notes=[Note("first defined here", spans[brain.name])])
        return
    spans[brain.name] = brain.span
    ck.facts.setdefault("brains", []).append(brain)


def _brain(ck: Checker, st: ast.Statement) -> Brain | None:
    if not ck.form(st):
        return None
    if not isinstance(st.target, ast.Name):
        ck.r.error("a brain is named with a plain name", st.target.span,  # type: ignore[union-attr]
                   hint="write `brain fast { every = 1 }`")
        return None
    name = st.target.id
    settings: dict[str, ast.Arg] = {}
    optimizer = None
    for item in st.block.items if st.block else ():
        if isinstance(item, ast.Assign) and len(item.key) == 1:
            settings[item.key[0].id] = ast.Arg(item.key[0], item.value, item.span)
        elif isinstance(item, ast.Statement) and item.keyword.id == "optimizer":
            optimizer = ck.component(item, "optimizer", registries()["optimizer"])
        else:
            ck.r.error("a brain block holds `every`, `lr`, `data` and an `optimizer`", item.span)
    values, _ = ck.arguments(f"brain `{name}`", BRAIN_KEYS, tuple(settings.values()), st.span,
                             f"brain.{name}.")
    return Brain(name, st.target.span, values.get("every", 1), values.get("lr"),
                 values.get("data", "shared"), optimizer)


@statement("merge", "how brains are merged when their times align", technique="brains",
           target=True, args=True, once=True, deferred=True)
def check_merge(ck: Checker, st: ast.Statement | None) -> None:
    """`merge RULE(ARGS)`: mean, weighted(weights), best(metric) or ema(decay), and momentum."""
    ck.program["merge"] = None
    brains: list[Brain] = ck.facts.get("brains", [])
    if st is None or not ck.form(st):
        return
    if not brains:
        ck.r.error("`merge` without brains", st.keyword.span,
                   hint="declare the brains it merges with `brain NAME { every = k }`")
        return
    rule = st.target.id if isinstance(st.target, ast.Name) else ""  # type: ignore[union-attr]
    if rule not in MERGE_RULES:
        guess = did_you_mean(rule, list(MERGE_RULES))
        ck.r.error(f"unknown merge rule `{rule}`", st.target.span,  # type: ignore[union-attr]
                   hint=f"did you mean `{guess}`?" if guess else
                   f"merge rules are {names(list(MERGE_RULES))}")
        return
    params = (*MERGE_RULES[rule], MERGE_MOMENTUM)
    values, spans = ck.arguments(f"merge `{rule}`", params, st.args, st.span, "merge.")
    if rule == "weighted" and "weights" in values and len(values["weights"]) != len(brains):
        ck.r.error(f"`weights` has {len(values['weights'])} entries for {len(brains)} brains",
                   spans.get("weights", st.span))
    if rule == "weighted" and "weights" in values and sum(values["weights"]) <= 0:
        ck.r.error("`weights` must not all be zero", spans.get("weights", st.span))
    loss = ck.program.get("loss")
    if values.get("metric") == "val_acc" and loss is not None and loss.task == "regression":
        ck.r.error(f"a regression loss (`{loss.name}`) has no accuracy to pick the best brain by",
                   spans.get("metric", st.span), hint="pick by `metric = val_loss`")
    ck.program["merge"] = Merge(rule, st.span, tuple(values.get("weights", ())),
                                values.get("metric", "val_loss"), values.get("decay", 0.9),
                                values.get("momentum", "keep"))


@finisher
def check_brains(ck: Checker) -> None:
    """Brains come in twos or more, with a merge rule; what they cannot be combined with yet."""
    brains: list[Brain] = ck.facts.get("brains", [])
    ck.program["brains"] = tuple(brains)
    if not brains:
        return
    merge: Merge | None = ck.program.get("merge")
    if len(brains) < 2:
        ck.r.error("brains come in twos or more: this spec has one", brains[0].span,
                   hint="add another `brain NAME { every = k }`, or remove the brain")
    if merge is None and not ck.given("merge"):
        ck.r.error("brains need a `merge` rule", brains[0].span,
                   hint="add e.g. `merge mean` (or weighted, best, ema)")
    if ck.facts.get("partitions") and merge is not None and merge.momentum == "average":
        ck.r.error("`momentum=average` with partitions inside brains is not supported yet",
                   merge.span, hint="use `momentum=keep` or `momentum=reset`")
