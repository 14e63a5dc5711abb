"""Module-wise training (TRGL / VanGL) against references written straight from the seed.

seeds/module-wise-trgl.md: the network is cut into modules T_0 … T_{K−1}; module k reads the
*detached* output of module k−1 and is trained from its own local loss only,

  L_k = CE(F_k(T_k(x_k)), y) + 1/(2τ_k) · Σ_{blocks m of T_k} mean(r_m²)     (TRGL; VanGL: CE only)

with F_k the auxiliary head `model.aux[k]` (the model's own head for the last module) and r_m the
residual branch of block m (for `resnet`: the block's `branch` output, before the add and the final
ReLU). `doubled(τ)` gives modules k < K//2 the weight τ/2; `multipliers(λ0, h, s)` trains
λ_k·CE + Σ mean(r²) and, on module-steps t > 0 with t mod s = 0, first sets λ_k ← λ_k + h·CE_k.
Regimes: parallel (every step, every module), sequential (module k alone for E epochs on the
outputs of the frozen — no grad, eval mode — modules before it), laps (R laps of the sequential
stages with N/R epochs each, optimizer state and the schedule's clock carried across laps).

The references below never touch mrc's module-wise code: they run the model by hand (the stem,
each block as r = b.branch(x); x = relu(b.shortcut(x) + r), the pool, flatten, dropout, head;
the auxiliary heads as black boxes) from a copy of the initial weights, in float64, over the
data order of the run (step t is batch t mod spe of epoch t div spe).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mrc.api import compile_spec, train
from mrc.techniques.modules.tables import MODULES

BASE = """
model {model}
data {data}
optimizer {optimizer}
{extra}
train({length}seed={seed}, dtype=float64, kernels="torch.optim", log_every=1, checkpoint_every=0)
{modules}
"""

DATA = "synthetic(shape=[3,8,8], classes=4, samples=40, batch=8)"  # 32 train examples: 4 steps/epoch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for the references too (the trainer picks one for models this small):
    tiny float64 kernels on several threads only wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def spec(tmp_path: Path, modules: str, *, model: str = "resnet(depth=8, width=4)", data: str = DATA,
         optimizer: str = "sgd(lr=0.05, momentum=0.9)", extra: str = "", steps: int | None = 6,
         seed: int = 0, name: str = "m.mrs") -> Path:
    path = tmp_path / name
    length = f"steps={steps}, " if steps is not None else ""
    body = f"modules {{ {modules} }}" if modules else ""
    path.write_text(BASE.format(model=model, data=data, optimizer=optimizer, extra=extra,
                                length=length, seed=seed, modules=body))
    return path


def compiled_with_init(path: Path):
    """The compiled spec and a copy of its initial model (auxiliary heads included)."""
    compiled = compile_spec(path, training=True)
    return compiled, copy.deepcopy(compiled.bound.model)


def epoch_batches(data, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for idx in data.batch_indices(epoch):
        yield data.train_x[idx].double(), data.train_y[idx]


def batches(data, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The run's first `steps` batches: step t is batch t % spe of epoch t // spe."""
    t, epoch = 0, 0
    while t < steps:
        for xy in epoch_batches(data, epoch):
            if t == steps:
                return
            yield xy
            t += 1
        epoch += 1


# --------------------------------------------------------------------------- the hand-written model


