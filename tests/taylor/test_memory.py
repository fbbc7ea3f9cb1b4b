"""How a Taylor propagation uses memory: values are dropped after their last reader, and a rule
overwrites an argument only when nothing can see it any more.

Overwriting is where a wrong answer would hide, so each case below builds a graph in which an
argument is still visible after the op that could overwrite it (a view of it read later, the same
value read twice, a value a no-op rule passed through unchanged), and checks the result against
nested torch.func, under ``vmap`` and outside it. The plans are checked too, so the speed-up on a
plain MLP cannot silently disappear.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import assert_close
from torch import Tensor

import hodfunc
from hodfunc._taylor._plan import plan
from hodfunc._taylor._trace import Program, TraceCache
from hodfunc.imperative import backward

F64 = torch.float64
_W = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
_V = torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))


def _view_read_later(x: Tensor) -> Tensor:
    y = x @ _W
    v = y.view(2, 3)
    t = torch.tanh(y)
    return (v * t.view(2, 3)).sum()


def _read_after_tanh(x: Tensor) -> Tensor:
    y = x @ _W
    return (torch.tanh(y) + y * y).sum()


def _passed_through(x: Tensor) -> Tensor:
    y = x @ _W
    z = y + 0
    return (z * torch.tanh(y)).sum()


def _split_read_later(x: Tensor) -> Tensor:
    y = x @ _W
    a, _ = torch.split(y, 3)
    s = torch.sin(y)
    return (a * s[:3]).sum()


def _same_argument_twice(x: Tensor) -> Tensor:
    y = x @ _W
    return torch.tanh(y * y).sum()


def _chain(x: Tensor) -> Tensor:
    return torch.tanh(torch.sigmoid(torch.tanh(x @ _W) @ _V) @ _V).sum()


def _residual(x: Tensor) -> Tensor:
    h = torch.tanh(x @ _W)
    return (h + torch.tanh(h @ _V)).pow(2).sum()


CASES: dict[str, Callable[[Tensor], Tensor]] = {
    f.__name__.strip("_"): f
    for f in (
        _view_read_later,
        _read_after_tanh,
        _passed_through,
        _split_read_later,
        _same_argument_twice,
        _chain,
        _residual,
    )
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_laplacian_is_unchanged_by_overwriting(name: str) -> None:
    f = CASES[name]
    xs = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    ref = torch.func.vmap(hodfunc.laplacian(f, method="nested"))(xs)
    assert_close(torch.func.vmap(hodfunc.laplacian(f, method="taylor"))(xs), ref)
    assert_close(torch.stack([hodfunc.laplacian(f, method="taylor")(x) for x in xs]), ref)


@pytest.mark.parametrize("name", sorted(CASES))
def test_derivatives_are_unchanged_by_overwriting(name: str) -> None:
    f = CASES[name]
    v = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(3))
    x = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(4))
    got = hodfunc.directional_derivative(f, 3, method="taylor")(x, v)
    assert_close(got, hodfunc.directional_derivative(f, 3, method="nested")(x, v))


def _program(f: Callable[[Tensor], Tensor]) -> Program:
    """The program the Taylor engine traces for ``f`` at a point of shape ``(4,)``."""
    bound = TraceCache().bind("test", f, (torch.randn(4, dtype=F64),), {}, 0)
    return bound.program


def test_an_mlp_hands_every_linear_result_to_its_activation() -> None:
    def mlp(x: Tensor) -> Tensor:
        return (torch.tanh(torch.tanh(x @ _W) @ _V) @ _V).sum()

    program = _program(mlp)
    steps = plan(program, first_orders=True, overwrite=True)
    handed = [ins.name for ins, s in zip(program.instructions, steps, strict=True) if s.donated]
    assert handed.count("tanh") == 2, handed


def test_nothing_is_handed_over_while_the_argument_is_still_visible() -> None:
    program = _program(_read_after_tanh)
    steps = plan(program, first_orders=True, overwrite=True)
    assert not any(
        s.donated for ins, s in zip(program.instructions, steps, strict=True) if ins.name == "tanh"
    )


def test_every_intermediate_is_released_exactly_once() -> None:
    program = _program(_residual)
    released = [slot for slots in program.releases for slot in slots]
    assert len(released) == len(set(released))
    written = {ins.slot for ins in program.instructions}
    outputs = {program.output.slot} if hasattr(program.output, "slot") else set()
    assert written - outputs <= set(released)


def test_weight_gradients_of_a_laplacian_are_exact_when_nothing_is_overwritten() -> None:
    w = _W.clone()

    def loss(weight: Tensor, method: hodfunc.Method) -> Tensor:
        def f(x: Tensor) -> Tensor:
            return torch.tanh(torch.tanh(x @ weight) @ _V).sum()

        xs = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
        return torch.func.vmap(hodfunc.laplacian(f, method=method))(xs).pow(2).sum()

    got = torch.func.grad(lambda q: loss(q, "taylor"))(w)
    assert_close(got, torch.func.grad(lambda q: loss(q, "nested"))(w))
    leaf = w.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(leaf, "taylor"), leaf)
    assert_close(grad, got)


_W2 = torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(7)) / 2
_MODEL = torch.nn.Sequential(
    torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6), torch.nn.Tanh()
).double()


def _three_activations(x: Tensor) -> Tensor:
    return torch.tanh(torch.tanh(torch.tanh(x @ _W) @ _W2) @ _W2).sum()


def _through_a_helper(x: Tensor) -> Tensor:
    """The model is reached only through this module's globals: the trace bakes it in."""
    return _three_activations(_MODEL(x) @ _W2[:, :4])


