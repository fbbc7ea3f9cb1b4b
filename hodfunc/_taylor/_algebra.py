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

from .._functorch import may_record, tracing, writable
from . import _series
from ._memory import compact, empty_series
from ._mixed import Monomial, closure, power_pairs, product_pairs
from ._series import Entry, cauchy_pairs, pair_sum, pair_table

__all__ = ["Algebra", "Collapsed", "Multivariate", "Univariate", "join"]


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
def _collapsed_pairs(n: int) -> tuple[Entry, ...]:
    """The terms of the collapsed product: value, summed second, ``n`` first orders."""
    first = range(2, n + 2)
    pairs = [(0, 0, 0), (1, 0, 1), (0, 1, 1)] + [(i, i, 1) for i in first]
    pairs += [(i, 0, i) for i in first] + [(0, i, i) for i in first]
    return tuple((i, j, k, 1) for i, j, k in pairs)


def _product(
    entries: tuple[Entry, ...], size: int, op: Bilinear, a: Tensor, b: Tensor, batched: bool
) -> Tensor:
    """The bilinear ``op`` of two jets of ``size`` rows, term by term (``_series.pair_sum``)."""
    return pair_sum(pair_table(entries, a), a, b, size, lambda x, y: _pairwise(op, x, y, batched))


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
        return _product(cauchy_pairs(self.size), self.size, op, a, b, batched)

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
        a0, rest = torch.split(a, [1, a.shape[0] - 1])  # one split: see Jet.parts
        return self._unary(rule, a0.squeeze(0), rest, scaled)

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
        summed, firsts = torch.split(rest, [1, rest.shape[0] - 1])
        squares = _series.sum_of_squares(firsts)
        if scaled is None:
            return torch.stack([y, d1 * summed.squeeze(0) + d2 * squares])
        if tracing() or may_record(a0) or may_record(rest):
            # traced, or recorded by autograd: in-place writes would cost a clone of the whole
            # gradient each in the backward (``CopySlices``); one cat costs one copy forward and
            # nothing backward (its gradients are views)
            second = d1 * summed.squeeze(0) + d2 * squares
            return torch.cat([y.unsqueeze(0), second.unsqueeze(0), d1 * firsts])
        out = scaled(d1)  # rows 1.. hold phi' times the input's: right but for the second order
        try:  # in place on a new tensor (or one nothing else reads): saves copies
            out.select(0, 0).copy_(y)
            out.select(0, 1).add_(d2 * squares)
        except RuntimeError:  # ``out`` lacks a vmap level of ``d``: copy instead
            second = out[1] + d2 * squares
            return torch.cat([y.unsqueeze(0), second.unsqueeze(0), out[2:]])
        return out

    def product(self, op: Bilinear, a: Tensor, b: Tensor, *, batched: bool) -> Tensor:
        return _product(_collapsed_pairs(self.n), self.size, op, a, b, batched)

    def divide(self, a: Tensor, b: Tensor) -> Tensor:
        return self.product(torch.mul, a, self.unary(_series.reciprocal, b), batched=True)


def _rows(t: Tensor, columns: tuple[Tensor, ...], rows: list[int]) -> Tensor:
    """``t[rows]`` from ``columns = t.unbind(0)``: ``t`` itself for all its rows in order, a view
    for a single row, else a stack. The backward of ``unbind`` joins the rows' gradients once;
    that of a slice or a select would zero-fill a gradient of all of ``t`` for each."""
    if rows == list(range(t.shape[0])):
        return t
    if len(rows) == 1:
        return columns[rows[0]].unsqueeze(0)
    return torch.stack([columns[r] for r in rows])


