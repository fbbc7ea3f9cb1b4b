"""The ``"taylor"`` engine, and the ``"auto"`` engine that uses it wherever it applies.

Every quantity is one propagation of the traced program in one of the algebras of ``_algebra``:

- ``jet``: univariate Taylor series of ``f(x + t v)`` to order ``K``; coefficients are multiplied
  by ``k!`` only at the end, range-safe (``_range``: where they over- or underflow, again along
  ``2^s v`` and back with ``k! / 2^(k s)`` in float64).
- ``partial``: one vmapped univariate jet of order ``d`` over the Griewank-Utke-Walther directions
  (``_mixed``), combined with exact rational weights.
- ``laplacian``: one collapsed propagation carrying all first-order directions and the summed
  second-order coefficient.

Engines are built once per transform, so the warn-once flags are per transform; the trace cache
(``_trace.SHARED``) is shared by all of them.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from typing import TypeVar, cast

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from .._call import Call
from .._errors import (
    ArgumentTypeError,
    CacheWarning,
    CompileError,
    FallbackWarning,
    PiecewiseLinearWarning,
    PrecisionWarning,
    UnsupportedOperationError,
    message,
)
from .._functional import random_error, scalar_read_error
from .._functorch import (
    batch_at,
    dynamo_tracing,
    innermost_batch,
    outside_functorch,
    physical,
    rebatch,
    tracing,
    transformed,
)
from .._nested import NestedEngine, basis, unit
from .._validate import check_output
from . import _compiled, _range
from ._algebra import Collapsed, Multivariate, Univariate
from ._interpret import run
from ._mixed import exponents, interpolation
from ._operators import Form, Quadratic
from ._reach import Opaque, Reach
from ._rules import Context, Jet, has_rule
from ._trace import SHARED, Bound, reach_of

__all__ = ["MULTIVARIATE_ORDER", "AutoEngine", "CompiledEngine", "TaylorEngine"]

MULTIVARIATE_ORDER = 4
"""Mixed partials up to this order come from one multivariate jet (exact rows, no cancellation);
higher ones from the Griewank-Utke-Walther directions, each range-safe along its direction."""


def _to_derivatives(
    api: str, coefficients: Tensor, rerun: Callable[[int], Tensor], read: int = 1
) -> Tensor:
    """Normalized coefficients to derivatives (``k! c_k``), right at every order the dtype can
    hold: ``rerun(s)`` propagates again along ``2^s v`` where the coefficients over- or
    underflow (``_range.derivatives``; ``read``: the lowest order anyone reads)."""
    return _range.derivatives(api, coefficients, rerun, read=read)


def _coefficients_of(call: Call, out: object, ctx: Context) -> Tensor:
    """The coefficient tensor of a run's output (zeros beyond the value where it does not depend
    on the input)."""
    if isinstance(out, Jet):
        check_output(call.api, out.c[0])
        return out.c
    value = check_output(call.api, out)
    rest = torch.zeros_like(value).unsqueeze(0).expand(ctx.algebra.size - 1, *value.shape)
    return torch.cat([value.unsqueeze(0), rest])


def _seed(x: Tensor, tail: Tensor, ctx: Context) -> Jet:
    """The input's jet: value ``x``, next coefficients ``tail`` (the rest zeros); univariate
    seeds ``x + t v`` are affine."""
    affine = isinstance(ctx.algebra, (Univariate, Multivariate))
    return Jet(split=(x, tail), affine=affine, size=ctx.algebra.size)


_SCALAR_READ = "aten._local_scalar_dense"
R = TypeVar("R")
_EAGER: dict[Callable[..., object], Callable[..., object]] = {}


def _eager(method: Callable[..., R]) -> Callable[..., R]:
    """``method`` with Dynamo's frame hook off while it runs, once Dynamo is imported: after the
    graph break ``_not_compiling`` makes, Dynamo would otherwise try to compile every frame of the
    engine (slower than eager, and warnings about calls it cannot trace)."""
    run = _EAGER.get(method)
    if run is None:
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None:
            return method
        run = _EAGER[method] = dynamo.disable(method, reason="hodfunc's Taylor mode runs eagerly")
    return cast("Callable[..., R]", run)


def _not_compiling(api: str) -> None:
    """Refuse to be traced by Dynamo: Taylor mode traces and interprets the function itself
    (``make_fx``, functorch queries), which Dynamo cannot follow. Without ``fullgraph=True`` the
    raise is a graph break and the call runs eagerly at full speed; with it, the error names the
    way out. (``method="compiled"`` transforms are not traced by Dynamo at all: their calls enter
    the graph whole, ``_transforms._engines.entry``.)"""
    if dynamo_tracing():
        raise CompileError(  # no custom __init__: Dynamo must be able to trace the raise
            message(
                api,
                "Taylor mode traces and runs the function itself, so torch.compile cannot trace "
                "into it",
                "a call inside torch.compile(fullgraph=True)",
                'Build the transform with method="compiled", whose calls torch.compile takes '
                "whole (pass the module or its parameters as an argument), or drop "
                "fullgraph=True (the transform then runs eagerly).",
            )
        )


def _without_rule(bound: Bound) -> list[str]:
    """The ops on the input's path (``aten.tanh.default``) that have no Taylor rule, sorted."""
    ops = bound.program.dependent_ops
    return sorted(op for op in ops if not has_rule(op.split(".")[1 if "." in op else 0]))


