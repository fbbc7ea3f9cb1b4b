"""The two coefficient algebras a propagation runs in: univariate Taylor series and the collapsed
(forward-Laplacian) jet.

Both store a value that depends on the input as one tensor with a leading coefficient axis, so a
linear op runs once on all coefficients (one matmul or conv launch, not one per coefficient), and
an affine op adds its constant to coefficient 0 only. They differ only in nonlinear ops:

- ``Univariate(K)``: ``(K + 1, *S)`` normalized Taylor coefficients of ``f(x + t v)``. Products
  are Cauchy convolutions, elementwise functions the recurrences of ``_series``.
- ``Collapsed(n)``: ``(n + 2, *S)`` = the value, the *sum* over directions of the normalized
  second-order coefficients, then the ``n`` first-order coefficients along every coordinate
  direction (Dangel et al. 2025; the forward Laplacian of Li et al. 2024). For ``y = phi(a)``:
  ``y_1,i = phi' a_1,i`` and ``y_2 = phi' a_2 + (phi''/2) sum_i a_1,i^2``; for a bilinear ``B``:
  ``B(a, b)_2 = B(a_0, b_2) + B(a_2, b_0) + sum_i B(a_1,i, b_1,i)``. ``phi'`` and ``phi''/2`` come
  from the univariate recurrence of ``phi`` at order 2, so every elementwise rule serves both.
  The first-order rows come last so that a jet whose first orders nothing downstream reads (the
  last activation of a network whose Laplacian is asked for) can simply end after row 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from .._functorch import tracing, writable
from . import _series
from ._memory import empty_series
from ._series import Pairs, cauchy_pairs, pair_table

__all__ = ["Algebra", "Collapsed", "Univariate", "join"]


class UnaryRule(Protocol):
    """A univariate series rule; ``affine`` promises ``a = a_0 + a_1 t`` (a cheaper recurrence)."""

    def __call__(self, a: Tensor, *, affine: bool = False) -> Tensor: ...


Bilinear = Callable[[Tensor, Tensor], Tensor]


class Algebra(Protocol):
    """What differs between propagation modes: the nonlinear ops."""

    size: int
    """The length of the coefficient axis."""

    def unary(
        self,
        rule: UnaryRule,
        a: Tensor,
        *,
        affine: bool = False,
        donated: bool = False,
        first: bool = True,
    ) -> Tensor:
        """``phi(a)`` where ``rule`` is ``phi``'s univariate series rule.

        ``affine``: ``a`` is known to be an affine function of the input (``a_k = 0`` for k >= 2).
        ``donated``: nothing else reads ``a``; its memory may hold the result.
        ``first``: something downstream reads the result's first-order coefficients (the
        collapsed algebra may leave them out otherwise).
        """
        ...

    def unary_split(
        self,
        rule: UnaryRule,
        head: Tensor,
        tail: Tensor,
        *,
        affine: bool = False,
        first: bool = True,
    ) -> Tensor:
        """``unary`` of the jet whose value is ``head`` and next coefficients ``tail`` (any after
        those, up to ``size``, are zeros)."""
        ...

    def product(self, op: Bilinear, a: Tensor, b: Tensor, *, batched: bool) -> Tensor:
        """``op(a, b)`` for a bilinear ``op``, both arguments carrying coefficients.

        ``batched``: ``op`` already maps over a shared leading axis (elementwise ops after the
        arguments were brought to the same rank); otherwise it is vmapped.
        """
        ...

    def divide(self, a: Tensor, b: Tensor) -> Tensor:
        """``a / b`` elementwise, both carrying coefficients (same rank)."""
        ...


def join(head: Tensor, tail: Tensor, size: int) -> Tensor:
    """The ``size`` coefficients of the jet whose value is ``head``, whose next coefficients are
    ``tail`` and whose others are zeros."""
    parts = [head.unsqueeze(0), tail]
    missing = size - 1 - tail.shape[0]
    if missing < 0:
        raise ValueError(
            f"a jet of size {size} cannot hold {tail.shape[0]} coefficients after its value"
        )
    if missing:
        parts.append(tail.new_zeros(()).expand(missing, *tail.shape[1:]))
    return torch.cat(parts)


def _pairwise(op: Bilinear, a: Tensor, b: Tensor, batched: bool) -> Tensor:
    if batched:
        return op(a, b)
    return torch.func.vmap(op)(a, b)


@functools.cache
def _collapsed_pairs(n: int) -> Pairs:
    """``(i, j) -> out`` of the collapsed product: value, summed second, ``n`` first orders."""
    first = range(2, n + 2)
    pairs = [(0, 0, 0), (1, 0, 1), (0, 1, 1)] + [(i, i, 1) for i in first]
    pairs += [(i, 0, i) for i in first] + [(0, i, i) for i in first]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), tuple(p[2] for p in pairs)


def _combine(
    table: tuple[Tensor, Tensor, Tensor], op: Bilinear, a: Tensor, b: Tensor, batched: bool
) -> Tensor:
    ia, ib, m = table
    products = _pairwise(op, a[ia], b[ib], batched)
    out = m @ products.reshape(products.shape[0], -1)
    return out.reshape(m.shape[0], *products.shape[1:])


def _scaled_rows(scale: Tensor, a: Tensor, donated: bool) -> Tensor:
    """``scale * a`` (``scale`` broadcast over the coefficient axis), in ``a``'s memory if it is
    ``donated`` and torch allows it (not when ``scale`` is batched at a ``vmap`` level ``a`` is
    not)."""
    if donated:
        try:
            return a.mul_(scale)
        except RuntimeError:
            pass
    return scale * a


class Univariate:
    """Truncated Taylor series of order ``order`` along one direction."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.size = order + 1

    def unary(
        self,
        rule: UnaryRule,
        a: Tensor,
        *,
        affine: bool = False,
        donated: bool = False,
        first: bool = True,
    ) -> Tensor:
        return rule(a, affine=affine)

    def unary_split(
        self,
        rule: UnaryRule,
        head: Tensor,
        tail: Tensor,
        *,
        affine: bool = False,
        first: bool = True,
    ) -> Tensor:
        if affine:  # from a_0 and a_1 alone, where the rule can
            series = _series.affine(rule, head, tail[0], self.order)
            if series is not None:
                return series
        return rule(join(head, tail, self.size), affine=affine)

    def product(self, op: Bilinear, a: Tensor, b: Tensor, *, batched: bool) -> Tensor:
        if self.size == 1:
            return _pairwise(op, a, b, batched)
        return _combine(pair_table(cauchy_pairs(self.size), self.size, a), op, a, b, batched)

    def divide(self, a: Tensor, b: Tensor) -> Tensor:
        return _series.divide(a, b)


