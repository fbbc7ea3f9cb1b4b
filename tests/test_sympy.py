"""sympy as the exact oracle: random smooth expressions, every derivative up to order 6, in float64.

Hypothesis draws an expression tree (``expressions.py``) and a point; sympy differentiates the same
tree symbolically and evaluates with 50 digits. Every transform, under every registered method,
must match to ``1e-8`` relative to ``max(1, |exact|)``. Points where the exact values exceed 1e8
(``exp`` of ``exp``) are skipped by ``assume``: float64 cannot hold their derivatives to 1e-8.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import torch
from expressions import (
    Expression,
    exact_derivatives,
    exact_jet,
    exact_partial,
    expressions,
    points,
    tame,
)
from helpers import METHODS
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import hodfunc
from hodfunc import Method

# Hypothesis finds points whose high derivatives lie below float64's range (sin(x^2) at 1e-153:
# order 3 is 1e-457); Taylor mode then warns and returns 0, which is what check() compares with.
pytestmark = pytest.mark.filterwarnings("ignore::hodfunc.RangeWarning")

TOL = 1e-8


def check(got: Sequence[float], exact: Sequence[float], what: str = "order") -> None:
    """Each ``got[k]`` within ``TOL * max(1, |exact[k]|)`` of ``exact[k]``."""
    assert len(got) == len(exact)
    for k, (g, e) in enumerate(zip(got, exact, strict=True)):
        assert abs(g - e) <= TOL * max(1.0, abs(e)), f"{what} {k}: got {g!r}, exact {e!r}"


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=20)
@given(e=expressions(max_depth=3), p=points())
def test_derivatives_up_to_order_4(method: Method, e: Expression, p: tuple[float]) -> None:
    exact = exact_derivatives(e, p[0], 4)
    assume(tame(exact))
    got = hodfunc.derivatives(e, 4, method=method)(e.at(p))
    check(got.tolist(), exact)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=10)  # order 6 by nesting is the slow case
@given(e=expressions(max_depth=2), p=points())
def test_derivatives_up_to_order_6(method: Method, e: Expression, p: tuple[float]) -> None:
    exact = exact_derivatives(e, p[0], 6)
    assume(tame(exact))
    got = hodfunc.derivatives(e, 6, method=method)(e.at(p))
    check(got.tolist(), exact)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=15)
@given(e=expressions(max_depth=2), p=points(), order=st.integers(0, 6))
def test_derivative_of_one_order(
    method: Method, e: Expression, p: tuple[float], order: int
) -> None:
    exact = exact_derivatives(e, p[0], order)
    assume(tame(exact))
    got = hodfunc.derivative(e, order, method=method)(e.at(p))
    check([got.item()], [exact[order]])


@pytest.mark.parametrize("method", METHODS)
@given(
    e=expressions(max_depth=3, n_vars=3),
    p=points(3),
    wrt=st.lists(st.integers(0, 2), max_size=4).map(tuple),
)
# a partial that is zero (f does not depend on x1) comes out as rounding noise and is reported as
# such (PrecisionWarning); check() compares it with exact 0 within tolerance
@pytest.mark.filterwarnings("ignore::hodfunc.PrecisionWarning")
def test_mixed_partials_up_to_order_4(
    method: Method, e: Expression, p: tuple[float, ...], wrt: tuple[int, ...]
) -> None:
    exact = exact_partial(e, p, wrt)
    assume(tame([exact]))
    got = hodfunc.partial(e, wrt, method=method)(e.at(p))
    check([got.item()], [exact], what=f"wrt={wrt}")


@pytest.mark.parametrize("method", METHODS)
@given(e=expressions(max_depth=3, n_vars=2), p=points(2), v=points(2), order=st.integers(0, 4))
def test_directional_derivatives(
    method: Method, e: Expression, p: tuple[float, ...], v: tuple[float, ...], order: int
) -> None:
    exact = exact_jet(e, p, v, order)
    assume(tame(exact))
    g = hodfunc.directional_derivative(e, order, method=method)
    got = g(e.at(p), torch.tensor(v, dtype=torch.float64))
    check([got.item()], [exact[order]])


@pytest.mark.parametrize("method", METHODS)
@given(e=expressions(max_depth=3, n_vars=3), p=points(3))
def test_laplacian(method: Method, e: Expression, p: tuple[float, ...]) -> None:
    seconds = [exact_partial(e, p, (i, i)) for i in range(3)]
    assume(tame(seconds))
    got = hodfunc.laplacian(e, method=method)(e.at(p))
    check([got.item()], [sum(seconds)])


@settings(max_examples=15)
@given(e=expressions(max_depth=3, n_vars=2), p=points(2), order=st.integers(0, 4))
def test_derivative_tensor(e: Expression, p: tuple[float, ...], order: int) -> None:
    indices = list(itertools.product(range(2), repeat=order))
    exact = [exact_partial(e, p, wrt) for wrt in indices]
    assume(tame(exact))
    got = hodfunc.derivative_tensor(e, order)(e.at(p))
    assert got.shape == (2,) * order
    check([got[wrt].item() for wrt in indices], exact, what="entry")


@given(e=expressions(max_depth=3, n_vars=3), p=points(3), v=points(3))
def test_jacobian_hessian_hvp(e: Expression, p: tuple[float, ...], v: tuple[float, ...]) -> None:
    grad = [exact_partial(e, p, (i,)) for i in range(3)]
    hess = [[exact_partial(e, p, (i, j)) for j in range(3)] for i in range(3)]
    assume(tame(grad + [h for row in hess for h in row]))
    x, direction = e.at(p), torch.tensor(v, dtype=torch.float64)
    check(hodfunc.jacobian(e)(x).tolist(), grad, what="entry")
    got_hess = hodfunc.hessian(e)(x)
    for i in range(3):
        check(got_hess[i].tolist(), hess[i], what=f"row {i}, entry")
    hv = [sum(h * c for h, c in zip(row, v, strict=True)) for row in hess]
    check(hodfunc.hvp(e)(x, direction).tolist(), hv, what="entry")
