"""`warm_start = cache` (mrc/techniques/mgrit/guess.py): each training example starts its solves
from its own states of the last step that solved it, forward and adjoint; an example not solved
yet at y_0 (g); the cache's size is capped, and a step without its examples is refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mrc import api
from mrc.lower.plan import LoweringError
from mrc.techniques.mgrit import solver
from mrc.techniques.mgrit.guess import CACHE_CAP, ExampleCache
from mrc.techniques.mgrit.lower import mgrit_state
from mrc.techniques.mgrit.solver import MGRIT

SPEC = """model ode_resnet(width=4, depth=16, h=0.1)
data levelsets(batch=8)
optimizer sgd(lr=0.05, momentum=0.9)
train(epochs=1, seed=3)
mgrit "stack" {{ levels = 2; coarsening = 4; forward_iters = 1; backward_iters = 1; warm_start = {guess} }}
"""


def _transposed(points: int, batch: int, width: int, seed: int) -> torch.Tensor:
    """[points, batch, width] states stored as [points, width, batch] (not contiguous), as a
    propagator may allocate them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(points, width, batch, generator=g, dtype=torch.float64).transpose(1, 2)


def test_the_cache_gives_each_example_the_states_kept_for_it_whatever_their_strides() -> None:
    state: dict[str, torch.Tensor] = {}
    cache = ExampleCache(state, "mgrit/stack", 10, "the cache")
    assert cache.rows("forward", torch.tensor([0, 1])) == (None, None)
    first = _transposed(5, 3, 2, 0)
    assert not first.is_contiguous()
    cache.put("forward", torch.tensor([7, 2, 4]), first)
    second = _transposed(5, 2, 2, 1)
    cache.put("forward", torch.tensor([2, 9]), second)  # example 2 again: its newer states win
    kept, mask = cache.rows("forward", torch.tensor([9, 4, 2, 7]))
    assert mask is None and kept is not None and kept.shape == (5, 4, 2)
    for j, want in enumerate((second[:, 1], first[:, 2], second[:, 0], first[:, 0])):
        assert torch.equal(kept[:, j], want), j
    kept, mask = cache.rows("forward", torch.tensor([4, 5]))  # 5 never kept
    assert kept is not None and mask is not None and mask.tolist() == [True, False]
    assert torch.equal(kept[:, 0], first[:, 2])
    assert cache.rows("forward", torch.tensor([0, 5])) == (None, None)
    assert cache.rows("adjoint", torch.tensor([4])) == (None, None)  # each solve keeps its own


def test_a_cache_over_the_cap_is_refused_naming_its_bytes() -> None:
    examples = CACHE_CAP // (2 * 5 * 8) + 1
    cache = ExampleCache({}, "k", examples, "`warm_start = cache` of the MGRIT stack `stack`")
    with pytest.raises(LoweringError, match=rf"would keep {2 * examples * 5 * 8} bytes .*{examples} examples × "
                                            r"5 points × 8 bytes.*cap of 2 GiB"):
        cache.put("forward", torch.tensor([0]), torch.zeros(5, 1, 2))


