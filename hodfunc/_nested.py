"""The ``"nested"`` method: derivatives by composing ``torch.func`` transforms.

Every primitive is a derivative along a direction of the single free argument, so the outer levels
nest ``jvp`` (forward mode keeps the output's shape and needs no scalar output). The innermost
level is reverse mode (``jacrev`` contracted with the direction): forward over reverse, as in
``torch.func.hessian``. Forward over forward would be as exact in principle, but torch 2.13's
second-order forward rules for some ops are wrong (LayerNorm drops a term: ``jacfwd(jacfwd(f))``
differs from ``jacfwd(jacrev(f))``), and the equivalence suite holds this method to the imperative
path. The cost doubles with each order; that is the baseline the Taylor engine is measured against.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jacfwd, jacrev, jvp, vmap

from ._call import Call
from ._errors import ArgumentError, message
from ._functional import Guard, guard

Fn = Callable[[Tensor], Tensor]

FORWARD_AD = threading.RLock()
"""Held while a nest runs: torch's forward-mode AD levels are process-wide, so two threads nesting
``jvp`` at once corrupt each other's levels ("forward AD level with an invalid index")."""


def value_and_directional(g: Fn, v: Tensor) -> Fn:
    """Return ``x -> stack([g(x), J_g(x) v])`` with the Jacobian from reverse mode."""

    def both(x: Tensor) -> tuple[Tensor, Tensor]:
        out = g(x)
        return out, out

    def level(x: Tensor) -> Tensor:
        jac, out = jacrev(both, has_aux=True)(x)  # jac: out_shape + x.shape
        return torch.stack([out, torch.tensordot(jac, v, dims=v.dim())])

    return level


def jet_fn(g: Fn, v: Tensor, order: int) -> Fn:
    """Return ``x -> stack([d^k/dt^k g(x + t v) at t=0 for k in 0..order])``.

    Order 1 is reverse mode; each further level is one ``jvp`` of the level below, whose primal
    output already holds the lower orders, so all orders come out of one nest.
    """
    if order == 0:
        return lambda x: g(x).unsqueeze(0)
    if order == 1:
        return value_and_directional(g, v)
    inner = jet_fn(g, v, order - 1)

    def level(x: Tensor) -> Tensor:
        lower, tangent = jvp(inner, (x,), (v,))[:2]
        return torch.cat([lower, tangent[-1:]])

    return level


def unit(x: Tensor, index: int) -> Tensor:
    """The basis vector ``e_index`` shaped like ``x``."""
    e = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
    e[index] = 1
    return e.reshape(x.shape)


def basis(x: Tensor) -> Tensor:
    """All basis vectors of ``x``'s space, stacked: shape ``(x.numel(), *x.shape)``."""
    n = x.numel()
    return torch.eye(n, dtype=x.dtype, device=x.device).reshape(n, *x.shape)


def partial_fn(g: Fn, x: Tensor, wrt: tuple[int, ...]) -> Fn:
    """Return ``x -> d^n g / dx[wrt[0]] ... dx[wrt[-1]]``: reverse mode, then nested ``jvp``."""
    if not wrt:
        return g
    if len(wrt) == 1:
        e = unit(x, wrt[0])
        return lambda y: torch.tensordot(jacrev(g)(y), e, dims=e.dim())
    inner = partial_fn(g, x, wrt[:-1])
    e = unit(x, wrt[-1])

    def level(y: Tensor) -> Tensor:
        tangent: Tensor = jvp(inner, (y,), (e,))[1]
        return tangent

    return level


MAX_ORDER = 10
"""The highest order ``method="nested"`` computes. Each order nests one more transform and costs
2-3x the one below: ``sin`` takes about 9 s at order 10 and 100 s at order 12 on one CPU core."""
FALLBACK_MAX_ORDER = 8
"""The highest order at which ``method="auto"`` falls back to nested mode for an operation without
a Taylor rule: ``lgamma`` takes about 1 s at order 8, 12 s at order 9 and 33 s at order 10."""


