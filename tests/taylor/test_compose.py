"""Taylor mode composed with the rest of torch, and its contract at the edges: vmap at any batch
size, gradients with respect to weights (as arguments and closed over; torch.func and autograd),
the trace cache (no re-trace per call, no stale closures), the fallback of ``method="auto"`` and
the piecewise-linear warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from helpers import assert_close
from torch import Tensor, nn

import hodfunc
from hodfunc._taylor import _trace
from hodfunc.testing import assert_equivalent

F64 = torch.float64


def _params(width: int = 8) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "w1": torch.randn(width, 1, generator=g, dtype=F64),
        "b1": torch.randn(width, generator=g, dtype=F64),
        "w2": torch.randn(width, width, generator=g, dtype=F64) / 3,
        "w3": torch.randn(width, generator=g, dtype=F64),
    }


def _net(p: dict[str, Tensor], x: Tensor) -> Tensor:
    h = torch.tanh(p["w1"] @ x.reshape(1) + p["b1"])
    return p["w3"] @ torch.sin(p["w2"] @ h)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_vmap_at_any_batch_size_matches_a_loop(batch: int) -> None:
    p = _params()
    xs = torch.linspace(-1, 1, batch, dtype=F64)
    d = hodfunc.derivatives(lambda x: _net(p, x), 5, method="taylor")
    got = torch.func.vmap(d)(xs)
    assert_close(got, torch.stack([d(x) for x in xs]))
    assert_close(
        got[:, 5], torch.stack([hodfunc.derivative(lambda x: _net(p, x), 5)(x) for x in xs])
    )


def _order4_loss(method: str) -> Callable[[dict[str, Tensor]], Tensor]:
    xs = torch.linspace(-1, 1, 4, dtype=F64)

    def loss(p: dict[str, Tensor]) -> Tensor:
        d4 = hodfunc.derivative(_net, 4, argnums=1, method=method)  # type: ignore[arg-type]
        return (torch.func.vmap(d4, in_dims=(None, 0))(p, xs) ** 2).mean()

    return loss


def test_weight_gradient_of_an_order_4_loss_with_weights_as_arguments() -> None:
    p = _params()
    got = torch.func.grad(_order4_loss("taylor"))(p)
    ref = torch.func.grad(_order4_loss("nested"))(p)
    for k in p:
        assert_close(got[k], ref[k])


def test_weight_gradient_of_an_order_4_loss_with_closed_over_weights() -> None:
    x = torch.tensor(0.4, dtype=F64)

    def loss(method: str) -> Callable[[dict[str, Tensor]], Tensor]:
        def inner(p: dict[str, Tensor]) -> Tensor:
            def f(t: Tensor) -> Tensor:  # closes over p, which torch.func.grad wraps
                return _net(p, t)

            return hodfunc.derivative(f, 4, method=method)(x) ** 2  # type: ignore[arg-type]

        return inner

    p = _params()
    got = torch.func.grad(loss("taylor"))(p)
    ref = torch.func.grad(loss("nested"))(p)
    for k in p:
        assert_close(got[k], ref[k])
        assert got[k].abs().max() > 0


def test_autograd_training_step_through_a_closed_over_module() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    xs = torch.linspace(-1, 1, 5, dtype=F64)
    grads = {}
    methods: tuple[hodfunc.Method, ...] = ("taylor", "nested")
    for method in methods:
        d3 = hodfunc.derivative(lambda t: net(t.reshape(1)).squeeze(), 3, method=method)
        loss = (torch.func.vmap(d3)(xs) ** 2).sum()
        grads[method] = torch.autograd.grad(loss, list(net.parameters()))
    for a, b in zip(grads["taylor"], grads["nested"], strict=True):
        assert_close(a, b)


def test_a_transform_traces_once_per_signature_and_never_per_call() -> None:
    """Once per point shape; under ``vmap`` over points also once per batch size (the whole
    batch runs as one program)."""
    p = _params()
    d = hodfunc.derivatives(lambda x: _net(p, x), 3, method="taylor")
    before = _trace.TRACES[0]
    for x in torch.linspace(0, 1, 4, dtype=F64):
        d(x)
    assert _trace.TRACES[0] - before == 1
    torch.func.vmap(d)(torch.zeros(6, dtype=F64))  # the whole batch: one more per batch size
    torch.func.vmap(d)(torch.zeros(6, dtype=F64))
    torch.func.vmap(d)(torch.zeros(9, dtype=F64))
    torch.func.vmap(d)(torch.zeros(9, dtype=F64))
    assert _trace.TRACES[0] - before == 3

    g = hodfunc.directional_derivative(lambda x: torch.sin(x).sum(), 2, method="taylor")
    before = _trace.TRACES[0]
    for n in (2, 2, 3, 3, 2):
        g(torch.ones(n, dtype=F64), torch.ones(n, dtype=F64))
    assert _trace.TRACES[0] - before == 2  # one per shape


def test_a_closure_that_now_holds_other_tensors_is_not_stale() -> None:
    state = {"w": torch.tensor([1.0, 2.0], dtype=F64)}

    def f(x: Tensor) -> Tensor:
        return (state["w"] * torch.sin(x)).sum()

    d = hodfunc.partial(f, (0, 0), method="taylor")
    x = torch.tensor([0.3, 0.4], dtype=F64)
    first = d(x)
    state["w"] = torch.tensor([-5.0, 7.0], dtype=F64)  # a new tensor, same shape: no re-trace
    before = _trace.TRACES[0]
    assert_close(d(x), hodfunc.partial(f, (0, 0), method="nested")(x))
    assert _trace.TRACES[0] == before
    assert not torch.allclose(d(x), first)


def test_an_op_without_a_rule_raises_under_taylor_and_falls_back_once_under_auto() -> None:
    def f(x: Tensor) -> Tensor:
        return torch.lgamma(x + 3) * torch.sin(x)

    x = torch.tensor(0.7, dtype=F64)
    with pytest.raises(hodfunc.UnsupportedOperationError, match=r"aten\.lgamma\.default"):
        hodfunc.derivative(f, 3, method="taylor")(x)
    auto = hodfunc.derivative(f, 3, method="auto")
    with pytest.warns(hodfunc.FallbackWarning, match=r"aten\.lgamma"):
        got = auto(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = auto(x)  # one warning per transform
    ref = hodfunc.derivative(f, 3, method="nested")(x)
    assert_close(got, ref)
    assert_close(again, ref)


def test_data_dependent_control_flow_is_refused_not_baked_in() -> None:
    def f(x: Tensor) -> Tensor:
        return torch.sin(x) if x > 0 else torch.exp(x)

    with pytest.raises(hodfunc.UnsupportedOperationError, match="data-dependent"):
        hodfunc.derivative(f, 2, method="taylor")(torch.tensor(0.5, dtype=F64))
    # auto's fallback refuses a branch on the input too (tests/test_functional.py)
    with pytest.raises(hodfunc.NonFunctionalError, match=r"torch\.where"):
        hodfunc.derivative(f, 2)(torch.tensor(-0.5, dtype=F64))


@pytest.mark.parametrize(
    ("op", "fn"),
    [
        ("aten.relu", torch.relu),
        ("aten.abs", torch.abs),
        ("aten.clamp", lambda u: torch.clamp(u, -0.5, 0.5)),
        ("aten.maximum", lambda u: torch.maximum(u, torch.zeros_like(u))),
        ("aten.leaky_relu", nn.functional.leaky_relu),
        ("aten.hardtanh", nn.functional.hardtanh),
    ],
)
def test_piecewise_linear_ops_warn_once_at_order_2_and_up(
    op: str, fn: Callable[[Tensor], Tensor]
) -> None:
    w = torch.tensor([0.7, -1.3, 0.4], dtype=F64)

    def f(x: Tensor) -> Tensor:
        return (torch.sin(x) * fn(w * x)).sum()

    x = torch.tensor(0.3, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hodfunc.derivative(f, 1, method="taylor")(x)  # order 1: nothing to explain
    d2 = hodfunc.derivative(f, 2, method="taylor")
    with pytest.warns(hodfunc.PiecewiseLinearWarning, match=op + r".*zero almost everywhere"):
        got = d2(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d2(x)
    assert_close(got, hodfunc.derivative(f, 2, method="nested")(x))


def test_a_mask_computed_through_abs_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = hodfunc.directional_derivative(lambda x: torch.logsumexp(x * x, 0), 3, method="taylor")
        x = torch.tensor([0.1, 0.5], dtype=F64)
        d(x, torch.ones_like(x))


def test_assert_equivalent_includes_taylor() -> None:
    results = assert_equivalent(
        lambda x: torch.tanh(x) * torch.exp(x / 3), torch.tensor(0.4, dtype=F64), order=6
    )
    assert "taylor" in results
    results = assert_equivalent(
        lambda x: torch.sin(x[0]) * x[1] ** 3 * torch.exp(x[2]),
        torch.tensor([0.2, 0.7, -0.4], dtype=F64),
        order=3,
    )
    assert "taylor" in results


def _whole_batch_runs(d: Callable[[Tensor], Tensor], xs: Tensor) -> bool:
    """Whether ``vmap(d)(xs)`` traced a program for the whole batch (a new batch size)."""
    before = _trace.TRACES[0]
    torch.func.vmap(d)(xs)
    return _trace.TRACES[0] - before >= 1


@pytest.mark.parametrize("batch", [1, 5, 33])
def test_the_whole_batch_path_with_batched_directions_and_a_shared_argument(batch: int) -> None:
    """(``test_vmap_at_any_batch_size_matches_a_loop`` covers the plain whole-batch case.)"""
    v = torch.randn(batch, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    g = hodfunc.directional_derivative(lambda y, s: (torch.sin(y) * s).sum(), 3, method="taylor")
    ones = torch.ones(batch, 3, dtype=F64)
    assert _whole_batch_runs(lambda y: g(y, torch.ones(3, dtype=F64), y), ones)
    points = torch.randn(batch, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    scale = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    want = torch.stack([g(y, scale, w) for y, w in zip(points, v, strict=True)])
    assert_close(torch.func.vmap(g, in_dims=(0, None, 0))(points, scale, v), want)


def test_the_whole_batch_path_steps_aside_for_batched_weights_and_gradients() -> None:
    p = _params()
    d = hodfunc.derivatives(lambda x: _net(p, x), 3, method="taylor")
    assert _whole_batch_runs(d, torch.zeros(11, dtype=F64))
    # a weight batched alongside the points: per point
    w3 = torch.randn(12, 8, dtype=F64)

    def with_weight(x: Tensor, w: Tensor) -> Tensor:
        return hodfunc.derivatives(lambda y: _net({**p, "w3": w}, y), 3, method="taylor")(x)

    xs = torch.linspace(0, 1, 12, dtype=F64)
    got = torch.func.vmap(with_weight)(xs, w3)
    assert_close(got, torch.stack([with_weight(x, w) for x, w in zip(xs, w3, strict=True)]))
    # gradients with respect to the weights: per point, and exact
    w = p["w2"].clone().requires_grad_()
    loss = torch.func.vmap(
        hodfunc.derivatives(lambda y: _net({**p, "w2": w}, y), 3, method="taylor")
    )(xs)[:, 3].sum()
    (grad,) = torch.autograd.grad(loss, w)
    nested = torch.func.vmap(
        hodfunc.derivatives(lambda y: _net({**p, "w2": w}, y), 3, method="nested")
    )(xs)[:, 3].sum()
    (want,) = torch.autograd.grad(nested, w)
    assert_close(grad, want)


def test_whole_batch_traces_are_kept_for_the_last_few_batch_sizes_only() -> None:
    p = _params()
    cache = _trace.TraceCache()
    for size in range(1, 12):
        cache.bind(
            "test", lambda x: _net(p, x), (torch.zeros(size, dtype=F64),), {}, 0, batched=True
        )
    assert len(cache._batched) == _trace.TraceCache.BATCH_SIZES_KEPT