class _Run:
    """A lowered plan of SPEC, stepped by hand on chosen examples, recording each solve's guess
    (as `MGRIT.start` receives it) and the states it computed (the forward's fine states, and the
    adjoint's λ as `solver.lambdas` returns them)."""

    def __init__(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, guess: str = "cache") -> None:
        path = tmp_path / "c.mrs"
        path.write_text(SPEC.format(guess=guess))
        compiled = api.compile_spec(path, training=True)
        self.plan = api.lower(compiled, 20)
        self.data = compiled.bound.data
        self.starts: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        original = MGRIT.start

        def start(solver: MGRIT, u0: torch.Tensor, warm: torch.Tensor | None = None, every: int = 1) -> None:
            self.starts.append((u0.clone(), None if warm is None else warm.clone()))
            self.every = every
            original(solver, u0, warm, every)
        monkeypatch.setattr(MGRIT, "start", start)
        self.lambdas: list[torch.Tensor] = []
        lambdas = solver.lambdas

        def spy(solve: MGRIT) -> torch.Tensor:
            self.lambdas.append(lambdas(solve).clone())
            return self.lambdas[-1]
        monkeypatch.setattr(solver, "lambdas", spy)
        self.t = 0

    def step(self, examples: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on `examples`: the forward's fine states and the adjoint's λ (forward order)."""
        idx = torch.tensor(examples if examples is not None else range(8))
        self.plan.env.examples = None if examples is None else idx
        self.plan.step(self.t, self.data.train_x[idx], self.data.train_y[idx])
        self.t += 1
        solve = mgrit_state(self.plan.ctx).solves[("", "stack")]
        assert solve.states is not None
        return solve.states.clone(), self.lambdas[-1]


def test_an_example_seen_before_starts_from_its_own_states_and_a_new_one_at_y0(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _Run(tmp_path, monkeypatch)
    a, b = list(range(8)), list(range(8, 16))
    states_a, lam_a = run.step(a)
    states_b, lam_b = run.step(b)
    assert all(warm is None for _, warm in run.starts)  # no example of either batch was seen: u_n = y_0
    mixed = [11, 3, 40, 8, 0, 15, 41, 5]  # b's, a's, and two never seen
    run.step(mixed)
    (u0, forward), (g, adjoint) = run.starts[4], run.starts[5]
    assert forward is not None and adjoint is not None
    assert run.every == 4 and forward.shape == adjoint.shape == (5, 8, 4)  # the fine C-points 0, 4, … 16 only
    for j, e in enumerate(mixed):
        if e in a:
            want, lam = states_a[:, a.index(e)], lam_a[:, a.index(e)].flip(0)  # the adjoint's: reversed time
        elif e in b:
            want, lam = states_b[:, b.index(e)], lam_b[:, b.index(e)].flip(0)
        else:
            want, lam = u0[j].expand(17, 4), g[j].expand(17, 4)
        assert torch.equal(forward[:, j], want[::4]), (j, e)
        assert torch.equal(adjoint[:, j], lam[::4]), (j, e)


def test_the_cache_is_kept_in_the_lowerings_state(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _Run(tmp_path, monkeypatch)
    run.step(list(range(8)))
    kept = run.plan.ctx.state
    assert kept["mgrit/stack/cache_forward"].shape == (run.data.train_size, 5, 4)  # the C-points of 16 layers, cf 4
    assert kept["mgrit/stack/cache_adjoint"].shape == (run.data.train_size, 5, 4)
    assert kept["mgrit/stack/seen_forward"].sum() == 8
    assert mgrit_state(run.plan.ctx).solves[("", "stack")].cache is not None


def test_a_step_without_its_examples_is_refused(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _Run(tmp_path, monkeypatch)
    assert run.plan.hooks.examples  # the loop is asked for them
    with pytest.raises(LoweringError, match="needs the training examples of each step's batch"):
        run.step(None)


def test_other_guesses_ask_for_no_examples(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _Run(tmp_path, monkeypatch, guess="shifted")
    assert run.plan.hooks.examples == ""
    run.step(None)
    assert not any(k.startswith("mgrit/stack/cache") for k in run.plan.ctx.state)


def test_the_graph_shows_the_cache(tmp_path: Any) -> None:
    path = tmp_path / "c.mrs"
    path.write_text(SPEC.format(guess="cache"))
    text = api.compile_spec(path).graph.to_text()
    assert "mgrit stack: N=16" in text and "warm_start=cache" in text


@pytest.mark.parametrize(("steps", "buffer", "every"), [(16, 0, 4), (17, 0, 4), (18, 2, 4), (37, 3, 3), (10, 1, 1)])
def test_a_kept_guess_gives_the_middles_c_points_in_each_solves_order(steps: int, buffer: int, every: int) -> None:
    """`previous`/`shifted` hand the solver every `every`-th point of the middle: the forward's 0, every, …; the
    adjoint's (reversed time) n, n − every, … down to n mod every, flipped — what flipping the whole middle and
    then taking every `every`-th point gives, without flipping it (uneven depths included)."""
    from types import SimpleNamespace

    from mrc.techniques.mgrit.lower import StackSolve

    solve = SimpleNamespace(buffer=buffer, steps=steps)
    whole = torch.randn(steps + 1, 2, 3)
    n = steps - 2 * buffer
    middle = whole[buffer:buffer + n + 1]
    assert torch.equal(StackSolve._middle(solve, "forward", whole, every), middle[::every])  # type: ignore[arg-type]
    assert torch.equal(StackSolve._middle(solve, "adjoint", whole, every),  # type: ignore[arg-type]
                       middle.flip(0)[::every])