def _whole_batch(call: Call, tail: Tensor) -> tuple[Tensor, Tensor, int, Reach] | None:
    """``(points, tail, level, reached)`` when the point is batched by the innermost ``vmap``
    and nothing else is wrapped by any transform: the propagation may then run once on the whole
    batch of points, in plain tensors, and hand back its result batched at that ``vmap``'s level.

    Inside ``vmap`` every op pays for its batching rule, and a coefficient of a batched jet is a
    strided slice; on the whole batch the coefficients are dense and the ops plain (a third
    faster at 4096 points). Anything else (a batched weight, the point passed twice, a gradient
    transform, a tensor requiring grad, a trace in progress) takes the per-point path, which
    composes with everything. A tensor the trace bakes in (reached through globals it cannot see)
    may still require grad: the batched run is plain torch, so autograd records it like any other
    (the interpreter then overwrites nothing).
    """
    if tracing():
        return None
    batch = innermost_batch(call.x)
    if batch is None:
        return None
    points, level = batch
    rest = (*call.args[: call.argnum], *call.args[call.argnum + 1 :], dict(call.kwargs))
    others = [t for t in pytree.tree_leaves(rest) if isinstance(t, Tensor)]
    reached = reach_of(call.fn, call.args, call.kwargs)
    others += reached.tensors
    if any(transformed(t) for t in others):
        return None  # (x itself passed again counts: it is batched)
    if transformed(tail):
        rows = batch_at(tail, level, dim=1)
        if rows is None:
            return None
        tail = rows
    else:
        tail = tail.unsqueeze(1).expand(tail.shape[0], *points.shape)
    if points.requires_grad or tail.requires_grad:
        return None
    return points, tail, level, reached


