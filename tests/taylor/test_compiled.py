"""``method="compiled"``: the propagation as one compiled graph, and transforms inside
``torch.compile(fullgraph=True)`` training steps.

Oracles: eager Taylor mode (``method="taylor"``) on the same function, for values and for weight
gradients (1e-6 relative in float32, 1e-12 in float64), and the uncompiled step for
``torch.compile``. Compiling takes seconds, so CI keeps one test per kind; the wider sweep is
marked ``compile_slow`` (``pytest -m compile_slow``).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import hodfunc
from hodfunc import Method
from hodfunc._taylor import _compiled

F32, F64 = torch.float32, torch.float64
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()
    # graphs per function count afresh in each test (they share u_of)
    monkeypatch.setattr(_compiled, "_GRAPHS", {})


def mlp(dtype: torch.dtype, width: int = 16) -> Callable[[Tensor], Tensor]:
    """The same float32 weights in either dtype (float64: the exact reference of float32)."""
    g = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(width, 1, generator=g).to(dtype), torch.randn(width, generator=g).to(dtype)
    w2 = (torch.randn(width, width, generator=g) / width**0.5).to(dtype)
    w3 = (torch.randn(width, generator=g) / width**0.5).to(dtype)

    def f(x: Tensor) -> Tensor:
        out: Tensor = w3 @ torch.tanh(w2 @ torch.tanh(w1 @ x.reshape(1) + b1))
        return out

    return f


def errors(got: Tensor, want: Tensor) -> Tensor:
    """Per order (leading dim): the largest difference relative to that order's scale, as the
    benchmarks measure it."""
    want = want.double()
    scale = want.abs().reshape(want.shape[0], -1).amax(1).clamp(min=1e-30)
    return (got.double() - want).abs().reshape(want.shape[0], -1).amax(1) / scale


def close(got: Tensor, want: Tensor, rtol: float) -> bool:
    return bool((errors(got, want) <= rtol).all())


def as_accurate(got: Tensor, eager: Tensor, exact: Tensor) -> bool:
    """float32 against float64 on the same weights: the compiled answer errs no more than eager
    Taylor mode does (x2), or agrees with eager to 1e-6. At high order the float32 rounding of
    the recurrences is itself above 1e-6, and any reordering of a sum (inductor's fused loops)
    shows it, so equality to eager alone cannot be asked there."""
    bound = torch.maximum(2 * errors(eager, exact), torch.tensor(1e-6, dtype=torch.float64))
    return bool((errors(got, exact) <= bound).all()) or close(got, eager, 1e-6)


def pinn_net(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    ).to(dtype)


def u_of(net: nn.Module, z: Tensor) -> Tensor:
    out: Tensor = net(z).squeeze(-1)
    return out


def residual_step(method: Method) -> Callable[[nn.Module, Tensor], Tensor]:
    """Burgers-like residual u_t + u u_x - 0.01 u_xx from ``partials``, then its mean square."""
    terms = {"u": (), "t": (0,), "x": (1,), "xx": (1, 1)}
    parts = hodfunc.partials(u_of, terms, argnums=1, method=method)

    def step(net: nn.Module, z: Tensor) -> Tensor:
        p = torch.func.vmap(parts, in_dims=(None, 0))(net, z)
        return (p["t"] + p["u"] * p["x"] - 0.01 * p["xx"]).square().mean()

    return step


@pytest.mark.parametrize(("dtype", "rtol"), [(F32, 1e-6), (F64, 1e-12)])
def test_derivatives_equal_eager_taylor_mode_at_a_point_and_on_a_batch(
    dtype: torch.dtype, rtol: float
) -> None:
    f = mlp(dtype)
    eager = hodfunc.derivatives(f, 8, method="taylor")
    compiled = hodfunc.derivatives(f, 8, method="compiled")
    x = torch.tensor(0.3, dtype=dtype)
    xs = torch.linspace(-1, 1, 64, dtype=dtype)
    before = _compiled.COMPILES[0]
    assert close(compiled(x), eager(x), rtol)
    assert close(torch.func.vmap(compiled)(xs).T, torch.func.vmap(eager)(xs).T, rtol)
    assert _compiled.COMPILES[0] == before + 2  # one graph per entry: the point, the batch
    compiled(2 * x)
    torch.func.vmap(compiled)(-xs)
    assert _compiled.COMPILES[0] == before + 2  # same signatures: no new compilation


def test_weight_gradients_of_a_pinn_loss_equal_eager_taylor_mode() -> None:
    net = pinn_net(F64)
    z = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    want = residual_step("taylor")(net, z)
    want_grads = torch.autograd.grad(want, list(net.parameters()), materialize_grads=True)
    got = residual_step("compiled")(net, z)
    got_grads = torch.autograd.grad(got, list(net.parameters()), materialize_grads=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-15)


def test_a_fullgraph_compiled_training_step_equals_the_eager_step() -> None:
    """The user's whole step under torch.compile(fullgraph=True): the loss from partials, its
    backward and an SGD update, against the same step run eagerly on a copy of the network."""
    eager_net, compiled_net = pinn_net(F64), pinn_net(F64)
    z = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    loss_of = residual_step("compiled")

    def train(net: nn.Module, z: Tensor) -> Tensor:
        loss = loss_of(net, z)
        grads = torch.autograd.grad(loss, list(net.parameters())[:-1])
        with torch.no_grad():
            for p, g in zip(list(net.parameters())[:-1], grads, strict=True):
                p.sub_(0.1 * g)
        return loss.detach()

    step = torch.compile(train, fullgraph=True)
    with torch._dynamo.config.patch(trace_autograd_ops=True):  # torch's flag for autograd.grad
        for _ in range(2):
            torch.testing.assert_close(
                step(compiled_net, z), train(eager_net, z), rtol=1e-12, atol=0
            )
    for a, b in zip(compiled_net.parameters(), eager_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_a_changed_closure_value_gets_a_new_graph_not_a_stale_one() -> None:
    box = {"k": 2.0}

    def f(x: Tensor) -> Tensor:
        return torch.sin(box["k"] * x)

    d2 = hodfunc.derivative(f, order=2, method="compiled")
    x = torch.tensor(0.4, dtype=F64)
    torch.testing.assert_close(d2(x), -4 * torch.sin(2 * x), rtol=1e-12, atol=0)
    box["k"] = 3.0
    torch.testing.assert_close(d2(x), -9 * torch.sin(3 * x), rtol=1e-12, atol=0)


def test_under_grad_the_same_program_runs_eagerly_and_agrees() -> None:
    """Per point under torch.func.grad the tensors are functorch-wrapped: no compiled graph can
    take them, so the program runs eagerly (nothing is compiled), with the same answer."""
    w = torch.tensor(1.3, dtype=F64)
    d3 = hodfunc.derivative(lambda w, x: torch.tanh(w * x), order=3, argnums=1, method="compiled")
    eager = hodfunc.derivative(lambda w, x: torch.tanh(w * x), order=3, argnums=1, method="taylor")
    x = torch.tensor(0.2, dtype=F64)
    before = _compiled.COMPILES[0]
    got = torch.func.grad(d3)(w, x)
    assert _compiled.COMPILES[0] == before
    torch.testing.assert_close(got, torch.func.grad(eager)(w, x), rtol=1e-12, atol=0)


def test_inside_fullgraph_a_tensor_reached_through_a_closure_is_refused() -> None:
    """Its gradient would be lost; torch.compile reports the call as unsupported instead of
    giving a wrong answer (pass the module as an argument: the test above)."""
    net = pinn_net(F64)
    lap = hodfunc.laplacian(lambda z: net(z).squeeze(-1), method="compiled")
    z = torch.randn(8, 2, dtype=F64)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(lambda z: torch.func.vmap(lap)(z).sum(), fullgraph=True)(z)


@pytest.mark.compile_slow
@pytest.mark.parametrize("order", [2, 4, 16])
@pytest.mark.parametrize(("dtype", "rtol"), [(F32, 1e-6), (F64, 1e-12)])
def test_sweep_orders_and_dtypes(order: int, dtype: torch.dtype, rtol: float) -> None:
    f = mlp(dtype, width=32)
    xs = torch.linspace(-1, 1, 512, dtype=dtype)
    want = torch.func.vmap(hodfunc.derivatives(f, order, method="taylor"))(xs).T
    got = torch.func.vmap(hodfunc.derivatives(f, order, method="compiled"))(xs).T
    if dtype == F64:
        assert close(got, want, rtol)
    else:
        exact = hodfunc.derivatives(mlp(F64, width=32), order, method="taylor")
        assert as_accurate(got, want, torch.func.vmap(exact)(xs.double()).T)


@pytest.mark.compile_slow
@pytest.mark.parametrize(("dtype", "rtol"), [(F32, 1e-6), (F64, 1e-12)])
def test_laplacian_and_mixed_partials_equal_eager(dtype: torch.dtype, rtol: float) -> None:
    torch.manual_seed(0)
    net32 = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))
    net, exact_net = net32.to(dtype), copy.deepcopy(net32).double()
    z = torch.randn(64, 5).to(dtype)
    ops: list[Callable[[nn.Module, Method], Callable[[Tensor], Tensor]]] = [
        lambda n, m: hodfunc.laplacian(functools.partial(u_of, n), method=m),
        lambda n, m: hodfunc.partial(functools.partial(u_of, n), (0, 1, 1), method=m),
    ]
    for op in ops:
        want = torch.func.vmap(op(net, "taylor"))(z).unsqueeze(0)
        got = torch.func.vmap(op(net, "compiled"))(z).unsqueeze(0)
        if dtype == F64:
            assert close(got, want, rtol)
        else:
            exact = torch.func.vmap(op(exact_net, "taylor"))(z.double()).unsqueeze(0)
            assert as_accurate(got, want, exact)


@pytest.mark.compile_slow
def test_float32_weight_gradients_equal_eager() -> None:
    net = pinn_net(F32)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    want = residual_step("taylor")(net, z)
    wg = torch.autograd.grad(want, list(net.parameters())[:-1])
    got = residual_step("compiled")(net, z)
    gg = torch.autograd.grad(got, list(net.parameters())[:-1])
    exact_net = copy.deepcopy(net).double()
    exact = residual_step("taylor")(exact_net, z.double())
    eg = torch.autograd.grad(exact, list(exact_net.parameters())[:-1])
    assert as_accurate(got.reshape(1), want.reshape(1), exact.reshape(1))
    for g, w, e in zip(gg, wg, eg, strict=True):
        assert as_accurate(g.reshape(1, -1), w.reshape(1, -1), e.reshape(1, -1))


def test_a_compiled_call_changes_nothing_the_caller_owns() -> None:
    net = pinn_net(F64)
    net.train()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    z = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    z.requires_grad_(True)
    before = [(p.detach().clone(), p._version, torch.ones_like(p)) for p in net.parameters()]
    versions, rng = z._version, torch.get_rng_state()
    residual_step("compiled")(net, z)
    for p, (value, version, grad) in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, value)
        assert p._version == version
        assert p.requires_grad
        assert p.grad is not None
        assert torch.equal(p.grad, grad)
    assert z._version == versions
    assert z.requires_grad
    assert z.grad is None
    assert net.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_function_traced_on_every_call_is_not_compiled_on_every_call() -> None:
    """Where the trace cannot be cached (CacheWarning), the program runs eagerly: compiling a
    fresh trace on every call would cost seconds each."""
    window = collections.deque([2.0])  # unhashable, no attributes to walk
    d2 = hodfunc.derivative(lambda x: torch.sin(window[0] * x), 2, method="compiled")
    x = torch.tensor(0.4, dtype=F64)
    before = _compiled.COMPILES[0]
    with pytest.warns(hodfunc.CacheWarning):
        torch.testing.assert_close(d2(x), -4 * torch.sin(2 * x), rtol=1e-12, atol=0)
    window[0] = 3.0
    torch.testing.assert_close(d2(x), -9 * torch.sin(3 * x), rtol=1e-12, atol=0)
    assert _compiled.COMPILES[0] == before


def test_a_program_inductor_cannot_compile_runs_eagerly_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> Callable[..., Tensor]:
        def call(*inputs: object) -> Tensor:
            raise RuntimeError("inductor: codegen failed\nmore")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    d3 = hodfunc.derivative(lambda x: torch.tanh(1.7 * x), 3, method="compiled")
    want = hodfunc.derivative(lambda x: torch.tanh(1.7 * x), 3, method="taylor")
    x = torch.tensor(0.3, dtype=F64)
    with pytest.warns(hodfunc.FallbackWarning, match=r"RuntimeError: inductor: codegen failed"):
        torch.testing.assert_close(d3(x), want(x), rtol=1e-12, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once, and no second attempt
        torch.testing.assert_close(d3(2 * x), want(2 * x), rtol=1e-12, atol=0)


@pytest.mark.parametrize("weights", ["identity", "indefinite"])
def test_collapsed_operators_compile_on_the_whole_batch_and_agree(weights: str) -> None:
    """The weighted Laplacian tr(C Hess u) with C = I (the plain collapsed jet) and with an
    indefinite C (directions from its eigenvectors, the form +1/-1 counts): compiled once on the
    whole vmap batch, equal to eager Taylor mode in float64."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    c = None if weights == "identity" else torch.diag(torch.tensor([1.0, -2.0, 0.5], dtype=F64))
    z = torch.randn(32, 3, dtype=F64)

    def op(method: Method) -> Callable[[Tensor], Tensor]:
        return hodfunc.laplacian(functools.partial(u_of, net), weights=c, method=method)

    before = _compiled.COMPILES[0]
    got = torch.func.vmap(op("compiled"))(z)
    assert _compiled.COMPILES[0] == before + 1
    torch.testing.assert_close(got, torch.func.vmap(op("taylor"))(z), rtol=1e-12, atol=1e-14)


def test_past_its_graph_limit_a_function_runs_new_shapes_eagerly_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_compiled, "GRAPHS_PER_FUNCTION", 1)
    d2 = hodfunc.derivative(lambda x: torch.sin(1.3 * x), 2, method="compiled")
    before = _compiled.COMPILES[0]
    for n in (4, 4, 5):  # the second batch size is past the limit
        xs = torch.linspace(0, 1, n, dtype=F64)
        want = -(1.3**2) * torch.sin(1.3 * xs)
        context = pytest.warns(hodfunc.FallbackWarning, match=r"one per input signature.*drop_last")
        with context if n == 5 else contextlib.nullcontext():
            torch.testing.assert_close(torch.func.vmap(d2)(xs), want, rtol=1e-12, atol=1e-15)
    assert _compiled.COMPILES[0] == before + 1


