"""``batched``: vmap over a leading batch dimension, in chunks, with optional progress."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ParamSpec, Protocol, TypeVar

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils import _pytree as pytree

from .._errors import ArgumentError, ArgumentTypeError, ShapeError, message
from .._validate import check_callable, check_chunk_size, check_dense, check_output

P = ParamSpec("P")
R = TypeVar("R", Tensor, tuple[Tensor, ...], dict[str, Tensor])


class _Bar(Protocol):
    def update(self, n: int) -> object: ...


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[_Bar | None]:
    """A tqdm bar on stderr when enabled and tqdm is installed; otherwise a plain line per chunk."""
    if not enabled:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield _PlainBar(total)
        return
    with tqdm(total=total, unit="pt", file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar


class _PlainBar:
    """Fallback progress without tqdm: one line per update on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def update(self, n: int) -> None:
        self.done += n
        print(f"hodfunc.batched: {self.done}/{self.total} points", file=sys.stderr)


def _check_in_dims(api: str, in_dims: object) -> int | tuple[int | None, ...] | None:
    """Return ``in_dims`` if it is None, an int, or a list or tuple of ints and Nones."""
    fix = "Use in_dims=0 (every argument batched on dim 0) or a tuple such as (0, None)."
    if in_dims is None or (isinstance(in_dims, int) and not isinstance(in_dims, bool)):
        return in_dims
    if not isinstance(in_dims, (list, tuple)):
        raise ArgumentTypeError(
            message(
                api,
                "in_dims must be an int, None, or a tuple of ints and Nones (one per positional "
                "argument)",
                f"{in_dims!r} of type {type(in_dims).__name__}",
                fix,
            )
        )
    bad = [d for d in in_dims if d is not None and (isinstance(d, bool) or not isinstance(d, int))]
    if bad:
        raise ArgumentTypeError(
            message(api, "every entry of in_dims must be an int or None", repr(tuple(in_dims)), fix)
        )
    return tuple(in_dims)


def _dims(api: str, in_dims: int | Sequence[int | None] | None, nargs: int) -> list[int | None]:
    if in_dims is None or isinstance(in_dims, int):
        return [in_dims] * nargs
    dims = list(in_dims)
    if len(dims) != nargs:
        raise ArgumentError(
            message(
                api,
                f"in_dims must have one entry per positional argument ({nargs})",
                f"in_dims={tuple(dims)}",
                "Use 0 for batched arguments and None for shared ones.",
            )
        )
    return dims


def _batch_size(api: str, args: tuple[object, ...], dims: list[int | None]) -> int:
    sizes: dict[int, int] = {}
    for i, (a, d) in enumerate(zip(args, dims, strict=True)):
        if d is None:
            continue
        if not isinstance(a, Tensor):
            raise ArgumentTypeError(
                message(
                    api,
                    f"argument {i} is batched (in_dims {d}) but is not a tensor",
                    type(a).__name__,
                    "Give it in_dims=None.",
                )
            )
        if not -a.dim() <= d < max(a.dim(), 1) or a.dim() == 0:
            raise ShapeError(
                message(
                    api,
                    f"in_dims={d} must name a dimension of argument {i}",
                    f"shape {tuple(a.shape)}",
                    "",
                )
            )
        check_dense(api, a, f"batched argument {i}")
        sizes[i] = a.shape[d]
    if not sizes:
        raise ArgumentError(
            message(api, "at least one argument must be batched", "in_dims all None")
        )
    if len(set(sizes.values())) != 1:
        shown = ", ".join(f"argument {i}: {n}" for i, n in sizes.items())
        raise ShapeError(
            message(
                api,
                "every batched argument must have the same batch size",
                shown,
                "Slice or repeat the inputs so their batch dimensions agree.",
            )
        )
    size = next(iter(sizes.values()))
    if size == 0:
        raise ShapeError(message(api, "the batch must hold at least one point", "batch size 0"))
    return size


def _narrow(a: object, dim: int | None, start: int, length: int) -> object:
    if dim is None or not isinstance(a, Tensor):
        return a
    return a.narrow(dim, start, min(length, a.shape[dim] - start))


def _checked_tree(api: str, out: object) -> object:
    """``out`` if it is a tensor, or a tuple, list or dict of tensors (``partials``' results)."""
    if isinstance(out, (tuple, list, dict)) and out:
        for leaf in pytree.tree_leaves(out):
            check_output(api, leaf, differentiable=False)
        return out
    return check_output(api, out, differentiable=False)


def _join(pieces: list[object]) -> object:
    """The chunks' results joined along dim 0, leaf by leaf."""
    if len(pieces) == 1:
        return pieces[0]
    return pytree.tree_map(lambda *parts: torch.cat(parts), *pieces)


def batched(
    fn: Callable[P, R],
    *,
    in_dims: int | Sequence[int | None] | None = 0,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Callable[P, R]:
    """Evaluate ``fn`` per point over a leading batch, ``chunk_size`` points at a time.

    Equivalent to ``torch.func.vmap(fn, in_dims)`` but evaluated chunk by chunk, so peak memory is
    that of ``chunk_size`` points, and the outputs are concatenated along dim 0. ``fn`` returns a
    tensor, or a tuple or dict of tensors (as ``hodfunc.partials`` does), joined leaf by leaf.
    ``progress=True`` shows a bar on stderr (tqdm if installed). Batch sizes are checked, never
    broadcast.

    Example:
        >>> import torch, hodfunc
        >>> d2 = hodfunc.batched(hodfunc.derivative(torch.sin, order=2), chunk_size=2)
        >>> d2(torch.tensor([0.5, 1.0, 2.0]))
        tensor([-0.4794, -0.8415, -0.9093])
        >>> both = hodfunc.batched(hodfunc.partials(torch.sin, {"u": (), "u_x": (0,)}))
        >>> both(torch.tensor([0.0, 1.0]))["u_x"]
        tensor([1.0000, 0.5403])
    """
    api = "hodfunc.batched"
    check_callable(api, fn, "fn")
    dims_spec = _check_in_dims(api, in_dims)
    chunk = check_chunk_size(api, chunk_size)
    fn_any: Callable[..., object] = fn

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        dims = _dims(api, dims_spec, len(args))
        total = _batch_size(api, args, dims)
        step = total if chunk is None else chunk

        def checked(*a: object, **k: object) -> object:  # typed error, not vmap's ValueError
            return _checked_tree(api, fn_any(*a, **k))

        mapped: Callable[..., object] = vmap(checked, in_dims=tuple(dims))
        pieces: list[object] = []
        with _progress(progress, total) as bar:
            for start in range(0, total, step):
                part = tuple(_narrow(a, d, start, step) for a, d in zip(args, dims, strict=True))
                pieces.append(_checked_tree(api, mapped(*part, **kwargs)))
                if bar is not None:
                    bar.update(pytree.tree_leaves(pieces[-1])[0].shape[0])
        joined: R = _join(pieces)  # type: ignore[assignment]  # the same structure as fn's result
        return joined

    return wrapped