@pytest.mark.parametrize("method", ["taylor", "nested"])
def test_autograd_through_vmapped_laplacians_sees_nothing_overwritten(
    method: hodfunc.Method,
) -> None:
    xs = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(8))

    def first(m: hodfunc.Method) -> tuple[Tensor, Tensor]:
        leaf = xs.clone().requires_grad_()
        out = torch.func.vmap(hodfunc.laplacian(_three_activations, method=m))(leaf)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
        return out.detach(), grad

    def second(m: hodfunc.Method) -> Tensor:
        lap = hodfunc.laplacian(_three_activations, method=m)
        jacobian: Tensor = torch.func.jacrev(lambda p: torch.func.vmap(lap)(p))(xs)
        return jacobian

    def third(m: hodfunc.Method) -> list[Tensor]:
        for p in _MODEL.parameters():
            p.grad = None
        out = torch.func.vmap(hodfunc.laplacian(_through_a_helper, method=m))(xs)
        backward(out.pow(2).sum())
        return [p.grad.clone() for p in _MODEL.parameters() if p.grad is not None]

    for got, want in zip(first(method), first("nested"), strict=True):
        assert_close(got, want)
    assert_close(second(method), second("nested"))
    grads, want_grads = third(method), third("nested")
    assert len(grads) == 4
    for got, want in zip(grads, want_grads, strict=True):
        assert_close(got, want)


def test_a_point_passed_twice_under_vmap() -> None:
    def g(y: Tensor, z: Tensor) -> Tensor:
        return torch.tanh(y @ _W).sum() * torch.sin(z).sum()

    xs = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(9))
    v = torch.ones(4, dtype=F64)
    d = hodfunc.directional_derivative(g, 3, method="taylor")
    got = torch.func.vmap(lambda x: d(x, x, v))(xs)
    assert_close(got, torch.stack([d(x, x, v) for x in xs]))


def test_adding_a_wider_constant_in_place_keeps_the_promoted_dtype() -> None:
    b64 = torch.randn(6, dtype=F64)
    w32 = _W.float()

    def f(y: Tensor) -> Tensor:
        return (torch.tanh(torch.tanh(y @ w32) + b64) * 1.5).sum()

    xs = torch.randn(3, 4, generator=torch.Generator().manual_seed(10))
    v = torch.ones(4)
    for method in ("taylor", "nested"):
        d = hodfunc.directional_derivative(f, 3, method=method)
        assert torch.func.vmap(d, in_dims=(0, None))(xs, v).dtype == torch.float64
        assert torch.func.vmap(hodfunc.laplacian(f, method=method))(xs).dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Large series written row by row into one preallocated tensor; seeded jets carrying only v

_SMOOTH: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "exp": torch.exp,
    "tan": torch.tan,
    "sin": torch.sin,
    "cos": torch.cos,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
}
_WIDTH = 32  # 2048 points x 32 units: past _series._LARGE, so the recurrences write in place