def _warn_cancellation(api: str, wrt: tuple[int, ...], weights: Tensor, values: Tensor) -> None:
    """Warn where a mixed partial lost most of its digits: it is a weighted sum of directional
    derivatives (Griewank, Utke and Walther) whose terms can be far larger than the result when
    the coordinates' derivatives differ in scale (``exp(0.01 x0) sin(3 x1)`` at high order in
    ``x0``). The rounding error is about ``eps * sum |w_i v_i|``; where that exceeds
    ``sqrt(eps) |result|`` the result is not trustworthy. An exact zero is not flagged (exact
    cancellation, as in a polynomial)."""
    if tracing():
        return
    with outside_functorch():
        v = physical(values)
        w = weights.detach().to(v.dtype).reshape(-1, 1)
        noise = (w.abs() * v.abs()).sum(0) * torch.finfo(v.dtype).eps
        got = (w * v).sum(0).abs()
        half = torch.finfo(v.dtype).eps ** 0.5
        lost = (noise > got * half) & (got != 0) & noise.isfinite()
        # below its noise a result is zero to working precision; that is only worth a warning
        # where the noise itself is large (a coordinate f does not depend on leaves noise near
        # eps times the terms, ~1e-15 in float64, and is no failure)
        lost &= (noise <= got) | (noise > half)
        if not bool(lost.any()):
            return
        worst = float((noise / got).masked_fill(~lost, 0).max())
        level = float(noise.masked_fill(~lost, 0).max())
    if worst >= 1:  # below the noise: zero to working precision, any true value lost
        rule = (
            "a mixed partial is a weighted sum of directional derivatives, and here the result "
            "is below the rounding noise of its terms: it is zero to working precision, and any "
            "smaller true value is lost"
        )
        value = f"wrt={wrt}, noise up to {level:.1e}"
    else:
        rule = (
            "a mixed partial is a weighted sum of directional derivatives, and here its terms "
            "are far larger than the result, so rounding leaves it with about "
            f"{-math.log10(worst):.0f} correct digits"
        )
        value = f"wrt={wrt}, an estimated relative error up to {worst:.1e}"
    warnings.warn(
        message(
            api,
            rule,
            value,
            "Compute in float64, rescale the coordinates so that their derivatives have similar "
            'magnitudes, or use method="nested" at low order.',
        ),
        PrecisionWarning,
        stacklevel=_range.user_stacklevel(),
    )