def test_forward_mode_ad_through_a_compiled_transform_keeps_its_tangent() -> None:
    """Dual tensors would be dropped by a compiled graph: under an open forward-AD level the
    program runs eagerly (the tangent of d^3/dx^3 is the fourth derivative)."""
    from torch.autograd import forward_ad

    def f(x: Tensor) -> Tensor:
        return torch.sin(1.7 * x) * x

    d3 = hodfunc.derivative(f, 3, method="compiled")
    x = torch.tensor(0.4, dtype=F64)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, torch.ones_like(x))  # type: ignore[no-untyped-call]
        tangent = forward_ad.unpack_dual(d3(dual)).tangent  # type: ignore[no-untyped-call]
    assert tangent is not None
    torch.testing.assert_close(tangent, hodfunc.derivative(f, 4)(x), rtol=1e-12, atol=0)


def test_inside_torch_compile_an_out_of_range_jet_raises_instead_of_returning_zero() -> None:
    """There the series cannot be rescaled (no values to look at, no rerun): exp at order 40 in
    float32 would underflow to 0, so the step raises with the fix; order 8 is fine."""
    x = torch.tensor(0.5)
    d8 = hodfunc.derivative(torch.exp, 8, method="compiled")
    torch.testing.assert_close(torch.compile(lambda x: d8(x) * 1.0, fullgraph=True)(x), x.exp())
    d40 = hodfunc.derivative(torch.exp, 40, method="compiled")
    with pytest.raises(RuntimeError, match=r"cannot be rescaled.*Compute in float64"):
        torch.compile(lambda x: d40(x) * 1.0, fullgraph=True)(x)


def test_two_compiled_transforms_through_one_step_code_get_their_own_graphs() -> None:
    """The same step code over two transforms of one kind (a loop, a notebook cell run twice):
    each call keeps its own transform. (Marking every transform for Dynamo by itself reused the
    graph of derivative(sin, 1) for derivative(sin, 2).)"""
    x = torch.tensor(0.5, dtype=F64)
    for order, want in ((1, torch.cos(x)), (2, -torch.sin(x)), (1, torch.cos(x))):
        d = hodfunc.derivative(torch.sin, order, method="compiled")
        step = torch.compile(lambda x, d=d: d(x) * 1.0, fullgraph=True)
        torch.testing.assert_close(step(x), want, rtol=1e-12, atol=0)
