"""Checks of multi-process training: `distributed MODE(backend=…, timeout=…, …)`.

MODE is `data`, `brains`, `layers` or `pipeline` (see the package docstring and the README's
"Beyond one process"). Without the statement a run of several processes is data-parallel. The
settings are checked here; whether the world's size fits the mode (enough brains, modules or
layers for the ranks) is checked once the world is known, at binding
(mrc/techniques/distributed/bind.py). `--set distributed.KEY=…` sets one argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrc import ast
from mrc.check.registry import finisher, statement
from mrc.program import Distributed
from mrc.registry import Entry, Param, Registry

if TYPE_CHECKING:
    from mrc.check.checker import Checker

COMMON = (
    Param("backend", "choice", "auto", "gloo, nccl, or auto (NCCL on CUDA, gloo on the CPU)",
          choices=("auto", "gloo", "nccl")),
    Param("timeout", "float", 300.0, "seconds a rank waits on a collective before the run fails", lo=1),
)
MODES = Registry("distributed mode")
MODES.add(Entry("data", lambda: None, (), "split each batch across the ranks; average gradients where "
                "a partition updates"))
MODES.add(Entry("brains", lambda: None, (), "brains on ranks (contiguous blocks); merges are collectives"))
MODES.add(Entry("layers", lambda: None, (), "an MGRIT stack's layers in one contiguous block per rank"))
MODES.add(Entry("pipeline", lambda: None, (
    Param("micro_batches", "int", 1, "micro-batches of each batch that flow through the pipeline", lo=1),
    Param("buffers", "choice", "sync", "sync: wait for the predecessor's output of this batch; stale: "
          "train on its last output without waiting", choices=("sync", "stale")),
), "module-wise modules on ranks, sending detached outputs on"))


@statement("distributed", "how several processes share the run", technique="distributed", target=True,
           args=True, once=True, usage="distributed data(timeout=300)", targets=lambda: MODES)
def check_distributed(ck: Checker, st: ast.Statement | None) -> None:
    """`distributed MODE(ARGS)`: see the module docstring."""
    comp = ck.component(st, "distributed", MODES, extra=COMMON)
    if comp is None:
        return
    if comp.user:
        assert st is not None and st.target is not None
        ck.r.error("`distributed` takes a mode: data, brains, layers or pipeline", st.target.span)
        return
    assert st is not None
    kw = dict(comp.kwargs)
    ck.program["distributed"] = Distributed(
        comp.name, st.keyword.span, comp.span, kw.get("backend", "auto"), float(kw.get("timeout", 300.0)),
        int(kw.get("micro_batches", 1)), kw.get("buffers", "sync"), dict(comp.arg_spans))


@finisher
def check_distributed_combinations(ck: Checker) -> None:
    """A mode needs the technique it places."""
    d: Distributed | None = ck.program.get("distributed")
    if d is None:
        return
    need = {"brains": ("brains", "`brains` places brains on ranks: the spec has no `brain` statements"),
            "layers": ("mgrit", "`layers` splits an MGRIT-solved stack: the spec has no `mgrit` statement"),
            "pipeline": ("modules", "`pipeline` places modules on ranks: the spec has no `modules` block")}
    if d.mode in need:
        key, message = need[d.mode]
        if not ck.program.get(key):
            ck.r.error(message, d.mode_span)
            return
    if d.mode == "pipeline":
        mods = ck.program["modules"]
        if getattr(mods, "regime", "parallel") != "parallel":
            ck.r.error("a module pipeline runs the `parallel` regime (every batch through every module)",
                       d.mode_span, hint="set `regime = parallel` in the `modules` block")
        elif d.micro_batches > 1 and getattr(mods, "transport", "none") == "multipliers":
            ck.r.error("the method of multipliers updates λ from the whole batch's loss: it cannot run on "
                       "micro-batches", d.spans.get("micro_batches", d.mode_span),
                       hint="use `micro_batches=1`, or a fixed τ")
