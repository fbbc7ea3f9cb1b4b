"""Helpers the rule families share: lifting constants to coefficients, affine shortcuts, running
an op once per coefficient."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..._errors import UnsupportedOperationError, message
from ..._functorch import tracing
from ._spec import Context, Jet

__all__ = [
    "affine",
    "affine_fresh",
    "coefficientwise",
    "dim",
    "lift",
    "no_jets",
    "promote",
    "rank_of",
    "unsupported",
    "value",
    "vmapped",
    "wrap",
]


def unsupported(ctx: Context, what: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        message(
            ctx.api,
            "Taylor mode has no rule for this use of an operation",
            what,
            'Use method="nested" (or "auto", which falls back to it).',
        )
    )


def lift(c: Tensor, rank: int) -> Tensor:
    """Insert unit dims after the coefficient axis so the value has at least ``rank`` dims."""
    have = c.dim() - 1
    if have >= rank:
        return c
    return c.reshape(c.shape[0], *([1] * (rank - have)), *c.shape[1:])


def rank_of(v: object) -> int:
    if isinstance(v, Jet):
        return v.rank
    if isinstance(v, Tensor):
        return v.dim()
    return 0


def promote(ctx: Context, v: object, like: Jet) -> Tensor:
    """Coefficients of ``v``: a constant has zero coefficients beyond the value."""
    if isinstance(v, Jet):
        return v.c
    t = v if isinstance(v, Tensor) else torch.tensor(v, dtype=like.c.dtype, device=like.c.device)
    zeros = torch.zeros_like(t).unsqueeze(0).expand(ctx.algebra.size - 1, *t.shape)
    return torch.cat([t.unsqueeze(0), zeros])


def coefficientwise(a: Jet, linear: Callable[[Tensor], Tensor]) -> Jet:
    """``linear`` (which maps the leading axis as a batch axis) applied to every coefficient of
    ``a``; a split jet stays split."""
    if a.split is None:
        return Jet(linear(a.c))
    head, tail = a.split
    # squeeze, not [0]: the backward of a select zero-fills a gradient and copies into it
    return Jet(split=(linear(head.unsqueeze(0)).squeeze(0), linear(tail)), size=a.size)


def affine(a: Jet, const: object) -> Jet:
    """``a + const`` with the constant added to coefficient 0 only."""
    if isinstance(const, (int, float)) and const == 0:
        return a
    # held split, not joined: no copy of the coefficients (the next op, a nonlinearity or a
    # linear layer, takes the parts as they are)
    value, tail = a.parts()
    head = value + const  # type: ignore[operator]  # a tensor or a number
    if tuple(head.shape) != tuple(tail.shape[1:]):
        tail = lift(tail, head.dim()).expand(tail.shape[0], *head.shape)
    return Jet(split=(head, tail), size=a.size)


def fits(shape: Sequence[int], into: Sequence[int]) -> bool:
    """Whether ``shape`` broadcasts to ``into`` without growing it (``torch.broadcast_shapes``
    is pure Python and slow for a test on every linear layer)."""
    return len(shape) <= len(into) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(into), strict=False)
    )


def affine_fresh(a: Jet, const: object) -> Jet:
    """``affine`` for a ``Jet`` this rule just computed: add in place to coefficient 0.

    Saves a full copy of the coefficients (a bias after every linear layer). In place is safe: the
    tensor is new and no backward formula saved it. When ``const`` is batched at a ``vmap`` level
    that ``a`` is not, torch refuses the in-place add, and the copy is made after all.
    """
    if a.split is not None:
        return affine(a, const)
    if (
        tracing()
        or not isinstance(const, (Tensor, int, float))
        or not fits(const.shape if isinstance(const, Tensor) else (), a.c.shape[1:])
        or torch.result_type(a.c, const) != a.c.dtype  # add_ would not promote
    ):
        return affine(a, const)
    try:
        a.c.select(0, 0).add_(const)
    except RuntimeError:
        return affine(a, const)
    return a


def value(v: object) -> object:
    return v.c[0] if isinstance(v, Jet) else v


def wrap(out: object) -> object:
    if isinstance(out, Tensor):
        return Jet(out)
    if isinstance(out, (tuple, list)):
        return type(out)(wrap(o) for o in out)
    return out


def dim(d: int, rank: int) -> int:
    """``d`` normalized against a value of ``rank`` dims, then shifted past the coefficient axis."""
    return (d + rank if d < 0 else d) + 1


def no_jets(ctx: Context, name: str, values: Sequence[object]) -> None:
    for v in values:
        leaves = v if isinstance(v, (list, tuple)) else (v,)
        if any(isinstance(leaf, Jet) for leaf in leaves):
            raise unsupported(
                ctx, f"aten.{name} with an input-dependent argument other than the first"
            )


def vmapped(
    op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    """Run ``op`` once per coefficient via ``vmap`` (the coefficient axis of every ``Jet``)."""
    dims = tuple(
        [0 if isinstance(x, Jet) else None for x in a]
        if isinstance(a, (list, tuple))
        else (0 if isinstance(a, Jet) else None)
        for a in args
    )
    plain = tuple(
        [x.c if isinstance(x, Jet) else x for x in a]
        if isinstance(a, (list, tuple))
        else (a.c if isinstance(a, Jet) else a)
        for a in args
    )

    def once(*xs: object) -> object:
        return op(*xs, **kwargs)

    return wrap(torch.func.vmap(once, in_dims=dims)(*plain))
