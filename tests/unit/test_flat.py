"""FlatGroup: parameters re-pointed into one buffer keep training and checkpointing as before."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from mrc.kernels.flat import FlatGroup
from torch import nn


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(),
        nn.Linear(5 * 4 * 4, 7), nn.ReLU(), nn.Linear(7, 3),
    )


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _loss(model: nn.Module, seed: int = 1) -> torch.Tensor:
    x, y = _batch(seed)
    return nn.functional.cross_entropy(model(x), y)


def test_state_dict_unchanged_in_names_shapes_and_values() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    group = FlatGroup(list(model.parameters()))
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].shape == v.shape and after[k].dtype == v.dtype
        assert torch.equal(after[k], v), k
    assert group.is_intact()
    # the parameters now live in the flat buffer: writing it changes the model
    with torch.no_grad():
        group.data.add_(1.0)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name] + 1.0), name


def test_state_dict_round_trips_through_torch_save() -> None:
    model = _model()
    FlatGroup(list(model.parameters()))
    blob = io.BytesIO()
    torch.save(model.state_dict(), blob)
    blob.seek(0)
    fresh = _model(seed=5)
    fresh.load_state_dict(torch.load(blob))
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_load_state_dict_writes_into_the_flat_buffer() -> None:
    model = _model()
    group = FlatGroup(list(model.parameters()))
    other = _model(seed=3)
    model.load_state_dict(other.state_dict())
    assert group.is_intact()
    for i, p in enumerate(other.parameters()):
        assert torch.equal(group.view(group.data, i), p.detach())


def test_layout_is_aligned_and_padding_is_zero() -> None:
    model = _model()
    group = FlatGroup(list(model.parameters()), align=16)
    assert group.numel % 16 == 0
    covered = torch.zeros(group.numel, dtype=torch.bool)
    for off, size in group.segments:
        assert off % 16 == 0
        covered[off:off + size] = True
    assert torch.all(group.data[~covered] == 0)
    assert torch.all(group.grad_buffer[~covered] == 0)


def test_backward_writes_into_the_flat_gradient_without_a_copy() -> None:
    model = _model()
    reference = copy.deepcopy(model)
    group = FlatGroup(list(model.parameters()))
    _loss(model).backward()
    _loss(reference).backward()
    assert group.grads_are_views()  # autograd accumulated into the views in place
    flat = group.grad()
    assert flat.data_ptr() == group.grad_buffer.data_ptr()
    for i, p in enumerate(reference.parameters()):
        torch.testing.assert_close(group.view(flat, i), p.grad, rtol=0, atol=0)
    # a second backward accumulates, as usual
    _loss(model, seed=2).backward()
    _loss(reference, seed=2).backward()
    for i, p in enumerate(reference.parameters()):
        torch.testing.assert_close(group.view(group.grad(), i), p.grad, rtol=1e-6, atol=1e-7)


def test_grad_gathers_after_zero_grad_set_to_none_and_reattaches() -> None:
    model = _model()
    reference = copy.deepcopy(model)
    group = FlatGroup(list(model.parameters()))
    _loss(model).backward()
    model.zero_grad(set_to_none=True)  # the views are gone
    assert all(p.grad is None for p in model.parameters())
    _loss(model, seed=4).backward()  # fresh, non-view gradients
    assert not group.grads_are_views()
    _loss(reference, seed=4).backward()
    flat = group.grad()  # gathers and re-attaches
    assert group.grads_are_views()
    for i, p in enumerate(reference.parameters()):
        torch.testing.assert_close(group.view(flat, i), p.grad, rtol=0, atol=0)


def test_missing_gradient_counts_as_zero() -> None:
    model = _model()
    group = FlatGroup(list(model.parameters()), grad_views=False)
    group.grad_buffer.fill_(7.0)
    last = list(model.parameters())[-1]
    last.grad = torch.ones_like(last)
    flat = group.grad()
    n = len(group) - 1
    assert torch.all(group.view(flat, n) == 1.0)
    assert all(torch.all(group.view(flat, i) == 0.0) for i in range(n))


def test_training_through_views_matches_plain_training() -> None:
    """torch.optim.SGD on the (flat-backed) parameters trains exactly as on a plain model,
    and the flat buffer follows every step."""
    model, reference = _model(), _model()
    group = FlatGroup(list(model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, foreach=False)
    for step in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad(set_to_none=False)
            _loss(m, seed=step).backward()
            o.step()
        assert group.is_intact() and group.grads_are_views()
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_flat_update_on_the_buffer_is_seen_by_the_model() -> None:
    """One whole-buffer SGD step on the flat buffers equals torch.optim.SGD per tensor."""
    model, reference = _model(), _model()
    group = FlatGroup(list(model.parameters()))
    _loss(model).backward()
    _loss(reference).backward()
    with torch.no_grad():
        group.data.add_(group.grad(), alpha=-0.05)
    torch.optim.SGD(reference.parameters(), lr=0.05).step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_buffers_are_float32_for_bfloat16_params() -> None:
    params = [nn.Parameter(torch.randn(3, 5).bfloat16()), nn.Parameter(torch.randn(7).bfloat16())]
    group = FlatGroup(params)
    assert group.data.dtype == torch.bfloat16 and group.grad_buffer.dtype == torch.bfloat16
    m = group.state("momentum")
    assert m.dtype == torch.float32 and m.numel() == group.numel
    assert group.state("momentum") is m  # allocated once
    assert group.state_names == ("momentum",)
    assert [v.shape for v in group.views(m)] == [p.shape for p in params]
    with pytest.raises(ValueError, match="float32"):
        group.state("momentum", torch.bfloat16)


def test_channels_last_layout_is_kept() -> None:
    w = nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last))
    b = nn.Parameter(torch.randn(4))
    before = w.detach().clone()
    FlatGroup([w, b])
    assert w.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(w, before)


def test_span_of_adjacent_parameters_and_errors() -> None:
    model = _model()
    params = list(model.parameters())
    group = FlatGroup(params)
    start, stop = group.span(params[2:4])
    assert start == group.offsets[2]
    assert stop == group.offsets[4]
    assert group.span(params) == (0, group.numel)
    with pytest.raises(ValueError, match="adjacent"):
        group.span([params[0], params[3]])
    with pytest.raises(ValueError, match="group is"):
        FlatGroup([nn.Parameter(torch.randn(2)), nn.Parameter(torch.randn(2).double())])
    with pytest.raises(ValueError, match="twice"):
        FlatGroup([params[0], params[0]])


def test_reassigning_param_data_is_detected() -> None:
    model = _model()
    group = FlatGroup(list(model.parameters()))
    assert group.is_intact()
    model[0].weight.data = model[0].weight.data.clone()
    assert not group.is_intact()
