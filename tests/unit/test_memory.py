"""Activation-memory meter: exact saved-tensor bytes, dedup, release, module-wise vs end-to-end."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from mrc.runtime.memory import ActivationMeter, StepMemory, measure_step

B, W = 32, 100
F64 = 8
UNIT = B * W * F64  # one (32, 100) float64 activation: 25600 bytes


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(W, W), nn.ReLU(), nn.Linear(W, W)).double()


def _batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(B, W, dtype=torch.float64)


def test_mlp_saved_bytes_exact() -> None:
    """Linear-ReLU-Linear, loss = sum: what autograd saves, tensor by tensor.

    Linear 1 (addmm): the input x (mat1, for the weight's grad); not weight.t(), since x needs
    no grad. ReLU: its output (threshold_backward's mask source). Linear 2 (addmm): the ReLU
    output again (same storage, counted once) and weight.t() (a view of a parameter, excluded).
    sum saves only sizes. So: x + ReLU output = 2 units, or 1 with x excluded.
    """
    model, x = _mlp(), _batch()
    with ActivationMeter() as meter:
        model(x).sum().backward()
    assert meter.peak_saved_bytes == 2 * UNIT
    assert meter.peak_bytes == 2 * UNIT

    meter = ActivationMeter()
    meter.exclude(x)
    with meter:
        model(x).sum().backward()
    assert meter.peak_saved_bytes == UNIT


def test_hooks_are_installed() -> None:
    """Cannot pass without the hooks: a grad forward inside the meter counts, one outside does not."""
    model, x = _mlp(), _batch()
    outside = model(x).sum()
    with ActivationMeter() as meter:
        assert meter.live_saved_bytes == 0
        loss = model(x).sum()
        assert meter.live_saved_bytes == 2 * UNIT
        assert meter.peak_saved_bytes > 0
        outside.backward()  # a graph built outside the meter is not in its count
        assert meter.live_saved_bytes == 2 * UNIT
        loss.backward()
    assert meter.peak_saved_bytes == 2 * UNIT


def test_no_grad_forward_counts_zero() -> None:
    model, x = _mlp(), _batch()
    with ActivationMeter() as meter, torch.no_grad():
        model(x).sum()
    assert meter.peak_saved_bytes == 0
    assert meter.result() == StepMemory(bytes=0, kind="saved_tensors", steps=0)


def test_tensor_saved_twice_counts_once() -> None:
    """h * h saves h as both self and other: one storage, one charge."""
    lin, x = _mlp()[0], _batch()
    meter = ActivationMeter()
    meter.exclude(x)
    with meter:
        h = lin(x)
        loss = (h * h).sum()
        assert meter.live_saved_bytes == UNIT
        loss.backward()
    assert meter.peak_saved_bytes == UNIT


def test_views_share_their_storage_charge() -> None:
    """A view saved next to its base is the same storage: counted once, at the storage's size."""
    x = _batch().requires_grad_()
    with ActivationMeter() as meter:
        h = x * 2.0  # saves nothing (mul by a Python scalar): x is never saved
        loss = (h[:10] * h[10:20]).sum()  # mul saves both views, each a tenth of h's storage
        assert meter.live_saved_bytes == UNIT
        loss.backward()
    assert meter.live_saved_bytes == 0


def test_parameters_are_not_counted() -> None:
    """A parameter (trainable or frozen), a leaf requiring grad, and views of them are model state."""
    w = nn.Parameter(torch.randn(W, W, dtype=torch.float64))
    frozen = nn.Parameter(torch.randn(W, W, dtype=torch.float64), requires_grad=False)
    leaf = torch.randn(B, W, dtype=torch.float64, requires_grad=True)
    with ActivationMeter() as meter:
        h = leaf @ w.t() @ frozen
        # mm 1 saves leaf and w.t(), mm 2 saves frozen (not its mat1: frozen needs no grad)
        assert meter.live_saved_bytes == 0
        loss = (h * h).sum()  # an activation next to them is counted
    assert meter.peak_saved_bytes == UNIT
    loss.backward()


def test_released_after_backward_and_when_graph_dropped() -> None:
    model, x = _mlp(), _batch()
    with ActivationMeter() as meter:
        loss = model(x).sum()
        assert meter.live_saved_bytes == 2 * UNIT
        loss.backward()  # retain_graph=False frees the saved variables
        assert meter.live_saved_bytes == 0
        loss = model(x).sum()
        assert meter.live_saved_bytes == 2 * UNIT
        del loss  # the graph dropped unused frees them too, without waiting for the gc
        assert meter.live_saved_bytes == 0
    assert meter.peak_saved_bytes == 2 * UNIT


def test_retain_graph_keeps_until_released() -> None:
    model, x = _mlp(), _batch()
    with ActivationMeter() as meter:
        loss = model(x).sum()
        loss.backward(retain_graph=True)
        assert meter.live_saved_bytes == 2 * UNIT
        loss.backward()
        assert meter.live_saved_bytes == 0


def test_successive_pairs_peak_once_overlapping_pairs_peak_twice() -> None:
    model, x = _mlp(), _batch()
    with ActivationMeter() as meter:
        for _ in range(2):
            meter.run(lambda: model(x).sum().backward())
    assert meter.peak_saved_bytes == 2 * UNIT
    assert meter.result().steps == 2

    with ActivationMeter() as meter:  # a new block starts a fresh measurement
        a = model(x).sum()
        b = model(x).sum()
        a.backward()
        b.backward()
    # x is the same storage in both graphs: 1 unit, plus one ReLU output per graph
    assert meter.peak_saved_bytes == 3 * UNIT
    assert meter.live_saved_bytes == 0

    meter = ActivationMeter()
    meter.exclude(x)
    with meter:
        a = model(x).sum()
        b = model(x).sum()
        a.backward()
        b.backward()
    assert meter.peak_saved_bytes == 2 * UNIT


def _blocks(n: int) -> list[nn.Module]:
    torch.manual_seed(2)
    return [nn.Sequential(nn.Linear(W, W), nn.ReLU()).double() for _ in range(n)]


def test_module_wise_peak_below_end_to_end() -> None:
    """4 equal blocks: end to end keeps every block's graph until the one backward; module-wise
    frees each block's graph before the next runs.

    Per block the Linear saves its input and the ReLU its output; a block's input is the previous
    ReLU output (the same storage). End to end: 4 ReLU outputs (x excluded) = 4 units. Module-wise:
    the block's (detached) input, whose storage is the previous ReLU output, and its own output
    = 2 units.
    """
    blocks, x = _blocks(4), _batch()
    e2e = ActivationMeter()
    e2e.exclude(x)
    with e2e:
        h = x
        for block in blocks:
            h = block(h)
        h.sum().backward()

    mw = ActivationMeter()
    mw.exclude(x)
    with mw:
        h = x
        for block in blocks:
            h = block(h)
            h.sum().backward()
            h = h.detach()

    assert e2e.peak_saved_bytes == 4 * UNIT
    assert mw.peak_saved_bytes == 2 * UNIT
    assert mw.peak_saved_bytes < 0.6 * e2e.peak_saved_bytes


def test_measure_step_and_result() -> None:
    model, x = _mlp(), _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step() -> None:
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()

    mem = measure_step(step, torch.device("cpu"), exclude=[x])
    assert mem == StepMemory(bytes=UNIT, kind="saved_tensors", steps=1)
    assert mem.mib == pytest.approx(UNIT / 2**20)


def test_higher_order_gradients_unchanged_under_meter() -> None:
    """The holders hand autograd back tensors it can differentiate through (create_graph)."""
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)

    def grads() -> tuple[torch.Tensor, torch.Tensor]:
        g, = torch.autograd.grad(torch.tanh(w * w).sum(), w, create_graph=True)
        gg, = torch.autograd.grad(g.sum(), w)
        return g.detach(), gg

    expected = grads()
    with ActivationMeter() as meter:
        got = grads()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert meter.peak_saved_bytes > 0
    gc.collect()
    assert meter.live_saved_bytes == 0


def test_meter_misuse() -> None:
    with pytest.raises(RuntimeError, match="never entered"):
        ActivationMeter().result()
    meter = ActivationMeter()
    with meter, pytest.raises(RuntimeError, match="already active"), meter:
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        ActivationMeter("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_allocator_peak() -> None:
    device = torch.device("cuda")
    model = _mlp().to(device)
    x = _batch().to(device)
    mem = measure_step(lambda: model(x).sum().backward(), device)
    assert mem.kind == "cuda_allocator"
    assert mem.steps == 1
    assert mem.bytes >= UNIT  # at least the ReLU output the backward needs