class TaylorEngine(Opaque):
    """Taylor-mode AD on a cached ``make_fx`` trace: O(K^2) per nonlinear op."""

    COLLAPSED_WHOLE_BATCH = False
    """Whether the collapsed Laplacian also runs once on a whole ``vmap`` batch (eagerly it
    measured no faster; compiled, only the whole batch runs as one graph)."""

    def __init__(self) -> None:
        self._warned_piecewise = False
        self._warned_uncacheable = False
        self._whole_batch_works = True

    def _check_reach(self, api: str, reached: Reach) -> None:
        if reached.ddp:
            raise ArgumentTypeError(
                message(
                    api,
                    "a DistributedDataParallel module cannot run inside a transform (its forward "
                    "prepares the gradient all-reduce on real tensors, and a cached trace would "
                    "skip it, leaving the gradients silently not all-reduced)",
                    f"a function that calls a {reached.ddp}",
                    "Call the plain network (ddp.module) inside the transform, and wrap the "
                    "module whose forward computes the residual in DistributedDataParallel, or "
                    "sum the gradients with hodfunc.distributed.all_reduce_grads(model).",
                )
            )
        if not reached.uncacheable or self._warned_uncacheable or tracing():
            return  # (traced: inside another trace or torch.compile, which run it once)
        self._warned_uncacheable = True
        warnings.warn(
            message(
                api,
                "Taylor mode caches a trace only when it can see every Python value the function "
                "reads, and here it cannot, so it traces the function on every call (correct, "
                "but slow)",
                reached.uncacheable,
                "Pass that value as an argument, or hold it in a number, tuple, dict, list, "
                "tensor or nn.Module attribute.",
            ),
            CacheWarning,
            stacklevel=5,
        )

    def _run(
        self,
        call: Call,
        bound: Bound,
        seed: Jet | Tensor,
        ctx: Context,
        *,
        first_orders: bool = True,
    ) -> object:
        """One propagation of ``bound``'s program (``call``'s function) with the free argument's
        slot holding ``seed``."""
        return run(bound.program, bound.inputs, seed, ctx, first_orders=first_orders)

    def _bind(self, call: Call) -> Bound:
        _not_compiling(call.api)
        reached = reach_of(call.fn, call.args, call.kwargs)
        self._check_reach(call.api, reached)
        bound = SHARED.bind(call.api, call.fn, call.args, call.kwargs, call.argnum, reached=reached)
        program = bound.program
        if program.random_ops:
            raise random_error(call.api, ", ".join(sorted(program.random_ops)))
        reads = sorted(op for op in program.dependent_ops if op.startswith(_SCALAR_READ))
        if reads:
            raise scalar_read_error(call.api, f"{reads[0]} (.item(), float() or .tolist())")
        missing = _without_rule(bound)
        if missing:
            raise UnsupportedOperationError(
                message(
                    call.api,
                    "method='taylor' needs a Taylor rule for every operation on the input's path, "
                    f"and {missing[0]} has none",
                    f"operations without a rule: {', '.join(missing)}",
                    'Use method="auto" (falls back to nested torch.func) or method="nested".',
                ),
                tuple(missing),
            )
        return bound

    def _propagate(
        self,
        call: Call,
        bound: Bound | None,
        tail: Tensor,
        ctx: Context,
        *,
        first_orders: bool = True,
    ) -> Tensor:
        """Coefficients of the output (zeros beyond the value where it does not depend on x),
        given the input's coefficients after its value, ``tail`` (any after those are zeros).
        ``bound``: the per-point program, or ``None`` to bind it only if the whole-batch path
        does not apply.

        The input's jet is held split (``Jet.split``): under ``vmap`` over points the value is
        batched and ``tail`` usually is not, and neither are its images under the linear layers
        before the first nonlinearity. ``first_orders=False``: the caller reads only the output's
        value and summed second order (the collapsed Laplacian), so the propagation may drop the
        first orders where nothing downstream needs them.
        """
        _not_compiling(call.api)
        # order 0 is the plain value: run the program without coefficients. The collapsed
        # Laplacian stays per point: its directions are unbatched there, and its whole-batch run
        # measured no faster (matmuls dominate either way).
        if ctx.algebra.size > 1 and (first_orders or self.COLLAPSED_WHOLE_BATCH):
            whole = self._propagate_whole_batch(call, tail, ctx, first_orders=first_orders)
            if whole is not None:
                return whole
        bound = self._bind(call) if bound is None else bound
        free = _seed(call.x, tail, ctx) if ctx.algebra.size > 1 else call.x
        out = self._run(call, bound, free, ctx, first_orders=first_orders)
        return _coefficients_of(call, out, ctx)

    def _propagate_whole_batch(
        self, call: Call, tail: Tensor, ctx: Context, *, first_orders: bool = True
    ) -> Tensor | None:
        """``_propagate`` run once on the whole batch of a ``vmap`` over points, or ``None``
        where that does not apply (``_whole_batch``) or the batched trace fails.

        The program is then ``vmap`` of the function, traced per batch size.
        """
        whole = _whole_batch(call, tail) if self._whole_batch_works else None
        if whole is None:
            return None
        points, tail, level, reached = whole
        args = (*call.args[: call.argnum], points, *call.args[call.argnum + 1 :])
        self._check_reach(call.api, reached)
        try:
            bound = SHARED.bind(
                call.api, call.fn, args, call.kwargs, call.argnum, batched=True, reached=reached
            )
        except UnsupportedOperationError:  # e.g. randomness under vmap: the per-point path decides
            self._whole_batch_works = False
            return None
        if _without_rule(bound):
            self._whole_batch_works = False
            return None
        out = self._run(call, bound, _seed(points, tail, ctx), ctx, first_orders=first_orders)
        coefficients = _coefficients_of(call, out, ctx)
        return rebatch(coefficients, dim=1, level=level)

    def _warn(self, api: str, ctx: Context, order: int) -> None:
        if order < 2 or not ctx.reached or self._warned_piecewise:
            return
        self._warned_piecewise = True
        ops = ", ".join(sorted(ctx.reached))
        warnings.warn(
            message(
                api,
                f"a derivative of order {order} passes through the piecewise-linear {ops}, whose "
                "second and higher derivatives are zero almost everywhere, so the result is exact "
                "but its terms through that op vanish",
                f"order {order}",
                "For nonzero higher derivatives use a smooth activation (tanh, softplus, silu).",
            ),
            PiecewiseLinearWarning,
            stacklevel=4,
        )

    def _coefficients(self, call: Call, bound: Bound | None, v: Tensor, ctx: Context) -> Tensor:
        tail = v.to(call.x.dtype).unsqueeze(0)  # the coefficients after v are zeros (Jet.size)
        return self._propagate(call, bound, tail, ctx)

    def _derivatives(
        self, call: Call, bound: Bound | None, v: Tensor, order: int, *, read: int = 1
    ) -> Tensor:
        """``d^k/dt^k f(x + t v)`` for ``k = 0..order``, range-safe (``_range``): along ``v``,
        and along ``2^s v`` (coefficients ``c_k 2^(k s)``) where those over- or underflow.
        ``read``: the lowest order the caller reads (the ``RangeWarning`` names no lower one)."""
        ctx = Context(Univariate(order), call.api)
        coefficients = self._coefficients(call, bound, v, ctx)
        self._warn(call.api, ctx, order)

        def rerun(s: int) -> Tensor:
            again = Context(Univariate(order), call.api)
            return self._coefficients(call, bound, v * math.ldexp(1.0, s), again)

        return _to_derivatives(call.api, coefficients, rerun, read)

    def jet(self, call: Call, v: Tensor, order: int, *, read: int = 1) -> Tensor:
        return self._derivatives(call, None, v, order, read=read)

    def partials(self, call: Call, terms: tuple[tuple[int, ...], ...]) -> tuple[Tensor, ...]:
        """Every partial in ``terms`` (``wrt`` tuples) from one multivariate jet whose seed
        variables are the coordinates they name (``Multivariate``)."""
        x = call.x
        variables, monomials = exponents(terms)
        if not variables:  # values only: a new tensor each, as every other term is
            value = check_output(call.api, call.at(x))
            return tuple(value.clone() for _ in terms)
        algebra = Multivariate.covering(monomials)
        ctx = Context(algebra, call.api)
        index = torch.tensor(variables, device=x.device)
        seeds = torch.nn.functional.one_hot(index, x.numel()).to(x.dtype)
        coefficients = self._propagate(call, None, seeds.reshape(len(variables), *x.shape), ctx)
        self._warn(call.api, ctx, algebra.order)
        rows = torch.tensor([0, *(algebra.row(e) for e in monomials)], device=x.device)
        scales = [math.prod(math.factorial(k) for k in e) for e in monomials]
        picked = coefficients.index_select(0, rows)  # one gather: its backward, one scatter
        read = picked[1:]
        if any(s != 1 for s in scales):  # a! in float64 (no overflow in float32 at order 35)
            factor = torch.tensor(scales, dtype=torch.float64, device=x.device)
            read = (read * factor.reshape(-1, *[1] * (read.dim() - 1))).to(read.dtype)
        names = [f"wrt={term}" for term in terms]
        _range.check_partials(call.api, names, read, picked)
        # selects, not unbind: a caller may update one result in place (``r += ...``)
        return tuple(read[i] for i in range(len(terms)))

    def partial(self, call: Call, wrt: tuple[int, ...]) -> Tensor:
        x = call.x
        d = len(wrt)
        counts = Counter(wrt)
        if len(counts) <= 1:
            direction = unit(x, wrt[0]) if wrt else torch.zeros_like(x)
            return self._derivatives(call, None, direction, d, read=max(d, 1))[d]
        if d <= MULTIVARIATE_ORDER:
            return self.partials(call, (wrt,))[0]
        bound = self._bind(call)
        indices = list(counts)
        terms = interpolation(tuple(counts[i] for i in indices))
        steps = torch.tensor([i for i, _ in terms], dtype=x.dtype, device=x.device)
        directions = torch.zeros(len(terms), x.numel(), dtype=x.dtype, device=x.device)
        directions[:, indices] = steps
        directions = directions.reshape(len(terms), *x.shape)

        def top(v: Tensor) -> Tensor:  # d! c_d along v, range-safe
            return self._derivatives(call, bound, v, d, read=d)[d]

        values = torch.func.vmap(top)(directions)
        scale = Fraction(math.prod(math.factorial(c) for c in counts.values()), math.factorial(d))
        weights = torch.tensor(
            [float(g * scale) for _, g in terms], dtype=values.dtype, device=x.device
        )
        combined: Tensor = torch.tensordot(weights, values, dims=1)
        _warn_cancellation(call.api, wrt, weights, values)
        return combined

    def laplacian(self, call: Call) -> Tensor:
        bound = self._bind(call)
        x = call.x
        n = x.numel()
        ctx = Context(Collapsed(n), call.api)
        directions = basis(x)  # not batched under vmap over points
        tail = torch.cat([torch.zeros_like(directions[:1]), directions])
        coefficients = self._propagate(call, bound, tail, ctx, first_orders=False)
        self._warn(call.api, ctx, 2)
        return 2 * coefficients[1]

    def collapsed(self, call: Call, directions: Tensor, form: Form, *, first: bool) -> Tensor:
        """One collapsed propagation over ``directions`` (``(n, *x.shape)``) in the algebra
        ``Quadratic(n, form)``: ``[f, sum_kl G_kl d^2 f[v_k, v_l], d f[v_1], ..., d f[v_n]]``
        (the first orders only if ``first``). Per point, like ``laplacian``
        (``COLLAPSED_WHOLE_BATCH``: on the whole batch)."""
        _not_compiling(call.api)
        n = directions.shape[0]
        ctx = Context(Quadratic(n, form), call.api)
        tail = torch.cat([torch.zeros_like(directions[:1]), directions.to(call.x.dtype)])
        if self.COLLAPSED_WHOLE_BATCH:
            coefficients = self._propagate(call, None, tail, ctx, first_orders=first)
        else:
            bound = self._bind(call)
            out = self._run(call, bound, _seed(call.x, tail, ctx), ctx, first_orders=first)
            coefficients = _coefficients_of(call, out, ctx)
        self._warn(call.api, ctx, 2)
        value, second, rest = torch.split(coefficients, [1, 1, coefficients.shape[0] - 2])
        parts = [value, 2 * second, rest] if first else [value, 2 * second]
        return torch.cat(parts)