class NestedEngine:
    """Nested ``torch.func`` forward mode: exact, general, exponential in the order.

    ``fallback=True``: the engine ``method="auto"`` falls back to, which refuses orders above
    ``FALLBACK_MAX_ORDER`` (an ``ArgumentError`` naming the way out, not a run of minutes);
    otherwise orders above ``MAX_ORDER`` are refused."""

    def __init__(self, *, fallback: bool = False) -> None:
        self._fallback = fallback

    def _check_order(self, api: str, order: int) -> None:
        if self._fallback and order > FALLBACK_MAX_ORDER:
            raise ArgumentError(
                message(
                    api,
                    'method="auto" needs nested torch.func here (an operation on the input\'s '
                    "path has no Taylor rule), which costs 2-3x more with each order and is "
                    f"allowed up to order {FALLBACK_MAX_ORDER} as a fallback",
                    f"order {order}",
                    'Use operations that have Taylor rules (method="taylor" names the one '
                    f'missing), or pass method="nested" explicitly for orders up to {MAX_ORDER}.',
                )
            )
        if order > MAX_ORDER:
            raise ArgumentError(
                message(
                    api,
                    "the nested method costs 2-3x more with each order and computes orders up to "
                    f"{MAX_ORDER}",
                    f"order {order}",
                    'Use method="auto" or method="taylor" (Taylor mode, O(order^2)) for high '
                    "orders.",
                )
            )

    def jet(self, call: Call, v: Tensor, order: int, *, read: int = 1) -> Tensor:
        self._check_order(call.api, order)
        with FORWARD_AD, guard(call.api) as watch:
            return jet_fn(_watched(call, watch), v, order)(call.x)

    def partial(self, call: Call, wrt: tuple[int, ...]) -> Tensor:
        self._check_order(call.api, len(wrt))
        with FORWARD_AD, guard(call.api) as watch:
            return partial_fn(_watched(call, watch), call.x, wrt)(call.x)

    def partials(self, call: Call, terms: tuple[tuple[int, ...], ...]) -> tuple[Tensor, ...]:
        """Each partial in ``terms`` from its own nest (nested torch.func shares nothing)."""
        return tuple(self.partial(call, wrt) for wrt in terms)

    def laplacian(self, call: Call) -> Tensor:
        x = call.x

        with FORWARD_AD, guard(call.api) as watch:
            at = _watched(call, watch)

            def second(e: Tensor) -> Tensor:
                return jet_fn(at, e, 2)(x)[2]

            return vmap(second)(basis(x)).sum(0)

    def collapsed(
        self,
        call: Call,
        directions: Tensor,
        form: Tensor | tuple[int, int, int] | None,
        *,
        first: bool,
    ) -> Tensor:
        """``[f, sum_kl G_kl d^2 f[v_k, v_l], d f[v_1], ..., d f[v_n]]`` from the Hessian and
        gradient of ``t -> f(x + sum_k t_k v_k)`` at ``t = 0`` (forward over reverse)."""
        x = call.x
        n = directions.shape[0]
        with FORWARD_AD, guard(call.api) as watch:
            at = _watched(call, watch)

            def along(t: Tensor) -> Tensor:
                return at(x + torch.tensordot(t, directions.to(x.dtype), dims=1))

            t0 = torch.zeros(n, dtype=x.dtype, device=x.device)
            value = along(t0)
            hess = jacfwd(jacrev(along))(t0)  # out_shape + (n, n)
            if isinstance(form, tuple):
                plus, minus, free = form
                form = torch.tensor([1.0] * plus + [-1.0] * minus + [0.0] * free)
            if form is None:
                second = hess.diagonal(dim1=-2, dim2=-1).sum(-1)
            elif form.dim() == 1:
                second = (hess.diagonal(dim1=-2, dim2=-1) * form.to(hess.dtype)).sum(-1)
            else:
                second = (hess * form.to(hess.dtype)).sum((-2, -1))
            parts = [value.unsqueeze(0), second.unsqueeze(0)]
            if first:
                parts.append(jacrev(along)(t0).movedim(-1, 0))
            return torch.cat(parts)


def _watched(call: Call, watch: Guard) -> Fn:
    """``call.at`` with its argument tainted: the guard follows what depends on it."""
    return lambda x: call.at(watch.taint(x))