class Multivariate:
    """Truncated Taylor polynomials in ``m`` seed variables: the jet of ``f(x + sum_l s_l v_l)``
    restricted to a downward-closed set of monomials ``s^a``, row ``k`` holding the normalized
    coefficient ``(d^a f / a!)`` of ``monomials[k]``.

    Row 0 is the value and rows ``1..m`` are the first orders along each ``v_l``, so a seed is the
    split jet ``(x, [v_1, ..., v_m])`` and an affine jet ends after row ``m``. A mixed partial is
    read off its own row: no interpolation over directions, so no cancellation, and the set holds
    only the monomials the requested partials divide (``d^2 f / dx dy`` needs the rows 1, x, y,
    xy: four, against three for ``d^2 f / dx^2``).

    Products are truncated polynomial products (``product_pairs``). An elementwise ``phi`` is
    composed from its Taylor coefficients at the value, ``phi(a_0 + delta) = sum_p phi_p
    delta^p`` with ``phi_p = phi^(p)(a_0) / p!``, which the univariate rule gives from the series
    of ``a_0 + t``; the powers of ``delta`` are products that only ever reach rows of degree
    ``>= p``. The cost is about ``order`` products per op, so this algebra is meant for the low
    orders of PDE operators; a single high-order partial is cheaper along one direction.
    """

    def __init__(self, monomials: tuple[Monomial, ...]) -> None:
        self.monomials = monomials
        self.size = len(monomials)
        self.variables = len(monomials[0])
        degrees = [sum(a) for a in monomials]
        self.order = max(degrees)
        self._start = [
            next((k for k, d in enumerate(degrees) if d >= p), self.size)
            for p in range(self.order + 2)
        ]

    @classmethod
    def covering(cls, terms: tuple[Monomial, ...]) -> Multivariate:
        """The smallest such algebra whose rows include every monomial in ``terms``."""
        return cls(closure(terms))

    def row(self, monomial: Monomial) -> int:
        """The row holding ``monomial``'s coefficient."""
        return self.monomials.index(monomial)

    def _phi(self, rule: UnaryRule, a0: Tensor) -> list[Tensor]:
        """``phi^(p)(a_0) / p!`` for ``p = 0..order`` (order > 2: ``_compose2`` takes the rest)."""
        seed = torch.stack([a0, torch.ones_like(a0), *[torch.zeros_like(a0)] * (self.order - 1)])
        return list(rule(seed, affine=True).unbind(0))

    def _compose(self, rule: UnaryRule, a0: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """``phi(a_0 + delta)`` as ``(value, rows 1..)``; ``delta`` holds rows ``1..`` (fewer:
        the rest are zeros)."""
        if self.order <= 2:
            return self._compose2(rule, a0, delta)
        phi = self._phi(rule, a0)
        rows = delta.shape[0]
        power = delta
        acc = phi[1] * delta
        if acc.shape[0] < self.size - 1:  # an affine jet: its rows past the first orders are 0
            pad = acc.new_zeros(()).expand(self.size - 1 - acc.shape[0], *acc.shape[1:])
            acc = torch.cat([acc, pad])
        for p in range(2, self.order + 1):
            table = pair_table(power_pairs(self.monomials, p, min(rows, self.size - 1)), a0)
            power = pair_sum(table, delta, power, self.size - self._start[p])
            offset = self._start[p] - 1  # delta^p reaches the rows of degree >= p only
            acc = torch.cat([acc[:offset], acc[offset:] + phi[p] * power])
        return phi[0], acc

    def _compose2(self, rule: UnaryRule, a0: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """``_compose`` at order <= 2, in about ten passes over the rows: ``y_l = phi' a_l`` for
        the first orders and ``y_g = phi' a_g + (phi''/2) (delta^2)_g`` for the second, where
        ``(delta^2)_g`` is ``a_l^2`` or ``2 a_l a_k``: one pair per monomial of degree 2."""
        y, d1, d2 = _series.second_order(rule, a0)
        m = self.variables
        if delta.shape[0] > m:
            delta, higher = torch.split(delta, [m, delta.shape[0] - m])
        else:
            higher = None
        parts = [d1 * delta]
        if self.order == 2:
            pairs = power_pairs(self.monomials, 2, m)
            left = [i for i, _, _, _ in pairs]
            right = [j for _, j, _, _ in pairs]
            # point-independent first orders (the images of the seeds before the first
            # nonlinearity) are multiplied once, not at every point
            first = compact(delta, keep=0)
            columns = first.unbind(0)
            squares = _rows(first, columns, left) * _rows(first, columns, right)
            weights = {w for _, _, _, w in pairs}
            weight = float(next(iter(weights))) if len(weights) == 1 else 1.0  # 2: mixed rows
            if len(weights) > 1:  # squares and mixed products together: a weight per row
                scale = torch.tensor(
                    [float(w) for _, _, _, w in pairs], dtype=squares.dtype, device=squares.device
                )
                squares = squares * scale.reshape(-1, *[1] * (squares.dim() - 1))
            inputs = (a0, delta) if higher is None else (a0, delta, higher)
            tail = empty_series(self.size - 1, d1) if all(map(writable, inputs)) else None
            if tail is not None:  # nothing records: write both blocks into one tail, no cat
                first_rows, second_rows = torch.split(tail, [m, self.size - 1 - m])
                torch.mul(d1, delta, out=first_rows)
                if higher is None:
                    torch.mul(d2, squares, out=second_rows)
                    if weight != 1.0:
                        second_rows.mul_(weight)
                else:
                    torch.mul(d1, higher, out=second_rows)
                    second_rows.addcmul_(d2, squares, value=weight)
                return y, tail
            base = d1 * higher if higher is not None else d2.new_zeros(())
            second = torch.addcmul(base, d2, squares, value=weight)  # one pass for all terms
            parts.append(second)  # a cat costs one copy forward and nothing backward
        return y, torch.cat(parts) if len(parts) > 1 else parts[0]

    def unary(
        self,
        rule: UnaryRule,
        a: Tensor,
        *,
        affine: bool = False,
        donated: bool = False,
        first: bool = True,
    ) -> Tensor:
        a0, rest = torch.split(a, [1, a.shape[0] - 1])  # one split: see Jet.parts
        return join(*self.unary_parts(rule, a0.squeeze(0), rest, affine=affine), self.size)

    def unary_split(
        self,
        rule: UnaryRule,
        head: Tensor,
        tail: Tensor,
        *,
        affine: bool = False,
        first: bool = True,
    ) -> Tensor:
        return join(*self.unary_parts(rule, head, tail, affine=affine), self.size)

    def unary_parts(
        self, rule: UnaryRule, head: Tensor, tail: Tensor, *, affine: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``unary_split`` held split, ``(value, rows 1..)``: a linear layer next takes the two
        parts as they are, so the jet is never joined (no copy forward, none backward). An
        affine jet's rows after its first orders are zeros: they are split off, not sliced."""
        m = self.variables
        if affine and tail.shape[0] > m:
            tail = torch.split(tail, [m, tail.shape[0] - m])[0]
        return self._compose(rule, head, tail)

    def product(self, op: Bilinear, a: Tensor, b: Tensor, *, batched: bool) -> Tensor:
        return _product(product_pairs(self.monomials), self.size, op, a, b, batched)

    def divide(self, a: Tensor, b: Tensor) -> Tensor:
        return self.product(torch.mul, a, self.unary(_series.reciprocal, b), batched=True)
