"""Every query of functorch's and ATen's internals, in one place.

``torch.func`` keeps its state (the interpreter stack of ``vmap``/``grad``/``jvp`` levels, the
wrappers around tensors) in ``torch._C._functorch``, which has no types and no stability promise.
The engines ask a handful of questions about it: is this tensor wrapped by a transform, at which
level is it batched, what is behind the wrapper, is a dispatch mode recording, may autograd save
this tensor. They ask them here, through typed functions, so the rest of the package reads as
plain typed Python, and a change of torch's internals is mended in one file.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = [
    "aliases_input",
    "batch_at",
    "dense_order",
    "innermost_batch",
    "may_record",
    "outside_functorch",
    "physical",
    "physical_numel",
    "physically_dense",
    "rebatch",
    "traced_point",
    "tracing",
    "transformed",
    "writable",
]


def traced_point(t: Tensor) -> bool:
    """Whether ``t`` is batched by the trace's own ``vmap`` over points: at the current level,
    around a fake tensor of the trace (a user's batched tensor wraps a real one)."""
    from torch._subclasses.fake_tensor import FakeTensor

    functorch = torch._C._functorch
    if (
        not functorch.is_batchedtensor(t)
        or functorch.maybe_get_level(t) != functorch.current_level()
    ):
        return False
    inner = functorch.get_unwrapped(t)
    while functorch.is_functorch_wrapped_tensor(inner):
        inner = functorch.get_unwrapped(inner)
    return isinstance(inner, FakeTensor)


@contextlib.contextmanager
def outside_functorch() -> Iterator[None]:
    """Pop every active functorch level (vmap, grad...) for the duration, then restore them."""
    functorch = torch._C._functorch
    saved = []
    while functorch.peek_interpreter_stack() is not None:
        saved.append(functorch.pop_dynamic_layer_stack())
    try:
        yield
    finally:
        for layer in reversed(saved):
            functorch.push_dynamic_layer_stack(layer)


dynamo_tracing: Callable[[], bool] = getattr(
    torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling
)
"""Whether Dynamo is tracing the caller symbolically (not AOTAutograd running a
``nonstrict_trace`` call for real; torch < 2.4 has only ``is_compiling``)."""


def tracing() -> bool:
    """Whether a dispatch mode (``make_fx``, fake tensors) records the ops being run.

    Rules write into fresh tensors in place only when not traced: a trace of such a write (a
    Taylor transform inside another one's trace) would see a mutation through a view.
    """
    return bool(torch._C._len_torch_dispatch_stack())


def physical_numel(t: Tensor) -> int:
    """The number of elements ``t`` holds in memory: under ``vmap`` this includes the batch."""
    functorch = torch._C._functorch
    while functorch.is_batchedtensor(t):
        t = functorch.get_unwrapped(t)
    return t.numel()


def physically_dense(t: Tensor) -> bool:
    """Whether ``t``'s memory is one dense block, in any dim order: under ``vmap`` a row of a
    batched stack is not, although it looks contiguous from inside."""
    functorch = torch._C._functorch
    while functorch.is_batchedtensor(t):
        t = functorch.get_unwrapped(t)
    return dense_order(t) is not None


def dense_order(t: Tensor) -> list[int] | None:
    """The dims of ``t`` from outermost to innermost in memory if they tile it densely."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.shape[d]), reverse=True)
    expected = 1
    for d in reversed(order):
        if t.shape[d] != 1 and t.stride(d) != expected:
            return None
        expected *= t.shape[d]
    return order


def writable(t: Tensor) -> bool:
    """Whether results computed from ``t`` may be written into preallocated memory (``out=``)
    and be a plain tensor: not under a trace, not inside a ``torch.func`` transform, not while
    autograd records ``t`` or a forward-mode AD level is open (``out=`` ops are not
    differentiable, and raise on dual tensors)."""
    return not (
        tracing()
        or transformed(t)
        or (torch.is_grad_enabled() and t.requires_grad)
        # a forward-mode AD level is open (torch keeps no public flag for it)
        or torch.autograd.forward_ad._current_level >= 0
    )


def transformed(t: Tensor) -> bool:
    """Whether ``t`` is wrapped by a ``torch.func`` transform (``vmap``, ``grad``, ``jvp``...)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def may_record(t: Tensor) -> bool:
    """Whether autograd, or a ``torch.func`` differentiation transform, may record ops on ``t``:
    then a backward formula may save a value, and nothing may be overwritten.

    Looks through ``vmap``'s wrappers (a batched tensor reports ``requires_grad=False`` whatever
    it wraps); any other functorch wrapper belongs to ``grad``/``jacrev``/``jvp``.
    """
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if not functorch.is_batchedtensor(t):
            return True
        t = functorch.get_unwrapped(t)
    return t.requires_grad


def innermost_batch(x: Tensor) -> tuple[Tensor, int] | None:
    """``(points, level)`` when ``x`` is batched by the innermost active ``vmap`` around a plain
    tensor: ``points`` is that tensor with the batch dim first."""
    functorch = torch._C._functorch
    if not functorch.is_batchedtensor(x):
        return None
    level = functorch.maybe_get_level(x)
    points = functorch.get_unwrapped(x)
    if level != functorch.current_level() or functorch.is_functorch_wrapped_tensor(points):
        return None
    return points.movedim(functorch.maybe_get_bdim(x), 0), level


def batch_at(t: Tensor, level: int, *, dim: int) -> Tensor | None:
    """The plain tensor behind ``t`` batched at ``level``, its batch dim moved to ``dim``, or
    ``None`` if ``t`` is wrapped otherwise."""
    functorch = torch._C._functorch
    if not functorch.is_batchedtensor(t) or functorch.maybe_get_level(t) != level:
        return None
    inner = functorch.get_unwrapped(t)
    if functorch.is_functorch_wrapped_tensor(inner):
        return None
    return inner.movedim(functorch.maybe_get_bdim(t), dim)


def rebatch(t: Tensor, *, dim: int, level: int) -> Tensor:
    """``t`` seen from inside the ``vmap`` at ``level``, batched along ``dim``."""
    out: Tensor = torch._C._functorch._add_batch_dim(t, dim, level)
    return out


def aliases_input(fn: object) -> bool:
    """Whether the op ``fn`` returns a view of an argument (ATen's alias annotations)."""
    if fn is operator.getitem:
        return True
    if isinstance(fn, torch._ops.OpOverload):
        return any(r.alias_info is not None for r in fn._schema.returns)
    return False


def physical(t: Tensor, dim: int = 0) -> Tensor:
    """The values behind ``t``, out of every ``torch.func`` wrapper and detached, as a plain
    ``(t.shape[dim], n)`` tensor: ``t``'s dim ``dim`` first, every other dim (the batches of the
    enclosing ``vmap`` levels included) flattened into the second.

    For looking at values only (``_taylor._range`` checks coefficients for over- and underflow):
    run it, and every op on its result, inside ``outside_functorch()``, or the ops' results are
    wrapped again at the current level.
    """
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t) and functorch.maybe_get_bdim(t) <= dim:
            dim += 1  # the batch dim sits before ``dim`` in the tensor behind
        t = functorch.get_unwrapped(t)
    t = t.detach()
    if dim:
        t = t.movedim(dim, 0)
    if t.dim() == 2:
        return t
    rows = t.shape[0]
    return t.reshape(rows, t.numel() // rows if rows else 0)