class CompiledEngine(TaylorEngine):
    """Taylor mode whose propagations run as compiled graphs (``_compiled``), where they run on
    plain tensors; under a ``torch.func`` transform or inside a trace, the same program eagerly.

    Its transforms enter ``torch.compile`` whole (``_transforms._engines.entry``): Dynamo does not
    trace them, and AOTAutograd records the propagation into the caller's graph. There the
    function sees only the tensors passed to the transform; a tensor it reaches through a closure
    is refused (``_check_passed``), since its gradient would be lost.
    """

    COLLAPSED_WHOLE_BATCH = True

    def __init__(self) -> None:
        super().__init__()
        self._warned_compile = False

    def _run(
        self,
        call: Call,
        bound: Bound,
        seed: Jet | Tensor,
        ctx: Context,
        *,
        first_orders: bool = True,
    ) -> object:
        # a program traced for this call alone (CacheWarning) would be compiled on every call
        if not bound.cached or not _compiled.compiles(bound.inputs, seed, ctx.algebra):
            return super()._run(call, bound, seed, ctx, first_orders=first_orders)
        assert isinstance(seed, Jet)  # (compiles holds only for a jet)
        fn = call.fn
        while isinstance(fn, functools.partial):
            fn = fn.func
        family = getattr(fn, "__code__", type(fn))  # what counts toward the graphs per function
        try:
            return _compiled.propagate(
                bound.program, bound.inputs, seed, ctx, first_orders=first_orders, family=family
            )
        except _compiled.CompileFailed as failed:
            try:
                out = super()._run(call, bound, seed, ctx, first_orders=first_orders)
            except BaseException:
                failed.forget()  # eager fails too: the call's error, not the compiler's
                raise
            self._warn_compile(ctx.api, failed)
            return out

    def _warn_compile(self, api: str, failed: _compiled.CompileFailed) -> None:
        if self._warned_compile:
            return
        self._warned_compile = True
        warnings.warn(
            message(
                api,
                'method="compiled" runs a propagation it does not compile as the same program, '
                "eagerly (the same results, at eager speed)",
                failed.reason,
                failed.fix,
            ),
            FallbackWarning,
            stacklevel=_range.user_stacklevel(),
        )

    def _bind(self, call: Call) -> Bound:
        bound = super()._bind(call)
        _check_passed(call, bound)
        return bound


