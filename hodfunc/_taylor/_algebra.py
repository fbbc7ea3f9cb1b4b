"""The two coefficient algebras a propagation runs in: univariate Taylor series and the collapsed
(forward-Laplacian) jet.

Both store a value that depends on the input as one tensor with a leading coefficient axis, so a
linear op runs once on all coefficients (one matmul or conv launch, not one per coefficient), and
an affine op adds its constant to coefficient 0 only. They differ only in nonlinear ops:

- ``Univariate(K)``: ``(K + 1, *S)`` normalized Taylor coefficients of ``f(x + t v)``. Products
  are Cauchy convolutions, elementwise functions the recurrences of ``_series``.
- ``Collapsed(n)``: ``(n + 2, *S)`` = the value, the ``n`` first-order coefficients along every
  coordinate direction, and the *sum* over directions of the normalized second-order coefficients
  (Dangel et al. 2025; the forward Laplacian of Li et al. 2024). For ``y = phi(a)``:
  ``y_1,i = phi' a_1,i`` and ``y_2 = phi' a_2 + (phi''/2) sum_i a_1,i^2``; for a bilinear ``B``:
  ``B(a, b)_2 = B(a_0, b_2) + B(a_2, b_0) + sum_i B(a_1,i, b_1,i)``. ``phi'`` and ``phi''/2`` come
  from the univariate recurrence of ``phi`` at order 2, so every elementwise rule serves both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from . import _series
from ._series import Pairs, cauchy_pairs, pair_table
from ._trace import tracing

__all__ = ["Algebra", "Collapsed", "Univariate"]


class UnaryRule(Protocol):
    """A univariate series rule; ``affine`` promises ``a = a_0 + a_1 t`` (a cheaper recurrence)."""

    def __call__(self, a: Tensor, *, affine: bool = False) -> Tensor: ...


Bilinear = Callable[[Tensor, Tensor], Tensor]


class Algebra(Protocol):
    """What differs between propagation modes: the nonlinear ops."""

    size: int
    """The length of the coefficient axis."""

    def unary(
        self, rule: UnaryRule, a: Tensor, *, affine: bool = False, donated: bool = False
    ) -> Tensor:
        """``phi(a)`` where ``rule`` is ``phi``'s univariate series rule.

        ``affine``: ``a`` is known to be an affine function of the input (``a_k = 0`` for k >= 2).
        ``donated``: nothing else reads ``a``; its memory may hold the result.
        """
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


def _pairwise(op: Bilinear, a: Tensor, b: Tensor, batched: bool) -> Tensor:
    if batched:
        return op(a, b)
    return torch.func.vmap(op)(a, b)


@functools.cache
def _collapsed_pairs(n: int) -> Pairs:
    """``(i, j) -> out`` of the collapsed product: value, ``n`` first orders, summed second."""
    top = n + 1
    pairs = [(0, 0, 0)]
    pairs += [(i, 0, i) for i in range(1, top)] + [(0, i, i) for i in range(1, top)]
    pairs += [(top, 0, top), (0, top, top)] + [(i, i, top) for i in range(1, top)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), tuple(p[2] for p in pairs)


def _combine(
    table: tuple[Tensor, Tensor, Tensor], op: Bilinear, a: Tensor, b: Tensor, batched: bool
) -> Tensor:
    ia, ib, m = table
    products = _pairwise(op, a[ia], b[ib], batched)
    out = m @ products.reshape(products.shape[0], -1)
    return out.reshape(m.shape[0], *products.shape[1:])


def _sum_of_squares(rows: Tensor, block: int = 8) -> Tensor:
    """``(rows * rows).sum(0)``, squaring ``block`` rows at a time: a temporary as large as
    ``rows`` would be fresh memory (page faults) on every call."""
    total = rows[:block].square().sum(0)
    for start in range(block, rows.shape[0], block):
        total += rows[start : start + block].square().sum(0)
    return total


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
        self, rule: UnaryRule, a: Tensor, *, affine: bool = False, donated: bool = False
    ) -> Tensor:
        return rule(a, affine=affine)

    def product(self, op: Bilinear, a: Tensor, b: Tensor, *, batched: bool) -> Tensor:
        if self.size == 1:
            return _pairwise(op, a, b, batched)
        return _combine(pair_table(cauchy_pairs(self.size), self.size, a), op, a, b, batched)

    def divide(self, a: Tensor, b: Tensor) -> Tensor:
        return _series.divide(a, b)


class Collapsed:
    """Value, ``n`` first-order directions and the summed second-order coefficient."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.size = n + 2

    def unary(
        self, rule: UnaryRule, a: Tensor, *, affine: bool = False, donated: bool = False
    ) -> Tensor:
        a0 = a[0]
        d = rule(torch.stack([a0, torch.ones_like(a0), torch.zeros_like(a0)]), affine=True)
        first = a[1 : self.n + 1]
        second = d[1] * a[self.n + 1] + d[2] * _sum_of_squares(first)
        if tracing():
            return torch.cat([d[:1], d[1] * first, second.unsqueeze(0)])
        out = _scaled_rows(d[1], a, donated)  # rows 1..n are right; set rows 0 and n + 1
        try:  # in place on a tensor nothing else reads: saves a copy
            out.select(0, 0).copy_(d[0])
            out.select(0, self.n + 1).copy_(second)
        except RuntimeError:  # ``out`` lacks a vmap level of ``d``: copy instead
            return torch.cat([d[:1], out[1 : self.n + 1], second.unsqueeze(0)])
        return out

    def product(self, op: Bilinear, a: Tensor, b: Tensor, *, batched: bool) -> Tensor:
        return _combine(pair_table(_collapsed_pairs(self.n), self.size, a), op, a, b, batched)

    def divide(self, a: Tensor, b: Tensor) -> Tensor:
        return self.product(torch.mul, a, self.unary(_series.reciprocal, b), batched=True)
