"""Random smooth expressions, built once as a sympy expression and once as a torch function.

The exact oracle of the test suite: hypothesis draws an expression tree, the same tree is written in
sympy and in torch, and the sympy derivatives evaluated at a float64 point (in 50-digit arithmetic)
are what every derivative method must reproduce.

Every operation is smooth and finite on the whole real line, so any point is in the domain:
``log`` and ``sqrt`` see ``1 + u**2``, a quotient divides by ``2 + cos(v)``. Large values (``exp``
of ``exp``) are possible; tests filter those with :func:`tame`.

>>> from hypothesis import find
>>> e = find(expressions(max_depth=1), lambda e: e.ops == {"sin"})
>>> e
sin(x0)
>>> [round(d, 6) for d in exact_derivatives(e, 0.5, order=2)]
[0.479426, 0.877583, -0.479426]
>>> e(e.at((0.5,)))
tensor(0.4794, dtype=torch.float64)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import mpmath  # type: ignore[import-untyped]  # mpmath ships no type information
import sympy
import torch
from hypothesis import strategies as st
from torch import Tensor

__all__ = [
    "BINARY",
    "UNARY",
    "Expression",
    "exact_derivatives",
    "exact_jet",
    "exact_partial",
    "expressions",
    "points",
    "tame",
]

TorchFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class _Op1:
    sym: Callable[[sympy.Expr], sympy.Expr]
    torch: Callable[[Tensor], Tensor]
    text: str


@dataclass(frozen=True)
class _Op2:
    sym: Callable[[sympy.Expr, sympy.Expr], sympy.Expr]
    torch: Callable[[Tensor, Tensor], Tensor]
    text: str


def _sigmoid(u: sympy.Expr) -> sympy.Expr:
    return 1 / (1 + sympy.exp(-u))


def _gelu(u: sympy.Expr) -> sympy.Expr:
    return u * (1 + sympy.erf(u / sympy.sqrt(2))) / 2


_UNARY: dict[str, _Op1] = {
    "sin": _Op1(sympy.sin, torch.sin, "sin({})"),
    "cos": _Op1(sympy.cos, torch.cos, "cos({})"),
    "exp": _Op1(sympy.exp, torch.exp, "exp({})"),
    "tanh": _Op1(sympy.tanh, torch.tanh, "tanh({})"),
    "sigmoid": _Op1(_sigmoid, torch.sigmoid, "sigmoid({})"),
    "softplus": _Op1(
        lambda u: sympy.log(1 + sympy.exp(u)), torch.nn.functional.softplus, "softplus({})"
    ),
    "gelu": _Op1(_gelu, torch.nn.functional.gelu, "gelu({})"),
    "log": _Op1(lambda u: sympy.log(1 + u**2), lambda u: torch.log(1 + u * u), "log(1 + ({})**2)"),
    "sqrt": _Op1(
        lambda u: sympy.sqrt(1 + u**2), lambda u: torch.sqrt(1 + u * u), "sqrt(1 + ({})**2)"
    ),
    "square": _Op1(lambda u: u**2, lambda u: u**2, "({})**2"),
    "cube": _Op1(lambda u: u**3, lambda u: u**3, "({})**3"),
}

_BINARY: dict[str, _Op2] = {
    "add": _Op2(lambda a, b: a + b, lambda a, b: a + b, "{} + {}"),
    "sub": _Op2(lambda a, b: a - b, lambda a, b: a - b, "{} - ({})"),
    "mul": _Op2(lambda a, b: a * b, lambda a, b: a * b, "({}) * ({})"),
    "div": _Op2(
        lambda a, b: a / (2 + sympy.cos(b)),
        lambda a, b: a / (2 + torch.cos(b)),
        "({}) / (2 + cos({}))",
    ),
}

UNARY: tuple[str, ...] = tuple(_UNARY)
"""Names of the one-argument operations; pass a subset to :func:`expressions` to restrict."""

BINARY: tuple[str, ...] = tuple(_BINARY)
"""Names of the two-argument operations."""

_CONSTANTS = (Fraction(-2), Fraction(-1), Fraction(1, 2), Fraction(1), Fraction(3, 2), Fraction(3))


@dataclass(frozen=True)
class Expression:
    """One expression tree, as sympy (``sym``) and as a torch function (``fn``).

    ``fn`` takes ``x`` with ``x[..., i]`` the i-th variable, so a one-variable expression is
    elementwise on a tensor of any shape (0-d for a point) and an n-variable one takes ``(..., n)``.
    ``ops`` names the operations used (keys of ``UNARY`` and ``BINARY``).
    """

    sym: sympy.Expr
    variables: tuple[sympy.Symbol, ...]
    fn: TorchFn
    text: str
    ops: frozenset[str]

    def __call__(self, x: Tensor) -> Tensor:
        """Evaluate the torch function."""
        return self.fn(x)

    def __repr__(self) -> str:
        return self.text

    @property
    def n_vars(self) -> int:
        """How many variables the expression is written in (some may not occur)."""
        return len(self.variables)

    def at(self, point: Sequence[float]) -> Tensor:
        """The float64 tensor for ``point``: 0-d for one variable, shape ``(n,)`` otherwise."""
        x = torch.tensor(list(point), dtype=torch.float64)
        return x.reshape(()) if self.n_vars == 1 else x


@dataclass(frozen=True)
class _Node:
    sym: sympy.Expr
    fn: TorchFn
    text: str
    ops: frozenset[str]


def _variable(i: int, n_vars: int) -> _Node:
    name = f"x{i}"
    if n_vars == 1:
        return _Node(sympy.Symbol(name, real=True), lambda x: x, name, frozenset())
    return _Node(sympy.Symbol(name, real=True), lambda x: x[..., i], name, frozenset())


def _constant(c: Fraction, n_vars: int) -> _Node:
    value = float(c)

    def fn(x: Tensor) -> Tensor:
        return torch.full_like(x if n_vars == 1 else x[..., 0], value)

    return _Node(sympy.Rational(c.numerator, c.denominator), fn, str(c), frozenset())


def _unary(name: str, a: _Node) -> _Node:
    op = _UNARY[name]
    f = a.fn
    return _Node(op.sym(a.sym), lambda x: op.torch(f(x)), op.text.format(a.text), a.ops | {name})


def _binary(name: str, a: _Node, b: _Node) -> _Node:
    op = _BINARY[name]
    f, g = a.fn, b.fn
    return _Node(
        op.sym(a.sym, b.sym),
        lambda x: op.torch(f(x), g(x)),
        op.text.format(a.text, b.text),
        a.ops | b.ops | {name},
    )


@functools.cache
def _nodes(
    depth: int, n_vars: int, unary: tuple[str, ...], binary: tuple[str, ...]
) -> st.SearchStrategy[_Node]:
    variables = st.integers(0, n_vars - 1).map(lambda i: _variable(i, n_vars))
    leaves = st.one_of(
        variables,
        variables,
        variables,
        st.sampled_from(_CONSTANTS).map(lambda c: _constant(c, n_vars)),
    )
    if depth == 0:
        return leaves
    below = _nodes(depth - 1, n_vars, unary, binary)
    # A leaf one time in five, so that most trees use their depth.
    options = [leaves]
    if unary:
        options += [st.builds(_unary, st.sampled_from(unary), below)] * 2
    if binary:
        options += [st.builds(_binary, st.sampled_from(binary), below, below)] * 2
    return st.one_of(*options)


def expressions(
    max_depth: int = 3,
    *,
    n_vars: int = 1,
    unary: Sequence[str] = UNARY,
    binary: Sequence[str] = BINARY,
) -> st.SearchStrategy[Expression]:
    """Expression trees of at most ``max_depth`` operations nested, in ``n_vars`` variables.

    Every drawn expression contains at least one variable. ``unary`` and ``binary`` restrict the
    operations (for a method that lacks a rule, say), by name.
    """
    unknown = (set(unary) - set(_UNARY)) | (set(binary) - set(_BINARY))
    if unknown:
        raise ValueError(f"expressions: unknown operations {sorted(unknown)}")
    variables = tuple(sympy.Symbol(f"x{i}", real=True) for i in range(n_vars))

    def finish(node: _Node) -> Expression:
        return Expression(node.sym, variables, node.fn, node.text, node.ops)

    tree = _nodes(max_depth, n_vars, tuple(unary), tuple(binary))
    return tree.filter(lambda node: bool(node.sym.free_symbols)).map(finish)


def points(n_vars: int = 1, *, bound: float = 2.0) -> st.SearchStrategy[tuple[float, ...]]:
    """Points in ``[-bound, bound]^n_vars`` as tuples of floats (feed them to ``Expression.at``)."""
    coordinate = st.floats(-bound, bound, allow_nan=False, allow_infinity=False)
    return st.tuples(*([coordinate] * n_vars))


def _evaluate(e: Expression, exprs: Sequence[sympy.Expr], point: Sequence[float]) -> list[float]:
    """Evaluate sympy expressions in the variables of ``e`` at ``point`` with 50 digits."""
    f = sympy.lambdify(e.variables, list(exprs), modules="mpmath")
    with mpmath.workdps(50):
        values = f(*(mpmath.mpf(p) for p in point))
        return [float(v) for v in values]


def _as_point(e: Expression, point: float | Sequence[float]) -> tuple[float, ...]:
    p = (point,) if isinstance(point, (int, float)) else tuple(point)
    if len(p) != e.n_vars:
        raise ValueError(f"point {p} has {len(p)} coordinates, the expression {e.n_vars}")
    return p


def exact_jet(
    e: Expression, point: float | Sequence[float], direction: Sequence[float], order: int
) -> list[float]:
    """``[d^k/dt^k e(point + t * direction) at t = 0 for k in 0..order]``, exact to float64.

    The derivatives are taken symbolically, ``direction`` entering as exact rationals.
    """
    p = _as_point(e, point)
    v = [sympy.Rational(float(c)) for c in direction]
    if len(v) != e.n_vars:
        raise ValueError(f"direction has {len(v)} coordinates, the expression {e.n_vars}")
    terms = [e.sym]
    for _ in range(order):
        last = terms[-1]
        terms.append(sum(c * sympy.diff(last, s) for c, s in zip(v, e.variables, strict=True)))
    return _evaluate(e, terms, p)


def exact_derivatives(e: Expression, point: float, order: int) -> list[float]:
    """``[d^k e / dx^k at point for k in 0..order]`` for a one-variable expression."""
    return exact_jet(e, point, [1.0], order)


def exact_partial(e: Expression, point: Sequence[float], wrt: Sequence[int]) -> float:
    """``d^n e / dx[wrt[0]] ... dx[wrt[n-1]]`` at ``point``, exact to float64."""
    p = _as_point(e, point)
    d = e.sym
    for i in wrt:
        d = sympy.diff(d, e.variables[i])
    return _evaluate(e, [d], p)[0]


def tame(values: Sequence[float], bound: float = 1e8) -> bool:
    """True when every value is finite and below ``bound`` in magnitude (float64 keeps digits)."""
    return all(math.isfinite(v) and abs(v) < bound for v in values)