def _scalar_mlp(act: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    g = torch.Generator().manual_seed(4)
    w1 = 0.5 * torch.randn(_WIDTH, 1, dtype=F64, generator=g)
    w2 = 0.3 * torch.randn(_WIDTH, _WIDTH, dtype=F64, generator=g) / _WIDTH**0.5
    w3 = torch.randn(1, _WIDTH, dtype=F64, generator=g) / _WIDTH**0.5

    def f(x: Tensor) -> Tensor:  # the first activation sees an affine jet, the second does not
        out: Tensor = (w3 @ act(w2 @ act(w1 @ x.reshape(1)))).squeeze()
        return out

    return f


@pytest.mark.parametrize("name", sorted(_SMOOTH))
def test_large_batches_written_into_preallocated_series_match_nested(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hodfunc._taylor import _memory, _series

    buffers: list[Tensor] = []
    empty_series = _memory.empty_series

    def counted(size: int, like: Tensor) -> Tensor | None:
        out = empty_series(size, like)
        if out is not None:
            buffers.append(out)
        return out

    monkeypatch.setattr(_series, "empty_series", counted)
    f = _scalar_mlp(_SMOOTH[name])
    xs = torch.linspace(-1.0, 1.0, 2048, dtype=F64)
    got = torch.func.vmap(hodfunc.derivatives(f, 5, method="taylor"))(xs)
    if name in ("tanh", "sigmoid", "exp", "tan"):  # those with a recurrence of their own
        assert buffers, "the large recurrences did not write into a preallocated series"
    few = xs[::256]
    want = torch.func.vmap(hodfunc.derivatives(f, 5, method="nested"))(few)
    assert_close(got[::256], want)
    per_point = torch.stack([hodfunc.derivatives(f, 5, method="taylor")(x) for x in few[:3]])
    assert_close(got[:768:256], per_point)


def test_a_large_direction_that_requires_grad_is_differentiable() -> None:
    """The seeded jet's rows are the point and the direction: ``out=`` writes would cut autograd
    off when only the direction records, so none happen then."""
    x = torch.linspace(-1.0, 1.0, 40_000, dtype=F64)
    v0 = torch.cos(torch.arange(40_000, dtype=F64))

    def f(y: Tensor) -> Tensor:
        return torch.tanh(2 * y + 0.1).sum()

    grads = []
    for method in ("taylor", "nested"):
        v = v0.clone().requires_grad_()
        (g,) = torch.autograd.grad(hodfunc.directional_derivative(f, 3, method=method)(x, v), v)
        grads.append(g)
    assert_close(grads[0], grads[1])


def test_a_seeded_jet_carries_only_its_direction_until_the_first_nonlinear_op() -> None:
    from hodfunc._taylor._rules import Jet

    x, v = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([3.0, 4.0], dtype=F64)
    jet = Jet(split=(x, v.unsqueeze(0)), size=5)
    assert jet.split is not None
    assert jet.split[1].shape == (1, 2)
    assert torch.equal(jet.c, torch.stack([x, v, *torch.zeros(3, 2, dtype=F64)]))

    def f(y: Tensor) -> Tensor:  # linear ops, then ops with no affine recurrence (log, sqrt)
        z = (y @ _W.T).reshape(2, 2).transpose(0, 1)[:, 1:]
        return (torch.log(z.square() + 3) + torch.sqrt(-z + 9)).sum()

    point = torch.tensor([0.1, -0.2, 0.3, 0.4, -0.5, 0.6], dtype=F64)
    direction = torch.tensor([1.0, 0.5, -1.0, 2.0, 0.0, -0.5], dtype=F64)
    for order in (1, 4):
        assert_close(
            hodfunc.directional_derivative(f, order, method="taylor")(point, direction),
            hodfunc.directional_derivative(f, order, method="nested")(point, direction),
        )


def test_a_bias_added_after_a_batched_matmul_is_added_in_place() -> None:
    """``vmap``'s trace of a linear layer is ``mm``, ``_unsafe_view`` (a view, whatever its schema
    says), then the bias ``add``: the add is handed the matmul's result."""
    b = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(5))

    def layer(x: Tensor) -> Tensor:
        return torch.tanh(torch.nn.functional.linear(x, _W.T, b)).sum()

    points = torch.randn(3, 4, dtype=F64)
    program = TraceCache().bind("test", layer, (points,), {}, 0, batched=True).program
    assert "_unsafe_view" in [ins.name for ins in program.instructions]
    steps = plan(program, first_orders=True, overwrite=True)
    handed = [ins.name for ins, s in zip(program.instructions, steps, strict=True) if s.donated]
    assert "add" in handed, handed


def test_directions_repeated_at_every_point_go_through_a_linear_layer_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a whole batch the seeded direction is the same at every point (an ``expand``); the
    first linear layer maps it once (``_rules._products._repeated``) and the result is still per
    point."""
    from hodfunc._taylor._memory import compact
    from hodfunc._taylor._rules import _products

    narrowed: list[bool] = []

    def spy(t: Tensor, *, keep: int) -> Tensor:
        out = compact(t, keep=keep)
        narrowed.append(out.shape != t.shape)
        return out

    monkeypatch.setattr(_products, "compact", spy)
    b = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(6))

    def f(x: Tensor) -> Tensor:
        return torch.sigmoid(torch.nn.functional.linear(x, _W.T, b) ** 2).sum()

    g = hodfunc.directional_derivative(f, 4, method="taylor")
    points = torch.randn(9, 4, dtype=F64, generator=torch.Generator().manual_seed(7))
    v = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=F64)
    got = torch.func.vmap(g, in_dims=(0, None))(points, v)
    assert any(narrowed)
    nested = hodfunc.directional_derivative(f, 4, method="nested")
    want = torch.stack([nested(p, v) for p in points])
    assert_close(got, want)


def test_the_laplacian_s_last_activation_leaves_out_the_first_orders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing after the last activation reads first orders: it returns two rows, not n + 2."""
    from hodfunc._taylor import _algebra

    rows: list[int] = []
    unary = _algebra.Collapsed._unary

    def spy(self: _algebra.Collapsed, *args: object) -> Tensor:
        out = unary(self, *args)  # type: ignore[arg-type]
        rows.append(out.shape[0])
        return out

    monkeypatch.setattr(_algebra.Collapsed, "_unary", spy)

    def f(x: Tensor) -> Tensor:
        return (torch.tanh(torch.tanh(x @ _W) @ _V) @ _V).sum()

    x = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(8))
    got = hodfunc.laplacian(f, method="taylor")(x)
    assert rows == [4 + 2, 2], rows
    assert_close(got, hodfunc.laplacian(f, method="nested")(x))
