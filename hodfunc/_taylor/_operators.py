"""The quadratic-form collapsed algebra behind the linear second-order operators.

``Quadratic(n, form)`` is ``Collapsed(n)`` with the sum of squares replaced by a quadratic form
over the ``n`` directions: row 1 holds ``(1/2) sum_kl G_kl d^2 f[v_k, v_l]`` instead of
``(1/2) sum_k d^2 f[v_k, v_k]``. For ``y = phi(a)``:

    y_2 = phi' a_2 + (phi''/2) sum_kl G_kl a_1,k a_1,l

and for a bilinear ``B``: ``B(a, b)_2 = B(a_0, b_2) + B(a_2, b_0) + sum_k B(a_1,k, (G b_1)_k)``
(``G`` symmetric). ``form`` is ``None`` (``G = I``: the plain collapsed jet), a vector ``w``
(``G = diag(w)``: weighted directions, one multiply more than ``None``), a symmetric matrix
(one ``n x n`` contraction over the direction axis per nonlinear op) or counts ``(plus, minus,
free)``: ``G = diag(+1 x plus, -1 x minus, 0 x free)``, as cheap as ``None`` (two sums of squares
instead of one). With a zero weight, a direction's first orders are carried without entering the
second order: a first-order term of an operator rides along in the same propagation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._functorch import may_record, tracing
from . import _series
from ._algebra import Bilinear, Collapsed, _pairwise
from ._memory import compact

__all__ = ["Form", "Quadratic"]

Form = Tensor | tuple[int, int, int] | None
"""The quadratic form of a ``Quadratic`` jet (see the module)."""


def _mix(form: Tensor, rows: Tensor) -> Tensor:
    """``G rows`` over the leading (direction) axis: ``w * rows`` for a vector ``w``."""
    if form.dim() == 1:
        return form.to(rows.dtype).reshape(-1, *[1] * (rows.dim() - 1)) * rows
    out: Tensor = torch.tensordot(form.to(rows.dtype), rows, dims=1)
    return out


class Quadratic(Collapsed):
    """Value, ``(1/2) sum_kl G_kl d^2 f[v_k, v_l]`` and the ``n`` first orders (see the module)."""

    def __init__(self, n: int, form: Form) -> None:
        super().__init__(n)
        if isinstance(form, tuple) and form[1:] == (0, 0):
            form = None  # all plus: the plain collapsed jet
        self.form = form

    def _squares(self, firsts: Tensor) -> Tensor:
        if self.form is None:
            return _series.sum_of_squares(firsts)
        if isinstance(self.form, tuple):
            plus, minus, free = self.form
            parts = torch.split(firsts, [plus, minus, free])
            if not plus:
                return -_series.sum_of_squares(parts[1])
            if not minus:
                return _series.sum_of_squares(parts[0])
            return _series.sum_of_squares(parts[0]) - _series.sum_of_squares(parts[1])
        rows = compact(firsts, keep=0)
        return (rows * _mix(self.form, rows)).sum(0)

    def _weights(self, like: Tensor) -> Tensor:
        """``G`` as a tensor (``diag`` for the counts)."""
        assert self.form is not None
        if isinstance(self.form, tuple):
            plus, minus, free = self.form
            signs = [1.0] * plus + [-1.0] * minus + [0.0] * free
            return torch.tensor(signs, dtype=like.dtype, device=like.device)
        return self.form

    def _unary(
        self,
        rule: Callable[..., Tensor],
        a0: Tensor,
        rest: Tensor,
        scaled: Callable[[Tensor], Tensor] | None,
    ) -> Tensor:
        y, d1, d2 = _series.second_order(rule, a0)
        summed, firsts = torch.split(rest, [1, rest.shape[0] - 1])
        squares = self._squares(firsts)
        second = d1 * summed.squeeze(0) + d2 * squares
        if scaled is None:
            return torch.stack([y, second])
        if tracing() or may_record(a0) or may_record(rest):
            return torch.cat([y.unsqueeze(0), second.unsqueeze(0), d1 * firsts])
        out = scaled(d1)  # rows 1.. hold phi' times the input's
        try:
            out.select(0, 0).copy_(y)
            out.select(0, 1).add_(d2 * squares)
        except RuntimeError:  # ``out`` lacks a vmap level of ``d``: copy instead
            return torch.cat([y.unsqueeze(0), second.unsqueeze(0), out[2:]])
        return out

    def product(self, op: Bilinear, a: Tensor, b: Tensor, *, batched: bool) -> Tensor:
        """The ``3 n + 3`` pair products in one call of ``op`` on stacked rows (no gather, no
        0/1 matrix: ``Collapsed.product``'s table costs ``(n + 2) (3 n + 3)`` multiply-adds
        per element, a nested Laplacian's hot spot)."""
        n = self.n
        a0, a2, af = torch.split(a, [1, 1, n])
        b0, b2, bf = torch.split(b, [1, 1, n])
        mixed = bf if self.form is None else _mix(self._weights(bf), bf)
        if batched:  # elementwise: broadcast the value rows instead of stacking copies
            second = op(a0, b2) + op(a2, b0) + op(af, mixed).sum(0, keepdim=True)
            return torch.cat([op(a0, b0), second, op(af, b0) + op(a0, bf)])
        left = torch.cat([a0, a0, a2, af, af, a0.expand(n, *a0.shape[1:])])
        right = torch.cat([b0, b2, b0, mixed, b0.expand(n, *b0.shape[1:]), bf])
        products = _pairwise(op, left, right, batched)
        value, s1, s2, cross, f1, f2 = torch.split(products, [1, 1, 1, n, n, n])
        second = s1 + s2 + cross.sum(0, keepdim=True)
        return torch.cat([value, second, f1 + f2])
