"""``hodfunc.distributed.batched``: ``hodfunc.batched`` with the points shared out over the ranks.

The points are cut on the chunk grid of the one-process call: chunk ``j`` holds the points
``[j c, (j + 1) c)`` exactly as in ``hodfunc.batched(fn, chunk_size=c)``, and each rank gets a
contiguous run of whole chunks (the first ``n_chunks % world`` ranks one more). Every point is
therefore computed in the same chunk, by the same kernels, as in one process, which is what
makes the result bitwise equal to it; a finer grid (a smaller ``chunk_size``) balances better.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, ParamSpec, overload

import torch
from torch import Tensor
from torch.distributed import ProcessGroup

from .._errors import ArgumentError, ArgumentTypeError, ShapeError, message
from .._transforms._batched import _batch_size, _check_in_dims, _dims, _narrow
from .._transforms._batched import batched as local_batched
from .._validate import check_callable, check_chunk_size
from ._ddp import refuse_ddp
from ._group import Group, agree, gather_rows, resolve

P = ParamSpec("P")
Result = Literal["all", "one", "shard"]
_RESULTS: tuple[Result, ...] = ("all", "one", "shard")


@dataclass(frozen=True)
class Shard:
    """This rank's part of a sharded evaluation: ``values[i]`` is the result at point
    ``start + i`` of the ``total`` points (``values`` has ``stop - start`` rows, maybe 0)."""

    values: Tensor
    start: int
    stop: int
    total: int


def shard_bounds(total: int, chunk_size: int | None, world: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every rank's share of ``total`` points: whole chunks of
    ``chunk_size`` (the first ``n_chunks % world`` ranks one more), or with ``chunk_size=None``
    single points (the first ``total % world`` ranks one more)."""
    unit = 1 if chunk_size is None else chunk_size
    units = -(-total // unit)
    base, extra = divmod(units, world)
    bounds: list[tuple[int, int]] = []
    first = 0
    for r in range(world):
        last = first + base + (1 if r < extra else 0)
        bounds.append((min(first * unit, total), min(last * unit, total)))
        first = last
    return bounds


def shard_range(
    total: int, *, chunk_size: int | None = None, group: ProcessGroup | None = None
) -> range:
    """The indices of the points (or samples) this rank owns out of ``total``.

    The same split as ``hodfunc.distributed.batched`` with that ``chunk_size``: contiguous,
    in rank order, as even as whole chunks allow (with ``chunk_size=None``, as even as single
    points allow). Use it to build only the local points, or to split a DP-SGD batch.

    Args:
        total: the number of points, an int >= 0.
        chunk_size: the chunk grid to split on, or None for single points.
        group: the process group (default: the default group).

    Returns:
        ``range(start, stop)`` for this rank; empty where a rank gets nothing.

    Raises:
        ArgumentError: no process group is initialised, or ``total`` is negative.

    Example:
        >>> import tempfile, torch.distributed as dist, hodfunc.distributed as hd
        >>> store = dist.FileStore(tempfile.mktemp(), 1)
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> hd.shard_range(10, chunk_size=4)
        range(0, 10)
        >>> dist.destroy_process_group()
    """
    api = "hodfunc.distributed.shard_range"
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ArgumentError(message(api, "total must be an int >= 0", repr(total)))
    chunk = check_chunk_size(api, chunk_size)
    g = resolve(api, group)
    start, stop = shard_bounds(total, chunk, g.size)[g.rank]
    return range(start, stop)


def _check_result(api: str, result: object, dst: object) -> tuple[Result, int]:
    if result not in _RESULTS:
        raise ArgumentError(
            message(
                api,
                'result must be "all" (the full result on every rank), "one" (on rank dst) or '
                '"shard" (this rank\'s rows and their offsets)',
                repr(result),
                'Use result="shard" when the full result does not fit on one rank.',
            )
        )
    if isinstance(dst, bool) or not isinstance(dst, int) or dst < 0:
        raise ArgumentTypeError(
            message(api, "dst must be an int >= 0 (a rank of the group)", repr(dst), "Use dst=0.")
        )
    return result, dst


@dataclass(frozen=True)
class _Meta:
    """What each rank tells the others after its share: enough to check and to gather."""

    total: int
    shape: tuple[int, ...] | None  # of one point's result; None on a rank without points
    dtype: torch.dtype | None


def _local(
    api: str,
    fn: Callable[..., Tensor],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    dims_spec: int | tuple[int | None, ...] | None,
    chunk: int | None,
    progress: bool,
    g: Group,
) -> tuple[int, int, int, Tensor | None]:
    """This rank's ``(total, start, stop, values)``; ``values`` is None without points."""
    dims = _dims(api, dims_spec, len(args))
    total = _batch_size(api, args, dims)
    start, stop = shard_bounds(total, chunk, g.size)[g.rank]
    if stop == start:
        return total, start, stop, None
    part = tuple(_narrow(a, d, start, stop - start) for a, d in zip(args, dims, strict=True))
    mapped = local_batched(fn, in_dims=dims, chunk_size=chunk, progress=progress and g.rank == 0)
    return total, start, stop, mapped(*part, **kwargs)


def _device(args: tuple[object, ...]) -> torch.device:
    for a in args:
        if isinstance(a, Tensor):
            return a.device
    return torch.device("cpu")


def _check_meta(api: str, metas: list[_Meta]) -> tuple[int, tuple[int, ...], torch.dtype]:
    """The total, per-point shape and dtype every rank agrees on, or ShapeError on every rank."""
    totals = {m.total for m in metas}
    if len(totals) != 1:
        shown = ", ".join(f"rank {r}: {m.total}" for r, m in enumerate(metas))
        raise ShapeError(
            message(
                api,
                "every rank must pass the same points (all of them; each rank evaluates its share)",
                f"batch sizes {shown}",
                "Pass the whole batch on every rank, or build only the local points with "
                "hodfunc.distributed.shard_range and call hodfunc.batched on them.",
            )
        )
    kinds = {(m.shape, m.dtype) for m in metas if m.shape is not None}
    if len(kinds) != 1:
        shown = ", ".join(f"rank {r}: {m.shape} {m.dtype}" for r, m in enumerate(metas))
        raise ShapeError(
            message(
                api,
                "fn must return the same shape and dtype per point on every rank",
                shown,
                "Make fn's output shape independent of the values of the points.",
            )
        )
    shape, dtype = next(iter(kinds))
    assert shape is not None
    assert dtype is not None
    return totals.pop(), shape, dtype


@overload
def batched(
    fn: Callable[P, Tensor],
    *,
    in_dims: int | Sequence[int | None] | None = 0,
    chunk_size: int | None = None,
    progress: bool = False,
    result: Literal["all"] = "all",
    dst: int = 0,
    group: ProcessGroup | None = None,
) -> Callable[P, Tensor]: ...
@overload
def batched(
    fn: Callable[P, Tensor],
    *,
    in_dims: int | Sequence[int | None] | None = 0,
    chunk_size: int | None = None,
    progress: bool = False,
    result: Literal["one"],
    dst: int = 0,
    group: ProcessGroup | None = None,
) -> Callable[P, Tensor | None]: ...
@overload
def batched(
    fn: Callable[P, Tensor],
    *,
    in_dims: int | Sequence[int | None] | None = 0,
    chunk_size: int | None = None,
    progress: bool = False,
    result: Literal["shard"],
    dst: int = 0,
    group: ProcessGroup | None = None,
) -> Callable[P, Shard]: ...
def batched(
    fn: Callable[P, Tensor],
    *,
    in_dims: int | Sequence[int | None] | None = 0,
    chunk_size: int | None = None,
    progress: bool = False,
    result: Result = "all",
    dst: int = 0,
    group: ProcessGroup | None = None,
) -> Callable[P, Tensor] | Callable[P, Tensor | None] | Callable[P, Shard]:
    """``hodfunc.batched`` over the ranks of a process group: each evaluates its share.

    Every rank calls the returned function with the same (whole) batch; rank ``r`` evaluates the
    points of ``shard_range(N, chunk_size=chunk_size)`` with ``hodfunc.batched(fn, in_dims,
    chunk_size)``, and the shares are put back together in point order. The points are cut on
    the chunk grid of the one-process call, so with the same ``chunk_size`` every point goes
    through the same chunk as in one process and the result is bitwise equal to
    ``hodfunc.batched(fn, in_dims=in_dims, chunk_size=chunk_size)(*args)``. With
    ``chunk_size=None`` each rank evaluates its share (as even as single points allow) in one
    call. A point count that divides into no even split is fine; a rank may get no points.

    Args:
        fn: the per-point function, as for ``hodfunc.batched``; it must not call a
            ``DistributedDataParallel`` module.
        in_dims: which positional arguments are batched (as for ``hodfunc.batched``).
        chunk_size: points per call; also the grain of the split between ranks.
        progress: a progress bar on stderr for rank 0's share.
        result: ``"all"``: the full result on every rank (an all-gather); ``"one"``: the full
            result on group rank ``dst`` and ``None`` on the others (a gather); ``"shard"``: no
            gather, a ``Shard`` with this rank's rows and their offsets.
        dst: the rank (in ``group``) that receives the result when ``result="one"``.
        group: the process group (default: the default group, all ranks).

    Returns:
        A function with ``fn``'s signature returning a tensor of shape ``(N, *out)``, or
        ``None`` off ``dst`` (``result="one"``), or a ``Shard`` (``result="shard"``).

    Raises:
        ArgumentError: no process group is initialised, ``result`` or ``dst`` is invalid.
        ArgumentTypeError: ``fn`` reaches a ``DistributedDataParallel`` module.
        ShapeError: the ranks pass different numbers of points, or the batch is invalid.
        RankError: another rank failed on its share (every rank raises, none hangs).

    Example:
        >>> import tempfile, torch, torch.distributed as dist, hodfunc, hodfunc.distributed as hd
        >>> store = dist.FileStore(tempfile.mktemp(), 1)
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> d2 = hd.batched(hodfunc.derivative(torch.sin, order=2), chunk_size=2)
        >>> d2(torch.tensor([0.5, 1.0, 2.0]))  # on every rank; torchrun runs this on each
        tensor([-0.4794, -0.8415, -0.9093])
        >>> part = hd.batched(hodfunc.derivative(torch.sin, order=2), result="shard")
        >>> shard = part(torch.tensor([0.5, 1.0, 2.0]))
        >>> shard.start, shard.stop, shard.total
        (0, 3, 3)
        >>> dist.destroy_process_group()
    """
    api = "hodfunc.distributed.batched"
    check_callable(api, fn, "fn")
    refuse_ddp(api, fn)
    dims_spec = _check_in_dims(api, in_dims)
    chunk = check_chunk_size(api, chunk_size)
    mode, dst_rank = _check_result(api, result, dst)
    fn_tensor: Callable[..., Tensor] = fn

    def run(args: tuple[object, ...], kwargs: dict[str, object]) -> Shard | Tensor | None:
        g = resolve(api, group)
        if mode == "one" and dst_rank >= g.size:
            raise ArgumentError(
                message(api, f"dst must be a rank of the group (< {g.size})", dst_rank, "Use 0.")
            )
        error: Exception | None = None
        total, start, stop, values = 0, 0, 0, None
        try:
            total, start, stop, values = _local(
                api, fn_tensor, args, kwargs, dims_spec, chunk, progress, g
            )
        except Exception as e:  # every rank learns of it before any waits in a gather
            error = e
        shape = None if values is None else tuple(values.shape[1:])
        dtype = None if values is None else values.dtype
        metas = agree(api, g, error, _Meta(total, shape, dtype))
        total, shape, dtype = _check_meta(api, metas)
        if values is None:
            values = torch.empty((0, *shape), dtype=dtype, device=_device(args))
        if mode == "shard":
            return Shard(values, start, stop, total)
        counts = [b - a for a, b in shard_bounds(total, chunk, g.size)]
        return gather_rows(g, values, counts, dst=dst_rank if mode == "one" else None)

    # three closures, one per result type, so each overload's return type is what it says
    if mode == "shard":

        @functools.wraps(fn)
        def sharded(*args: P.args, **kwargs: P.kwargs) -> Shard:
            out = run(args, kwargs)
            assert isinstance(out, Shard)
            return out

        return sharded
    if mode == "one":

        @functools.wraps(fn)
        def one(*args: P.args, **kwargs: P.kwargs) -> Tensor | None:
            out = run(args, kwargs)
            assert out is None or isinstance(out, Tensor)
            return out

        return one

    @functools.wraps(fn)
    def everywhere(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        out = run(args, kwargs)
        assert isinstance(out, Tensor)
        return out

    return everywhere
