"""Runs a named pipeline of passes over the schedule graph, verifying after each.

`--print-after NAME|all` prints the graph after the named passes; `--time-passes` reports the
time each took. A pass that raises or leaves a broken graph is reported as
"error in pass X after passes [a, b]".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from mrc.ir.graph import ScheduleGraph
from mrc.ir.ops import GraphError


class PassError(Exception):
    """A pass failed; the message names it and the passes that ran before it."""


def parse_pipeline(text: str) -> list[str]:
    """`"prune-gradients,group-updates"` → names, checked against the registry."""
    from mrc.passes import PASSES

    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in PASSES:
            from mrc.registry import did_you_mean

            guess = did_you_mean(n, list(PASSES))
            raise PassError(f"unknown pass `{n}`" + (f"; did you mean `{guess}`?" if guess else
                            f"; passes are {', '.join(PASSES)}"))
    return names


@dataclass
class PassManager:
    pipeline: Sequence[str]
    print_after: Sequence[str] = ()
    time_passes: bool = False
    out: TextIO = field(default_factory=lambda: sys.stderr)
    printer: Callable[[ScheduleGraph], str] = ScheduleGraph.to_text
    timings: list[tuple[str, float]] = field(default_factory=list)

    def run(self, graph: ScheduleGraph, stop_after: str | None = None) -> ScheduleGraph:
        """Run the pipeline (up to and including `stop_after`, if given)."""
        from mrc.passes import PASSES

        done: list[str] = []
        if "build" in self.print_after:  # the graph before any pass, as `--after build` names it
            self.out.write(f"// ----- after build\n{self.printer(graph)}")
        for name in self.pipeline:
            start = time.perf_counter()
            try:
                graph = PASSES[name]().apply(graph)
                graph.verify()
            except (GraphError, Exception) as err:
                raise PassError(f"error in pass {name} after passes [{', '.join(done)}]: "
                                f"{type(err).__name__}: {err}") from err
            self.timings.append((name, time.perf_counter() - start))
            done.append(name)
            if name in self.print_after or "all" in self.print_after:
                self.out.write(f"// ----- after {name}\n{self.printer(graph)}")
            if name == stop_after:
                break
        if self.time_passes:
            total = sum(t for _, t in self.timings)
            self.out.write("// pass timings\n")
            for name, t in self.timings:
                self.out.write(f"//   {name:<20} {t * 1e3:8.3f} ms\n")
            self.out.write(f"//   {'total':<20} {total * 1e3:8.3f} ms\n")
        return graph