class Hand:
    """A resnet (or ode_resnet) cut by hand into modules of `sizes` residual blocks each."""

    def __init__(self, model: nn.Module, sizes: list[int]) -> None:
        self.model = model
        if hasattr(model, "layer1"):
            self.blocks = [*model.layer1, *model.layer2, *model.layer3]
            self.kind = "resnet"
        else:
            self.blocks = list(model.stack.layers)
            self.kind = "ode"
        assert sum(sizes) == len(self.blocks)
        self.K = len(sizes)
        edges = [0]
        for s in sizes:
            edges.append(edges[-1] + s)
        self.own = [self.blocks[a:b] for a, b in itertools.pairwise(edges)]

    def first(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "ode":
            x = torch.flatten(x, 1)
        return self.model.stem(x)

    def block(self, b: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "resnet":
            r = b.branch(x)
            return torch.relu(b.shortcut(x) + r), r
        r = self.model.stack.h * b(x)  # ode_resnet: y ← y + h·F_n(y)
        return x + r, r

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.head(m.drop(torch.flatten(m.pool(x), 1)))

    def module(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Module k on its input: (output, residual branches)."""
        if k == 0:
            x = self.first(x)
        rs = []
        for b in self.own[k]:
            x, r = self.block(b, x)
            rs.append(r)
        return x, rs

    def head(self, k: int, out: torch.Tensor) -> torch.Tensor:
        return self.model.aux[k](out) if k < self.K - 1 else self.tail(out)

    def parts(self, k: int) -> list[nn.Module]:
        """The submodules whose parameters module k trains."""
        out: list[nn.Module] = [self.model.stem] if k == 0 else []
        out += self.own[k]
        out.append(self.model.aux[k] if k < self.K - 1 else self.model.head)
        return out

    def params(self, k: int) -> dict[str, nn.Parameter]:
        mine = {id(p) for m in self.parts(k) for p in m.parameters()}
        return {n: p for n, p in self.model.named_parameters() if id(p) in mine}

    def set_mode(self, k: int, training: bool) -> None:
        for m in self.parts(k):
            m.train(training)
        if k == self.K - 1:
            self.model.pool.train(training)
            self.model.drop.train(training)


def local_terms(hand: Hand, x: torch.Tensor, y: torch.Tensor, upto: int | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(CE_k, Σ_m mean(r_m²)) of every module k, module k reading module k−1's detached output."""
    out = []
    h = x
    for k in range(hand.K if upto is None else upto + 1):
        h, rs = hand.module(k, h.detach())
        ce = F.cross_entropy(hand.head(k, h), y)
        cost = sum(r.pow(2).mean() for r in rs) if rs else ce.new_zeros(())
        out.append((ce, cost))
    return out


class Momentum:
    """torch.optim.SGD's update written out: d = g + wd·θ; p = d (first step), else μp + d;
    θ ← θ − lr·p."""

    def __init__(self, mu: float, wd: float = 0.0) -> None:
        self.mu, self.wd = mu, wd
        self.buf: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: tuple[torch.Tensor, ...], lr: float) -> None:
        for p, g in zip(params, grads, strict=True):
            d = g + self.wd * p
            key = id(p)
            self.buf[key] = d.clone() if key not in self.buf else self.mu * self.buf[key] + d
            p -= lr * self.buf[key]


def taus_for(transport: str, tau: float, k: int) -> list[float]:
    if transport == "none":
        return [0.0] * k
    if transport == "doubled":
        return [tau / 2 if i < k // 2 else tau for i in range(k)]
    return [tau] * k


def loss_of(ce: torch.Tensor, cost: torch.Tensor, tau: float) -> torch.Tensor:
    return ce + cost / (2 * tau) if tau else ce


def parallel_reference(init: nn.Module, data, sizes: list[int], taus: list[float], steps: int, *,
                       lr: float, mu: float, wd: float = 0.0) -> tuple[nn.Module, list]:
    """Parallel module-wise training: every step, every module from its own loss."""
    model = copy.deepcopy(init)
    model.train()
    hand = Hand(model, sizes)
    opt = Momentum(mu, wd)
    history = []
    for x, y in batches(data, steps):
        terms = local_terms(hand, x, y)
        grads = []
        for k, (ce, cost) in enumerate(terms):
            params = list(hand.params(k).values())
            grads.append((params, torch.autograd.grad(loss_of(ce, cost, taus[k]), params)))
        for params, g in grads:
            opt.step(params, g, lr)
        history.append([(ce.item(), cost.item()) for ce, cost in terms])
    return model, history


def assert_states(got: nn.Module, want: nn.Module, atol: float) -> None:
    g, w = got.state_dict(), want.state_dict()
    assert set(g) == set(w)
    for key, value in w.items():
        if value.is_floating_point():
            torch.testing.assert_close(g[key], value, rtol=0, atol=atol, msg=key)
        else:
            assert torch.equal(g[key], value), key


def module_records(result) -> list[dict]:
    return [rec["modules"] for rec in result.metrics if "modules" in rec]


# --------------------------------------------------------------------------- 1. gradients


@pytest.mark.parametrize(("model", "data", "split", "sizes", "aux", "transport"), [
    ("resnet(depth=14, width=4)", DATA, 'at(["layer2", "layer3"])', [2, 2, 2], "linear", "fixed(tau=0.25)"),
    ("resnet(depth=8, width=4)", DATA, "equal(3)", [1, 1, 1], "conv(width=4)", "fixed(tau=0.5)"),
    ("resnet(depth=8, width=4)", DATA, "equal(3)", [1, 1, 1], "mlp(hidden=8)", "none"),
    ("resnet(depth=14, width=4)", DATA, 'at(["layer2.1"])', [3, 3], "conv(width=4)", "none"),
    ("ode_resnet(width=6, depth=4, h=0.5)", "synthetic(shape=[5], classes=3, samples=40, batch=8)",
     "equal(2)", [2, 2], "mlp(hidden=8)", "fixed(tau=0.2)"),
])
def test_parallel_gradients_are_the_local_losses(tmp_path: Path, model: str, data: str, split: str,
                                                 sizes: list[int], aux: str, transport: str) -> None:
    """One step of plain SGD with lr 1 moves each parameter by exactly −∇ of its module's local
    loss: the gradient of module k (its layers and its head) is that of CE_k + cost_k/(2τ) on the
    detached input, nothing from later modules' losses."""
    mods = f"split = {split}; aux = {aux}; transport = {transport}; regime = parallel"
    path = spec(tmp_path, mods, model=model, data=data, optimizer="sgd(lr=1.0)", steps=1)
    compiled, init = compiled_with_init(path)
    result = train(compiled, save=False, device="cpu")
    after = dict(result.model.named_parameters())

    ref = copy.deepcopy(init)
    ref.train()
    hand = Hand(ref, sizes)
    x, y = next(batches(compiled.bound.data, 1))
    tau = float(transport.partition("tau=")[2].rstrip(")")) if "tau" in transport else 0.0
    terms = local_terms(hand, x, y)
    seen: set[str] = set()
    before = dict(init.named_parameters())
    for k, (ce, cost) in enumerate(terms):
        params = hand.params(k)
        want = torch.autograd.grad(loss_of(ce, cost, tau), list(params.values()))
        for (n, _), g in zip(params.items(), want, strict=True):
            got = before[n].detach() - after[n].detach()
            torch.testing.assert_close(got, g, rtol=0, atol=1e-10, msg=f"m{k} {n}")
            seen.add(n)
        if k < hand.K - 1:
            assert any(n.startswith(f"aux.{k}.") for n in params)
    assert seen == set(before)  # every parameter, each in one module
    # and not trivially: end to end (every loss through undetached inputs) m0 would move otherwise
    e2e = copy.deepcopy(init)
    e2e.train()
    whole = Hand(e2e, sizes)
    h, total = x, 0.0
    for k in range(whole.K):
        h, rs = whole.module(k, h)
        ce = F.cross_entropy(whole.head(k, h), y)
        total = total + loss_of(ce, sum(r.pow(2).mean() for r in rs), tau)
    first = whole.params(0)
    (name, _), g = next(zip(first.items(), torch.autograd.grad(total, list(first.values())), strict=False))
    assert (before[name].detach() - after[name].detach() - g).abs().max() > 1e-6
    # the modules' metrics of the step: CE and the transport cost of each module
    (rec,) = module_records(result)
    assert list(rec) == [f"m{k}" for k in range(hand.K)]
    for k, (ce, cost) in enumerate(terms):
        assert rec[f"m{k}"]["loss"] == pytest.approx(ce.item(), rel=0, abs=1e-12)
        if transport != "none":
            assert rec[f"m{k}"]["transport"] == pytest.approx(cost.item(), rel=0, abs=1e-12)
            assert rec[f"m{k}"]["tau"] == tau


# --------------------------------------------------------------------------- 2. K = 1 is end-to-end


@pytest.mark.parametrize("model", ["resnet(depth=8, width=4)", "resnet(depth=8, width=4, dropout=0.3)",
                                   "ode_resnet(width=6, depth=3)"])
def test_one_module_without_transport_is_end_to_end(tmp_path: Path, model: str) -> None:
    data = DATA if model.startswith("resnet") else "synthetic(shape=[5], classes=3, samples=40, batch=8)"
    kw = dict(model=model, data=data, optimizer="sgd(lr=0.05, momentum=0.9, weight_decay=1e-3)", steps=7)
    plain = train(spec(tmp_path, "", name="plain.mrs", **kw), save=False, device="cpu").model.state_dict()
    one = train(spec(tmp_path, "split = equal(1); transport = none", **kw), save=False,
                device="cpu").model.state_dict()
    assert set(one) == set(plain)
    for key, value in plain.items():
        assert torch.equal(one[key], value), key
    # and the run did move the weights
    init = compile_spec(spec(tmp_path, "", name="plain.mrs", **kw)).bound.model.state_dict()
    assert not torch.equal(init["head.weight"], plain["head.weight"])


# --------------------------------------------------------------------------- 3. the transport term

NET = '''
import torch
from torch import nn


class Block(nn.Module):
    """y = x + W x: the branch is a Linear without bias."""

    def __init__(self, d):
        super().__init__()
        self.branch = nn.Linear(d, d, bias=False)

    def forward(self, x):
        return x + self.branch(x)


class Net(nn.Module):
    def __init__(self, d_in, classes, d):
        super().__init__()
        self.stem = nn.Linear(d_in, d)
        self.block1 = Block(d)
        self.block2 = Block(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.stem(torch.flatten(x, 1))
        return self.head(self.block2(self.block1(x)))


def build(in_shape, classes, width=5):
    net = Net(in_shape[0], classes, width)
    with torch.no_grad():
        net.block1.branch.weight.copy_(0.5 * torch.eye(width))
        w = torch.arange(width * width, dtype=torch.float32).reshape(width, width)
        net.block2.branch.weight.copy_(torch.cos(w) / width)
    return net
'''


def test_transport_is_the_mean_square_of_known_branches(tmp_path: Path) -> None:
    """A user model x ↦ x + W x with known W: the reported transport cost is Σ mean((W h)²),
    computed in closed form (block 1 has W = ½·I, so its cost is ¼·mean(h²) and block 2 reads
    1.5·h), and the gradient of W is that of CE plus 1/(2τ)·∂mean(R²)/∂W = Rᵀh/(τ·B·d)."""
    (tmp_path / "net.py").write_text(NET)
    tau, d = 0.25, 5
    mods = f'split = at(["block2"]); aux = linear; transport = fixed(tau={tau})'
    path = spec(tmp_path, mods, model='"net.py:build"(width=5)', optimizer="sgd(lr=1.0)", steps=1,
                data="synthetic(shape=[6], classes=3, samples=40, batch=8)")
    compiled, init = compiled_with_init(path)
    assert [info.residuals for info in compiled.graph.table(MODULES).values()] == [1, 1]
    result = train(compiled, save=False, device="cpu")
    x, y = next(batches(compiled.bound.data, 1))
    w2 = init.block2.branch.weight.detach()
    with torch.no_grad():
        h = init.stem(x)  # module 0's input to block 1
        want0 = 0.25 * h.pow(2).mean()  # mean((½ h)²)
        h2 = 1.5 * h  # block 1's output: h + ½ h
        want1 = (h2 @ w2.T).pow(2).mean()
    (rec,) = module_records(result)
    assert rec["m0"]["transport"] == pytest.approx(want0.item(), rel=1e-12)
    assert rec["m1"]["transport"] == pytest.approx(want1.item(), rel=1e-12)
    assert rec["m0"]["tau"] == rec["m1"]["tau"] == tau

    # the gradient of block 2's W: CE's part by autograd, the transport's in closed form
    ref = copy.deepcopy(init)
    w = ref.block2.branch.weight
    ce = F.cross_entropy(ref.head(ref.block2(h2)), y)
    (g_ce,) = torch.autograd.grad(ce, [w])
    big_r = h2 @ w2.T
    g_transport = big_r.T @ h2 / (tau * x.shape[0] * d)
    got = init.block2.branch.weight.detach() - result.model.block2.branch.weight.detach()
    torch.testing.assert_close(got, g_ce + g_transport, rtol=0, atol=1e-10)
    # block 1's W in module 0: CE of aux.0 on the block's output, plus its own transport only
    w1 = ref.block1.branch.weight
    out1 = ref.block1(ref.stem(x))
    (g1,) = torch.autograd.grad(F.cross_entropy(ref.aux[0](out1), y), [w1])
    r1 = 0.5 * h
    g1 = g1 + r1.T @ h / (tau * x.shape[0] * d)
    got1 = init.block1.branch.weight.detach() - result.model.block1.branch.weight.detach()
    torch.testing.assert_close(got1, g1, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- 4. a parallel run


def test_parallel_training_loop_matches_reference(tmp_path: Path) -> None:
    """Ten steps (two and a half epochs) of parallel TRGL with momentum SGD and weight decay:
    every parameter and batch-norm statistic of every module and head, and each step's module
    losses and transport costs."""
    steps = 10
    mods = 'split = at(["layer2", "layer3"]); aux = conv(width=4); transport = fixed(tau=0.5)'
    path = spec(tmp_path, mods, model="resnet(depth=14, width=4)", steps=steps,
                optimizer="sgd(lr=0.05, momentum=0.9, weight_decay=1e-3)")
    compiled, init = compiled_with_init(path)
    result = train(compiled, save=False, device="cpu")
    want, history = parallel_reference(init, compiled.bound.data, [2, 2, 2], [0.5] * 3, steps,
                                       lr=0.05, mu=0.9, wd=1e-3)
    assert_states(result.model, want, 1e-12)
    records = module_records(result)
    assert len(records) == steps
    for rec, terms in zip(records, history, strict=True):
        for k, (ce, cost) in enumerate(terms):
            assert rec[f"m{k}"]["loss"] == pytest.approx(ce, rel=0, abs=1e-12)
            assert rec[f"m{k}"]["transport"] == pytest.approx(cost, rel=0, abs=1e-12)


# --------------------------------------------------------------------------- 5. staged regimes


def staged_reference(init: nn.Module, data, sizes: list[int], tau: float, *, laps: int, epochs: int,
                     lr: float, mu: float, wd: float, schedule: Callable[[int, int], float]) -> nn.Module:
    """Sequential (laps = 1) and multi-lap sequential training: R laps over the modules, module k
    training N/R epochs per lap on the outputs of modules < k run frozen (no grad, eval mode);
    modules after k do not run. The run's epochs follow one another (stage after stage); each
    module keeps its momentum across laps and its lr follows schedule(c, T) at its own step c of
    its T = N·spe steps."""
    model = copy.deepcopy(init)
    model.train()
    hand = Hand(model, sizes)
    opt = Momentum(mu, wd)
    per_lap = epochs // laps
    spe = data.steps_per_epoch()
    total = epochs * spe  # each module's own training, all its laps
    clock = [0] * hand.K
    epoch = 0
    for _ in range(laps):
        for k in range(hand.K):
            for _ in range(per_lap):
                for x, y in epoch_batches(data, epoch):
                    h = x
                    with torch.no_grad():
                        for j in range(k):
                            hand.set_mode(j, False)
                            h, _ = hand.module(j, h)
                            hand.set_mode(j, True)
                    out, rs = hand.module(k, h)
                    ce = F.cross_entropy(hand.head(k, out), y)
                    cost = sum(r.pow(2).mean() for r in rs)
                    params = list(hand.params(k).values())
                    grads = torch.autograd.grad(loss_of(ce, cost, tau), params)
                    opt.step(params, grads, lr * schedule(clock[k], total))
                    clock[k] += 1
                epoch += 1
    return model


def constant(c: int, total: int) -> float:
    return 1.0


def linear_to_0_2(c: int, total: int) -> float:
    return 1.0 + (0.2 - 1.0) * min(c, total) / total


@pytest.mark.parametrize(("regime", "laps", "epochs", "extra", "schedule"), [
    ("sequential(epochs=2)", 1, 2, "", constant),
    ("sequential(epochs=2)", 1, 2, "schedule linear(end=0.2)", linear_to_0_2),
    ("laps(laps=2, epochs=2)", 2, 2, "schedule linear(end=0.2)", linear_to_0_2),
    ("laps(laps=3, epochs=3)", 3, 3, "", constant),
])
def test_staged_regimes_match_reference(tmp_path: Path, regime: str, laps: int, epochs: int, extra: str,
                                        schedule: Callable[[int, int], float]) -> None:
    mods = f"split = equal(3); aux = linear; transport = fixed(tau=0.5); regime = {regime}"
    path = spec(tmp_path, mods, steps=None, extra=extra,
                optimizer="sgd(lr=0.1, momentum=0.9, weight_decay=1e-3)")
    compiled, init = compiled_with_init(path)
    result = train(compiled, save=False, device="cpu")
    spe = compiled.bound.data.steps_per_epoch()
    assert result.summary["steps"] == 3 * epochs * spe  # K stages × epochs each, all laps
    want = staged_reference(init, compiled.bound.data, [1, 1, 1], 0.5, laps=laps, epochs=epochs,
                            lr=0.1, mu=0.9, wd=1e-3, schedule=schedule)
    assert_states(result.model, want, 1e-12)


# --------------------------------------------------------------------------- 6. multipliers


def test_multipliers_follow_the_seed(tmp_path: Path) -> None:
    """loss_k = λ_k·CE_k + Σ mean(r²); at module-step t > 0 with t mod s = 0, λ_k ← λ_k + h·CE_k
    (this step's CE, before the loss is formed). The λ of every step's metrics and the final
    weights equal the reference; with s = 3 over 11 steps λ moves at steps 3, 6, 9."""
    steps, lam0, h, every = 11, 0.8, 0.3, 3
    mods = f"split = equal(3); aux = mlp(hidden=8); transport = multipliers(lambda0={lam0}, h={h}, every={every})"
    path = spec(tmp_path, mods, steps=steps)
    compiled, init = compiled_with_init(path)
    result = train(compiled, save=False, device="cpu")

    model = copy.deepcopy(init)
    model.train()
    hand = Hand(model, [1, 1, 1])
    opt = Momentum(0.9)
    lam = [lam0] * 3
    lams = []
    for t, (x, y) in enumerate(batches(compiled.bound.data, steps)):
        terms = local_terms(hand, x, y)
        grads = []
        for k, (ce, cost) in enumerate(terms):
            if t > 0 and t % every == 0:
                lam[k] = lam[k] + h * ce.item()
            params = list(hand.params(k).values())
            grads.append((params, torch.autograd.grad(lam[k] * ce + cost, params)))
        for params, g in grads:
            opt.step(params, g, 0.05)
        lams.append(list(lam))
    records = module_records(result)
    assert len(records) == steps
    for t, (rec, want) in enumerate(zip(records, lams, strict=True)):
        for k in range(3):
            assert rec[f"m{k}"]["lambda"] == pytest.approx(want[k], rel=1e-12), (t, k)
    assert len({tuple(v) for v in lams}) == 4  # λ0 and three updates
    assert_states(result.model, model, 1e-12)


# --------------------------------------------------------------------------- 7. doubled


@pytest.mark.parametrize(("split", "sizes", "paths"), [
    ("equal(4)", [2, 2, 1, 1], ["", "layer2", "layer3", "layer3.1"]),
    ("equal(3)", [2, 2, 2], ["", "layer2", "layer3"]),
])
def test_doubled_halves_tau_of_the_first_half(tmp_path: Path, split: str, sizes: list[int],
                                              paths: list[str]) -> None:
    tau, steps, k = 0.4, 5, len(sizes)
    mods = f"split = {split}; aux = linear; transport = doubled(tau={tau})"
    path = spec(tmp_path, mods, model="resnet(depth=14, width=4)", steps=steps)
    compiled, init = compiled_with_init(path)
    assert [info.path for info in compiled.graph.table(MODULES).values()] == paths
    taus = [tau / 2] * (k // 2) + [tau] * (k - k // 2)
    assert [compiled.graph.table(MODULES)[f"m{i}"].tau for i in range(k)] == taus
    result = train(compiled, save=False, device="cpu")
    want, _ = parallel_reference(init, compiled.bound.data, sizes, taus, steps, lr=0.05, mu=0.9)
    assert_states(result.model, want, 1e-12)
    assert [module_records(result)[-1][f"m{i}"]["tau"] for i in range(k)] == taus
