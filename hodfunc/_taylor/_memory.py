"""Memory layout of series buffers: dense in the order of the tensors they extend, filled row by
row, and the compaction of directions repeated at every point.

The maths layers (``_series``, ``_algebra``, ``_rules``) use these; none of them imports the
tracer. The functorch questions they need are answered by ``hodfunc._functorch``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._allocator import empty_result
from .._functorch import dense_order, transformed, writable

__all__ = ["compact", "empty_series", "stack_dense"]


def _series_layout(like: Tensor) -> tuple[list[int], list[int]] | None:
    """``(order, back)``: the dims of ``like`` from outermost to innermost in memory, and the
    permutation of a ``(n, *[like.shape[d] for d in order])`` buffer (coefficient axis first)
    that gives it ``like``'s shape; ``None`` if ``like`` is not dense in any order."""
    order = list(range(like.dim())) if like.is_contiguous() else dense_order(like)
    if order is None:
        return None
    back = [0] * like.dim()
    for position, d in enumerate(order):
        back[d] = position + 1
    return order, [0, *back]


def compact(t: Tensor, *, keep: int) -> Tensor:
    """``t`` narrowed to one element along every dim but ``keep`` that it only repeats (stride 0,
    as ``expand`` leaves it). A linear op that maps those dims independently can run on the
    compact view and ``expand`` its result: the directions seeded at a whole batch of points
    are the same at every point, and so are their images under the first linear layer."""
    if transformed(t) or t.dim() == 0:
        return t
    if not -t.dim() <= keep < t.dim():
        raise IndexError(f"compact: keep={keep} is out of range for {t.dim()} dims")
    keep = keep % t.dim()
    for d in range(t.dim()):
        if d != keep and t.stride(d) == 0 and t.shape[d] > 1:
            t = t.narrow(d, 0, 1)
    return t


def empty_series(size: int, like: Tensor) -> Tensor | None:
    """An uninitialised ``(size, *like.shape)`` tensor for a series computed coefficient by
    coefficient (each row written with ``out=``): every row has ``like``'s memory order, so the
    elementwise ops writing it and the linear layer reading it stream through memory. Large
    buffers may use huge pages (``_allocator.empty_result``). ``None`` where ``writable`` says
    no, or ``like`` is not dense."""
    layout = _series_layout(like) if writable(like) else None
    if layout is None:
        return None
    order, back = layout
    return empty_result((size, *[like.shape[d] for d in order]), like).permute(back)


def stack_dense(ts: list[Tensor]) -> Tensor:
    """``torch.stack(ts)`` that keeps the memory order the (plain, alike) tensors share, into
    memory that faults in cheaply.

    A linear layer of a batch of points, as ``vmap``'s trace writes it, leaves permuted results;
    stacking those into a contiguous tensor is a transposing copy (slow), stacking them in their
    own order is a plain one, and the result is a permuted view. A stack of a whole batch is
    megabytes of fresh memory per call, faulted in 4 KiB at a time unless it is allowed huge
    pages (``_allocator.empty_result``, which affects only that tensor's pages).
    """
    first = ts[0]
    layout = None if transformed(first) else _series_layout(first)
    if layout is None or any(t.stride() != first.stride() for t in ts):
        return torch.stack(ts)
    order, back = layout
    views = [t.permute(order) for t in ts]
    if all(map(writable, ts)):
        stacked = torch.stack(views, out=empty_result((len(ts), *views[0].shape), first))
    else:
        stacked = torch.stack(views)
    return stacked.permute(back)
