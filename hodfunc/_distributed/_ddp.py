"""The combination that cannot work: a ``DistributedDataParallel`` module called inside a
hodfunc transform.

DDP's forward prepares its reducer for the coming backward (``_pre_forward``: rebuilding buckets
reads the parameters' storage, ``prepare_for_backward`` marks which gradients to all-reduce).
Inside a transform that forward runs on traced or functorch-wrapped tensors: Taylor mode's trace
fails from the second step on (the buckets are rebuilt on tensors without storage), nested
``torch.func`` fails the same way, and a trace that did succeed would be replayed from the cache
without DDP's forward, so no gradient would be all-reduced. The ways that work: wrap the module
whose ``forward`` computes the residual with the transforms in DDP (the transforms then run on
the plain inner network), or use the plain network and ``hodfunc.distributed.all_reduce_grads``.
"""

from __future__ import annotations

import functools
import types

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._errors import ArgumentTypeError, message

_FIX = (
    "Call the plain network (ddp.module) inside the transform and either wrap the module whose "
    "forward computes the residual in DistributedDataParallel, or sum the gradients after "
    "backward with hodfunc.distributed.all_reduce_grads(model)."
)


def _found(obj: object, depth: int, seen: set[int]) -> str | None:
    """Where ``obj`` reaches a DDP module through functions, closures, globals, bound methods,
    ``functools.partial`` and module attributes (a shallow walk, ``depth`` levels)."""
    if id(obj) in seen or depth < 0:
        return None
    seen.add(id(obj))
    if isinstance(obj, DistributedDataParallel):
        return type(obj).__name__
    inner: list[tuple[str, object]] = []
    if isinstance(obj, nn.Module):
        inner += list(obj.named_children())
    elif isinstance(obj, types.MethodType):
        inner.append(("__self__", obj.__self__))
        inner.append(("__func__", obj.__func__))
    elif isinstance(obj, functools.partial):
        inner += [("func", obj.func), *((f"arg {i}", a) for i, a in enumerate(obj.args))]
        inner += list(obj.keywords.items())
    elif isinstance(obj, types.FunctionType):
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=True):
            try:
                inner.append((name, cell.cell_contents))
            except ValueError:  # an empty cell
                continue
        inner += [(n, obj.__globals__[n]) for n in obj.__code__.co_names if n in obj.__globals__]
    try:
        wrapped = getattr(obj, "__wrapped__", None)
    except Exception:  # an object whose attribute access itself fails: nothing to follow
        wrapped = None
    if wrapped is not None:
        inner.append(("__wrapped__", wrapped))
    for name, value in inner:
        where = _found(value, depth - 1, seen)
        if where is not None:
            return f"{name} -> {where}"
    return None


def refuse_ddp(api: str, fn: object, what: str = "fn") -> None:
    """Raise ``ArgumentTypeError`` if ``fn`` reaches a ``DistributedDataParallel`` module."""
    where = _found(fn, 6, set())
    if where is not None:
        raise ArgumentTypeError(
            message(
                api,
                f"{what} must not call a DistributedDataParallel module: DDP's forward prepares "
                "its gradient all-reduce on real tensors and cannot run inside a hodfunc "
                "transform (its trace fails, or a cached trace skips the all-reduce)",
                f"{what} reaching {where}",
                _FIX,
            )
        )


def refuse_ddp_model(api: str, model: object) -> None:
    """Raise if ``model`` is a DDP module: its backward already all-reduced the gradients."""
    if isinstance(model, DistributedDataParallel):
        raise ArgumentTypeError(
            message(
                api,
                "model must be the plain network, not a DistributedDataParallel module (whose "
                "backward already averages the gradients over the ranks; summing them again "
                "would multiply them by the world size)",
                type(model).__name__,
                "Pass ddp.module and drop DDP, or keep DDP and drop this call.",
            )
        )