def _check_passed(call: Call, bound: Bound) -> None:
    """Inside ``torch.compile`` (AOTAutograd tracing the transform's call), every tensor the
    program reads must be one the compiler handed in: a real tensor reached through a closure
    would be baked in as a constant, and gradients would not flow to it."""
    if not torch.compiler.is_compiling():
        return
    from torch._subclasses.fake_tensor import is_fake

    if not is_fake(call.x):
        return
    baked = [t for t in bound.inputs if not is_fake(t)]
    if baked:
        raise CompileError(
            message(
                call.api,
                'inside torch.compile a method="compiled" transform sees only the tensors passed '
                "to it (torch.compile cannot hand over tensors a function reaches through its "
                "closure or globals, and their gradients would be lost)",
                f"the function reaches a tensor of shape {tuple(baked[0].shape)} that was not "
                "passed",
                "Pass the module or its parameters as an argument: for example "
                "hodfunc.partials(lambda net, z: net(z), wrt, argnums=1) called as "
                "parts(net, z), or torch.func.functional_call with a parameter dict.",
            )
        )


class AutoEngine(Opaque):
    """Taylor mode where every op has a rule; otherwise nested torch.func, with one warning
    (``fallback=False``: the Taylor-mode error instead, which is ``method="taylor"``).

    Both methods' entry points: they refuse ``torch.compile(fullgraph=True)`` with the way out,
    and run with Dynamo's frame hook off (``_eager``)."""

    def __init__(self, *, fallback: bool = True) -> None:
        self._taylor = TaylorEngine()
        self._nested = NestedEngine(fallback=True)
        self._warned = False
        self._fallback = fallback

    def _warn(self, call: Call, error: UnsupportedOperationError) -> None:
        """Warn once, after the nested method gave its answer (a fallback that raised did not
        happen)."""
        if not self._warned:
            self._warned = True
            what = (
                f"operations without a Taylor rule: {', '.join(error.ops)}"
                if error.ops
                else "a function Taylor mode cannot trace (data-dependent control flow)"
            )
            warnings.warn(
                message(
                    call.api,
                    'method="auto" uses Taylor mode only where it applies; falling back to nested '
                    "torch.func (exact, slower at high order)",
                    what,
                    'Pass method="nested" to silence this, or method="taylor" to get the error.',
                ),
                FallbackWarning,
                stacklevel=_range.user_stacklevel(),
            )

    def _either(self, call: Call, taylor: Callable[[], R], nested: Callable[[], R]) -> R:
        """``taylor()``, or, where it raises ``UnsupportedOperationError`` and falling back is
        allowed, ``nested()`` with one warning; refuses ``torch.compile(fullgraph=True)`` and
        runs with Dynamo's frame hook off."""
        _not_compiling(call.api)
        result: R = _eager(AutoEngine._attempt)(self, call, taylor, nested)
        return result

    def _attempt(self, call: Call, taylor: Callable[[], R], nested: Callable[[], R]) -> R:
        try:
            return taylor()
        except UnsupportedOperationError as error:
            if not self._fallback:
                raise
            result = nested()
            self._warn(call, error)
            return result

    def jet(self, call: Call, v: Tensor, order: int, *, read: int = 1) -> Tensor:
        return self._either(
            call,
            lambda: self._taylor.jet(call, v, order, read=read),
            lambda: self._nested.jet(call, v, order),
        )

    def partial(self, call: Call, wrt: tuple[int, ...]) -> Tensor:
        return self._either(
            call, lambda: self._taylor.partial(call, wrt), lambda: self._nested.partial(call, wrt)
        )

    def partials(self, call: Call, terms: tuple[tuple[int, ...], ...]) -> tuple[Tensor, ...]:
        return self._either(
            call,
            lambda: self._taylor.partials(call, terms),
            lambda: self._nested.partials(call, terms),
        )

    def laplacian(self, call: Call) -> Tensor:
        return self._either(
            call, lambda: self._taylor.laplacian(call), lambda: self._nested.laplacian(call)
        )

    def collapsed(self, call: Call, directions: Tensor, form: Form, *, first: bool) -> Tensor:
        return self._either(
            call,
            lambda: self._taylor.collapsed(call, directions, form, first=first),
            lambda: self._nested.collapsed(call, directions, form, first=first),
        )