class Collapsed:
    """Value, summed second-order coefficient and ``n`` first-order directions.

    ``unary(..., first=False)`` returns only the value and the summed second order (the caller
    knows that nothing reads the first orders); such a truncated jet may pass through linear ops,
    which act on any number of rows.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.size = n + 2

    def unary(
        self,
        rule: UnaryRule,
        a: Tensor,
        *,
        affine: bool = False,
        donated: bool = False,
        first: bool = True,
    ) -> Tensor:
        scaled = (lambda d1: _scaled_rows(d1, a, donated)) if first else None
        return self._unary(rule, a[0], a[1:], scaled)

    def unary_split(
        self,
        rule: UnaryRule,
        head: Tensor,
        tail: Tensor,
        *,
        affine: bool = False,
        first: bool = True,
    ) -> Tensor:
        tail = join(head, tail, self.size)[1:] if tail.shape[0] < self.size - 1 else tail

        def scaled(d1: Tensor) -> Tensor:  # one pass, batched only where ``d1`` is
            out = empty_series(1 + tail.shape[0], d1) if writable(tail) else None
            if out is None:
                return d1 * torch.cat([torch.zeros_like(tail[:1]), tail])
            torch.mul(d1, tail, out=out[1:])  # row 0 is _unary's to write
            return out

        return self._unary(rule, head, tail, scaled if first else None)

    def _unary(
        self,
        rule: UnaryRule,
        a0: Tensor,
        rest: Tensor,
        scaled: Callable[[Tensor], Tensor] | None,
    ) -> Tensor:
        """``phi`` of the jet ``(a0, *rest)``. ``scaled(phi')`` is ``phi'`` times the input's rows
        1.. in its rows 1.., and anything in row 0 (overwritten here); without it the result ends
        after row 1."""
        y, d1, d2 = _series.second_order(rule, a0)
        squares = _series.sum_of_squares(rest[1:])
        if scaled is None:
            return torch.stack([y, d1 * rest[0] + d2 * squares])
        if tracing():
            return torch.cat(
                [y.unsqueeze(0), (d1 * rest[0] + d2 * squares).unsqueeze(0), d1 * rest[1:]]
            )
        out = scaled(d1)  # rows 1.. hold phi' times the input's: right but for the second order
        try:  # in place on a new tensor (or one nothing else reads): saves copies
            out.select(0, 0).copy_(y)
            out.select(0, 1).add_(d2 * squares)
        except RuntimeError:  # ``out`` lacks a vmap level of ``d``: copy instead
            second = out[1] + d2 * squares
            return torch.cat([y.unsqueeze(0), second.unsqueeze(0), out[2:]])
        return out

    def product(self, op: Bilinear, a: Tensor, b: Tensor, *, batched: bool) -> Tensor:
        return _combine(pair_table(_collapsed_pairs(self.n), self.size, a), op, a, b, batched)

    def divide(self, a: Tensor, b: Tensor) -> Tensor:
        return self.product(torch.mul, a, self.unary(_series.reciprocal, b), batched=True)
