"""Taylor mode against exact oracles: sympy at orders up to 12 and 40/64, mixed partials against
nested torch.func, the collapsed Laplacian against ``trace(hessian)``, and one case per op family.

Everything here is float64 and must match to ``1e-8`` relative to ``max(1, |exact|)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import mpmath  # type: ignore[import-untyped]  # mpmath ships no type information
import pytest
import sympy
import torch
from expressions import Expression, exact_derivatives, expressions, points, tame
from helpers import assert_close, mlp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor

import hodfunc
from hodfunc._taylor._mixed import interpolation

TOL = 1e-8
F64 = torch.float64


def check(got: list[float], exact: list[float]) -> None:
    for k, (g, e) in enumerate(zip(got, exact, strict=True)):
        assert abs(g - e) <= TOL * max(1.0, abs(e)), f"order {k}: got {g!r}, exact {e!r}"


def _sympy_derivatives(e: Expression, x: float, order: int) -> list[float]:
    """Derivatives of ``e``'s sympy expression, evaluated by sympy's arbitrary-precision backend.

    ``sympy.diff`` to order 12 can take minutes on a depth-3 tree (expression swell), so the
    expression is lambdified to mpmath and differentiated there with 60 digits: exact to float64.
    ``test_the_order_12_oracle_agrees_with_sympy_diff`` checks this oracle against ``sympy.diff``.
    """
    f = sympy.lambdify(e.variables[0], e.sym, modules="mpmath")
    with mpmath.workdps(60):
        return [float(d) for d in mpmath.diffs(f, mpmath.mpf(x), order)]


@settings(max_examples=15)
@given(e=expressions(max_depth=3), p=points(), order=st.integers(7, 12))
def test_random_expressions_match_sympy_up_to_order_12(
    e: Expression, p: tuple[float], order: int
) -> None:
    # a point like 7.7e-231 makes derivatives of x**3 underflow float64 (3 x**2 ~ 1e-460): the
    # RangeWarning that then says so is right, and not what this test is about
    assume(p[0] == 0.0 or abs(p[0]) > 1e-100)
    exact = _sympy_derivatives(e, p[0], order)
    assume(tame(exact, bound=1e6))
    got = hodfunc.derivatives(e, order, method="taylor")(e.at(p))
    check(got.tolist(), exact)


@settings(max_examples=5)
@given(e=expressions(max_depth=1), p=points())
def test_the_order_12_oracle_agrees_with_sympy_diff(e: Expression, p: tuple[float]) -> None:
    exact = exact_derivatives(e, p[0], 12)
    assume(tame(exact, bound=1e6))
    check(_sympy_derivatives(e, p[0], 12), exact)


def _exp_half_sin(order: int, x: float) -> list[float]:
    """``d^k/dx^k exp(x/2) sin(x) = |c|^k exp(x/2) sin(x + k arg c)`` with ``c = 1/2 + i``."""
    r, phi = abs(complex(0.5, 1.0)), math.atan2(1.0, 0.5)
    return [r**k * math.exp(x / 2) * math.sin(x + k * phi) for k in range(order + 1)]


@pytest.mark.parametrize("order", [40, 64])
def test_high_order_of_exp_half_x_sin_x_is_exact(order: int) -> None:
    x = 0.7
    got = hodfunc.derivatives(lambda t: torch.exp(t / 2) * torch.sin(t), order, method="taylor")(
        torch.tensor(x, dtype=F64)
    )
    check(got.tolist(), _exp_half_sin(order, x))


@pytest.mark.parametrize("order", [40, 64])
def test_high_order_matches_sympy(order: int) -> None:
    s = sympy.Symbol("s")
    expr = sympy.diff(sympy.exp(s / 2) * sympy.sin(s), s, order)
    exact = float(expr.subs(s, sympy.Rational(7, 10)).evalf(30))
    got = hodfunc.derivative(lambda t: torch.exp(t / 2) * torch.sin(t), order, method="taylor")(
        torch.tensor(0.7, dtype=F64)
    )
    check([got.item()], [exact])


def _f3(x: Tensor) -> Tensor:
    return (
        torch.exp(x[0] / 2)
        * torch.sin(x[1])
        * torch.log1p(x[2] ** 2)
        / (2 + torch.cos(x[0] * x[2]))
    )


@pytest.mark.parametrize(
    "wrt", [(0, 1), (0, 0, 2), (2, 0, 1), (0, 1, 2, 2), (1, 1, 1, 0, 2), (0, 0, 0, 0, 0)]
)
def test_mixed_partials_match_nested(wrt: tuple[int, ...]) -> None:
    x = torch.tensor([0.3, 0.5, -0.7], dtype=F64)
    got = hodfunc.partial(_f3, wrt, method="taylor")(x)
    ref = hodfunc.partial(_f3, wrt, method="nested")(x)
    assert_close(got, ref)


@settings(max_examples=20)
@given(j=st.lists(st.integers(0, 3), min_size=2, max_size=3).map(tuple))
def test_interpolation_weights_reproduce_every_monomial(j: tuple[int, ...]) -> None:
    """``sum_i gamma_ij i^a`` is 1 for ``a = j`` and 0 for the other ``|a| = |j|``: exact."""
    assume(sum(j) > 0)
    d = sum(j)
    terms = interpolation(j)
    for a in _multi_indices(d, len(j)):
        value = sum(
            g * math.prod(Fraction(il) ** al for il, al in zip(i, a, strict=False))
            for i, g in terms
        )
        assert value == (1 if a == j else 0)


def _multi_indices(total: int, parts: int) -> list[tuple[int, ...]]:
    if parts == 1:
        return [(total,)]
    return [(k, *rest) for k in range(total + 1) for rest in _multi_indices(total - k, parts - 1)]


def test_collapsed_laplacian_equals_trace_of_hessian_under_vmap() -> None:
    net = mlp(5, 16, 1, "tanh")

    def f(x: Tensor) -> Tensor:
        out: Tensor = net(x).squeeze(-1)
        return out

    xs = torch.randn(7, 5, dtype=F64)
    got = torch.func.vmap(hodfunc.laplacian(f, method="taylor"))(xs)
    ref = torch.func.vmap(lambda x: torch.func.hessian(f)(x).diagonal().sum())(xs)
    assert_close(got, ref)


def test_laplacian_of_a_vector_output_is_elementwise() -> None:
    def f(x: Tensor) -> Tensor:
        return torch.stack([torch.sin(x).sum() * x[0], x[0] ** 3 * x[1] * x[2] ** 2])

    x = torch.tensor([0.4, -1.1, 0.8], dtype=F64)
    assert_close(hodfunc.laplacian(f, method="taylor")(x), hodfunc.laplacian(f, method="nested")(x))


_W = torch.randn(4, 3, dtype=F64)
_B = torch.randn(2, 3, 3, dtype=F64)
_K1 = torch.randn(2, 3, 2, dtype=F64)
_K2 = torch.randn(2, 1, 2, 2, dtype=F64)
_CASES: dict[str, Callable[[Tensor], Tensor]] = {
    "add_sub_mul_div_neg": lambda x: ((x + 1) * (x - 2) / (x**2 + 3) - x / 2 + (-x)).sum(),
    "pow_scalar_and_tensor": lambda x: (x**3 + (x**2 + 1) ** 1.5 + (x**2 + 1) ** x + 2.0**x).sum(),
    "exp_expm1_log_log1p": lambda x: (
        (torch.exp(x) + torch.expm1(x) + torch.log(x**2 + 1)).sum() + torch.log1p(x**2).sum()
    ),
    "sqrt_rsqrt_reciprocal": lambda x: (
        torch.sqrt(x**2 + 1) + torch.rsqrt(x**2 + 2) + torch.reciprocal(x + 3)
    ).sum(),
    "trig": lambda x: (torch.sin(x) * torch.cos(x) + torch.tan(x / 3) + torch.atan(x)).sum(),
    "hyperbolic": lambda x: (torch.tanh(x) + torch.sinh(x) * torch.cosh(x) + torch.asinh(x)).sum(),
    "sigmoid_softplus_silu": lambda x: (
        torch.sigmoid(x) + torch.nn.functional.softplus(x) + torch.nn.functional.silu(x)
    ).sum(),
    "gelu_erf_and_tanh": lambda x: (
        (torch.nn.functional.gelu(x) + torch.nn.functional.gelu(x, approximate="tanh")).sum()
        + torch.erf(x).sum()
    ),
    "where_masking": lambda x: (
        torch.where(x > 0, x**2, torch.sin(x)).sum() + x.masked_fill(x < -0.5, 0.0).sum()
    ),
    "mm_mv_addmm_linear": lambda x: (
        (_W @ x).sum()
        + torch.mm(_W, x.reshape(3, 1)).sum()
        + torch.nn.functional.linear(torch.tanh(x), _W, _W[:, 0]).pow(2).sum()
    ),
    "bmm_matmul_einsum": lambda x: (
        torch.bmm(_B, torch.sin(x).reshape(1, 3, 1).expand(2, 3, 1)).sum()
        + torch.einsum("i,bij,j->", x, _B, x)
        + (x.reshape(1, 3) @ _B @ x).sum()
    ),
    "conv1d_conv2d": lambda x: (
        torch.nn.functional.conv1d(torch.tanh(x).reshape(1, 1, 3).expand(1, 3, 3), _K1).sum()
        + torch.nn.functional.conv2d(
            torch.outer(x, x).reshape(1, 1, 3, 3), _K2, bias=_K2[:, 0, 0, 0]
        )
        .exp()
        .sum()
    ),
    "sum_mean_logsumexp": lambda x: x.sum() * x.mean() + torch.logsumexp(x * x, 0),
    "softmax_log_softmax": lambda x: (
        torch.softmax(x, 0)[0] + torch.log_softmax(x.reshape(1, 3), 1)[0, 2]
    ),
    "shapes": lambda x: (
        (
            torch.cat([x, x**2]).reshape(2, 3).permute(1, 0).transpose(0, 1)[1, 1:]
            * torch.stack([x, x.exp()])[1, :2]
        ).sum()
        + x.reshape(3, 1).expand(3, 4).sin().sum()
    ),
    "slicing_indexing": lambda x: (
        x[1:] * x[:2] + x[torch.tensor([2, 0])] ** 2 + x[None, :, None][0, ::2, 0]
    ).sum(),
    "product_of_two_jets_in_mm": lambda x: (x.reshape(1, 3) @ torch.outer(x, x) @ x).sum(),
    "squeeze_all_one_and_several_dims": lambda x: (
        x.sin().reshape(1, 3, 1).squeeze().sum()
        + x.cos().reshape(3, 1).squeeze(-1)[0]
        + torch.squeeze(x.exp().reshape(1, 1, 3, 1), (0, 3)).sum()
    ),
}


@pytest.mark.parametrize("name", sorted(_CASES))
@pytest.mark.parametrize("order", [1, 3])
def test_op_families_match_nested(name: str, order: int) -> None:
    f = _CASES[name]
    x = torch.tensor([0.3, -0.8, 1.1], dtype=F64)
    v = torch.tensor([0.5, 1.0, -0.7], dtype=F64)
    got = hodfunc.directional_derivative(f, order, method="taylor")(x, v)
    ref = hodfunc.directional_derivative(f, order, method="nested")(x, v)
    assert_close(got, ref)


def test_derivatives_of_an_mlp_match_nested_and_keep_the_output_shape() -> None:
    net = mlp(1, 12, 2, "tanh")

    def f(t: Tensor) -> Tensor:
        out: Tensor = net(t.reshape(1))
        return out

    t = torch.tensor(0.3, dtype=F64)
    got = hodfunc.derivatives(f, 6, method="taylor")(t)
    assert got.shape == (7, 2)
    assert_close(got, hodfunc.derivatives(f, 6, method="nested")(t))


def test_float32_order_8_stays_within_1e5_of_scale() -> None:
    torch.manual_seed(0)
    w1, b1 = torch.randn(64, 1), torch.randn(64)
    w2, b2, w3 = torch.randn(64, 64) / 8, torch.randn(64), torch.randn(64)

    def f(x: Tensor, *p: Tensor) -> Tensor:
        return p[4] @ torch.tanh(p[2] @ torch.tanh(p[0] @ x.reshape(1) + p[1]) + p[3])

    params = (w1, b1, w2, b2, w3)
    xs = torch.linspace(-2, 2, 64)
    d = torch.func.vmap(hodfunc.derivative(f, 8, method="taylor"), in_dims=(0, *[None] * 5))
    got = d(xs, *params)
    ref = d(xs.double(), *(p.double() for p in params))
    assert float((got.double() - ref).abs().max() / ref.abs().max()) <= 1e-5


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "exp", "sin", "cos"])
def test_closed_second_orders_equal_the_series(name: str) -> None:
    from hodfunc._taylor import _series

    rule = getattr(_series, name)
    a0 = torch.linspace(-3, 3, 13, dtype=F64)
    series = rule(torch.stack([a0, torch.ones_like(a0), torch.zeros_like(a0)]), affine=True)
    for got, want in zip(_series.second_order(rule, a0), series, strict=True):
        assert_close(got, want)


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "exp": lambda h: torch.exp(h / 4),
    "sin": torch.sin,
    "cos": torch.cos,
    "softplus": torch.nn.functional.softplus,
    "gelu": torch.nn.functional.gelu,
    "silu": torch.nn.functional.silu,
}


@pytest.mark.parametrize("name", sorted(_ACTIVATIONS))
def test_collapsed_laplacian_of_every_activation_equals_nested(name: str) -> None:
    act = _ACTIVATIONS[name]
    g = torch.Generator().manual_seed(6)
    w1, w2, w3 = (
        torch.randn(m, k, dtype=F64, generator=g) / 2 for m, k in [(3, 8), (8, 8), (8, 2)]
    )

    def f(x: Tensor) -> Tensor:
        return act(act(x @ w1) @ w2) @ w3

    xs = torch.randn(6, 3, dtype=F64, generator=g)
    got = torch.func.vmap(hodfunc.laplacian(f, method="taylor"))(xs)
    assert_close(got, torch.func.vmap(hodfunc.laplacian(f, method="nested"))(xs))
