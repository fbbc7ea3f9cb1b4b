"""Compiled Taylor programs (``method="compiled"``): a propagation emitted as one FX graph and
handed to ``torch.compile`` (inductor: C++ on CPU, Triton on GPU).

The interpreter is the code generator. ``_interpret.run`` is plain torch, so running it once under
``make_fx`` on fake tensors records the propagated program (the recurrences, the products, the
matmuls on every coefficient) as ATen ops, with none of the interpreter's Python left: no rule
lookup, no ``Jet`` objects, no slot bookkeeping. Inductor then fuses the elementwise recurrences
into a few loops. The program's output is its coefficient tensor, or its value where it does not
depend on the input.

One graph per cache entry, compiled on its first call: the entry is keyed by the algebra, the
rows the caller reads, and the shape, dtype, device and ``requires_grad`` of every input (the
weights included), next to the trace it came from (a ``Program`` is cached by everything the
function reads, ``_trace``), so a changed closure or module state gets a new trace and a new
graph, never a stale one. ``COMPILES`` counts compilations and ``compile_seconds`` reports how
long the first call of each took.

A compiled graph is called on plain tensors only. Where the propagation runs under a
``torch.func`` transform (the per-point path of ``grad`` or ``jacrev`` of a transform) or is
itself being traced (inside ``torch.compile``, where the surrounding graph is compiled as a whole),
the same program runs eagerly; the answer is the same either way. So it does where the trace
itself is not cached (a ``CacheWarning``: compiling a fresh trace on every call would cost
seconds each), where torch.compile fails on a program (``CompileFailed``: the engine warns once
with a ``FallbackWarning`` and the entry is not compiled again), and for a new input shape of a
function that has ``GRAPHS_PER_FUNCTION`` graphs already.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from .._errors import HodfuncError
from .._functorch import outside_functorch, tracing, transformed
from ._algebra import Algebra, Collapsed, Multivariate, Univariate
from ._interpret import run
from ._operators import Quadratic
from ._rules import Context, Jet
from ._series import EMITTING
from ._trace import TRACE_LOCK, Program

__all__ = ["COMPILES", "CompileFailed", "clear", "compile_seconds", "compiles", "propagate"]

COMPILES = [0]
"""How many propagations this process compiled (a one-element list so tests can read it)."""
_SECONDS: list[float] = []


GRAPHS_PER_FUNCTION = 16
"""Graphs compiled for one function (its code object) at most. Every new input shape compiles
anew (a new batch size under ``vmap`` too), seconds each; past this, new shapes run eagerly
(as Dynamo stops recompiling after its cache size limit)."""
_GRAPHS: dict[object, int] = {}


class CompileFailed(Exception):  # noqa: N818  (a signal between two modules, never raised to users)
    """A propagation is not compiled: torch.compile failed on it (``reason``: the error's first
    line; the entry stays marked, never retried) or its function has ``GRAPHS_PER_FUNCTION``
    graphs already. ``fix`` says what to do."""

    def __init__(self, reason: str, fix: str, forget: Callable[[], None] = lambda: None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix
        self.forget = forget
        """Unmark the entry (the caller's eager run failed too: the error was not the
        compiler's, and a later call may compile)."""


_INDUCTOR_FIX = 'Pass method="taylor" to silence this; the error is worth reporting to PyTorch.'


@dataclass(frozen=True)
class _Entry:
    """One compiled propagation: the graph, its compiled form, and what its trace learned."""

    graph: torch.fx.GraphModule
    compiled: Callable[..., Tensor]
    jet: bool
    """Whether the output depends on the input (a coefficient tensor, not a plain value)."""
    reached: frozenset[str]
    """The piecewise-linear ops on the output's path (for the ``PiecewiseLinearWarning``)."""


_ENTRIES: weakref.WeakKeyDictionary[Program, dict[Hashable, _Entry | CompileFailed]] = (
    weakref.WeakKeyDictionary()
)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else "(no message)"


def _algebra_key(algebra: Algebra) -> Hashable | None:
    """What the emitted graph depends on in ``algebra``; ``None`` for an algebra that holds
    tensors (a ``Quadratic`` form given as a matrix or vector), which is not compiled: its values
    would be baked in."""
    if isinstance(algebra, Quadratic):
        form = algebra.form
        return None if isinstance(form, Tensor) else ("quadratic", algebra.n, form)
    if isinstance(algebra, Univariate):
        return ("univariate", algebra.order)
    if isinstance(algebra, Multivariate):
        return ("multivariate", algebra.monomials)
    if isinstance(algebra, Collapsed):
        return ("collapsed", algebra.n)
    return None


def _signature(t: Tensor) -> tuple[object, ...]:
    return (tuple(t.shape), tuple(t.stride()), t.dtype, t.device, t.requires_grad)


def compiles(inputs: Sequence[Tensor], seed: Jet | Tensor, algebra: Algebra) -> bool:
    """Whether this propagation runs compiled: plain tensors only (no torch.func wrappers, no
    open forward-mode AD level, whose dual tensors a compiled graph would drop), outside any
    trace, and an algebra without tensors of its own."""
    if tracing() or _algebra_key(algebra) is None or not isinstance(seed, Jet):
        return False
    if torch.autograd.forward_ad._current_level >= 0:  # torch keeps no public flag for it
        return False
    parts = seed.split or (seed.c,)
    return not any(transformed(t) for t in (*inputs, *parts))


def propagate(
    program: Program,
    inputs: Sequence[Tensor],
    seed: Jet,
    ctx: Context,
    *,
    first_orders: bool = True,
    family: object = None,
) -> Jet | Tensor:
    """``run(program, inputs, seed, ctx)`` by its compiled graph (``compiles`` must hold): the
    output's jet, or its value where it does not depend on the input. ``family``: what counts
    toward ``GRAPHS_PER_FUNCTION`` (the user function's code object)."""
    parts = seed.split or (seed.c,)
    key = (
        _algebra_key(ctx.algebra),
        first_orders,
        seed.affine,
        seed.split is not None,
        seed.size,
        torch.is_grad_enabled(),
        tuple(_signature(t) for t in (*inputs, *parts)),
    )
    entries = _ENTRIES.setdefault(program, {})
    entry = entries.get(key)
    if isinstance(entry, CompileFailed):
        raise entry
    if entry is None and _GRAPHS.get(family, 0) >= GRAPHS_PER_FUNCTION:
        raise CompileFailed(
            f"{GRAPHS_PER_FUNCTION} graphs compiled for this function already, one per input "
            "signature (input shapes, dtypes, devices), and this call has a new one",
            "Keep input shapes fixed (the same batch size on every call: drop_last=True), or "
            'pass method="taylor".',
        )
    if entry is None:
        start = time.perf_counter()
        try:
            entry = _emit(program, inputs, seed, ctx, first_orders=first_orders)
            with outside_functorch():
                out = entry.compiled(*inputs, *parts)
        except Exception as error:
            if isinstance(error, HodfuncError):
                raise

            def forget() -> None:
                entries.pop(key, None)

            failed = CompileFailed(
                f"{type(error).__name__}: {_first_line(error)}", _INDUCTOR_FIX, forget
            )
            entries[key] = failed
            raise failed from error
        entries[key] = entry
        _GRAPHS[family] = _GRAPHS.get(family, 0) + 1
        COMPILES[0] += 1
        _SECONDS.append(time.perf_counter() - start)
    else:
        with outside_functorch():
            out = entry.compiled(*inputs, *parts)
    ctx.reached = entry.reached
    return Jet(out, entry.reached) if entry.jet else out


def _emit(
    program: Program, inputs: Sequence[Tensor], seed: Jet, ctx: Context, *, first_orders: bool
) -> _Entry:
    """Record ``run`` as ATen ops (``make_fx`` on fake tensors) and wrap it in ``torch.compile``."""
    from torch.fx.experimental.proxy_tensor import make_fx

    n = len(inputs)
    split = seed.split is not None
    learned = Context(ctx.algebra, ctx.api)
    depends = [True]

    def propagation(*flat: Tensor) -> Tensor:
        parts = flat[n:]
        jet = (
            Jet(split=(parts[0], parts[1]), affine=seed.affine, size=seed.size)
            if split
            else Jet(parts[0], affine=seed.affine)
        )
        out = run(program, flat[:n], jet, learned, first_orders=first_orders)
        if isinstance(out, Jet):
            return out.c
        depends[0] = False
        return cast("Tensor", out)

    parts = seed.split or (seed.c,)
    emitting = EMITTING.set(True)
    try:
        with TRACE_LOCK, outside_functorch():  # make_fx keeps global state
            graph = make_fx(propagation, tracing_mode="fake", _allow_non_fake_inputs=True)(
                *inputs, *parts
            )
    finally:
        EMITTING.reset(emitting)
    # the C++ wrapper: a graph of many small kernels and views (one per coefficient row) spends
    # half its time at one point in the Python wrapper's calls (0.35 ms against 0.20 ms here)
    options: dict[str, str | int | bool | Callable[..., object]] = {"cpp_wrapper": True}
    compiled = cast(
        "Callable[..., Tensor]",
        torch.compile(graph, fullgraph=True, dynamic=False, options=options),
    )
    return _Entry(graph, compiled, depends[0], learned.reached)


def compile_seconds() -> tuple[float, ...]:
    """How long the first call of each compiled propagation took (tracing, inductor, running),
    in the order they were compiled."""
    return tuple(_SECONDS)


def clear() -> None:
    """Forget every compiled propagation (``hodfunc.clear_cache``)."""
    _ENTRIES.clear()
    _GRAPHS.clear()
