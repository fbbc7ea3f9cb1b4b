"""Checks run when a transform is built or called. Each raises a typed error via ``message``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ._errors import (
    ArgumentError,
    ArgumentTypeError,
    BatchWarning,
    PrecisionWarning,
    ShapeError,
    message,
)
from ._functorch import outside_functorch, physical, tracing, transformed

_LOW_PRECISION = (torch.float16, torch.bfloat16)


MAX_ORDER = 1000
"""The highest derivative order a transform accepts. Taylor mode costs O(order^2) per operation
with O(order) kernel launches each: ``exp`` at order 1000 takes about a second on one CPU core,
a small network much longer, and the result is finite only for functions whose derivatives grow
slower than ``k!``-ish rates allow (``exp(x)``: every order; ``1/(1 + x^2)``: up to order 170 in
float64)."""


def check_order(api: str, order: object, *, fix: str = "For a gradient use order=1.") -> int:
    """Return ``order`` if it is an int in ``0..MAX_ORDER`` (bools are refused)."""
    if isinstance(order, bool) or not isinstance(order, int):
        raise ArgumentTypeError(
            message(
                api, "order must be an int >= 0", f"{order!r} of type {type(order).__name__}", fix
            )
        )
    if order < 0:
        raise ArgumentError(message(api, "order must be an int >= 0", order, fix))
    if order > MAX_ORDER:
        raise ArgumentError(
            message(
                api,
                f"order must be at most {MAX_ORDER} (Taylor mode costs O(order^2) per "
                "operation, the nested method grows exponentially)",
                order,
                f"Use an order <= {MAX_ORDER}.",
            )
        )
    return order


def check_argnums(api: str, argnums: object) -> int:
    """Return ``argnums`` if it is an int; its range is checked once the arguments are known."""
    if isinstance(argnums, bool) or not isinstance(argnums, int):
        raise ArgumentTypeError(
            message(
                api,
                "argnums must be a single int naming the positional argument to differentiate",
                repr(argnums),
                "Differentiate one argument at a time, for example argnums=0.",
            )
        )
    return argnums


def check_chunk_size(api: str, chunk_size: object) -> int | None:
    """Return ``chunk_size`` if it is None or an int >= 1."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ArgumentError(
            message(
                api, "chunk_size must be None or an int >= 1", repr(chunk_size), "Use e.g. 1024."
            )
        )
    return chunk_size


def check_wrt(api: str, wrt: object) -> tuple[int, ...]:
    """Return ``wrt`` as a tuple of ints >= 0; the upper bound is checked at call time."""
    if isinstance(wrt, (int, Tensor)) or not isinstance(wrt, Sequence):
        raise ArgumentTypeError(
            message(
                api,
                "wrt must be a sequence of flat indices into the argument",
                repr(wrt),
                "For d3f/dx0^2 dx2 write wrt=(0, 0, 2).",
            )
        )
    out: list[int] = []
    for i in wrt:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ArgumentError(
                message(
                    api,
                    "every index in wrt must be an int >= 0",
                    repr(tuple(wrt)),
                    "wrt lists flat indices into x.flatten(), e.g. wrt=(0, 0, 2).",
                )
            )
        out.append(i)
    return tuple(out)


def check_wrt_range(api: str, wrt: tuple[int, ...], x: Tensor) -> None:
    """Raise unless every index in ``wrt`` is a flat index into ``x``."""
    n = x.numel()
    bad = [i for i in wrt if i >= n]
    if bad:
        raise ArgumentError(
            message(
                api,
                f"wrt indices must be flat indices below x.numel() = {n} (x has shape "
                f"{tuple(x.shape)})",
                f"wrt={wrt}",
                f"Use indices in range(0, {n}); x.flatten()[i] is coordinate i.",
            )
        )


def select_arg(api: str, args: Sequence[object], argnums: int) -> tuple[int, Tensor]:
    """Normalise ``argnums`` against ``args`` and return it with the differentiable tensor."""
    n = len(args)
    if not -n <= argnums < n:
        raise ArgumentError(
            message(
                api,
                f"argnums must index the {n} positional argument(s) the function was called with",
                f"argnums={argnums}",
                "Pass the argument to differentiate positionally and point argnums at it.",
            )
        )
    index = argnums % n
    x = args[index]
    check_float_tensor(api, x, f"argument {index}")
    assert isinstance(x, Tensor)
    return index, x


def check_callable(api: str, f: object, what: str = "f") -> None:
    """Raise unless ``f`` is callable; transforms call this when they are built."""
    if not callable(f):
        raise ArgumentTypeError(
            message(
                api,
                f"{what} must be a callable (the function to transform)",
                f"{f!r} of type {type(f).__name__}",
                "Pass the function itself, e.g. hodfunc.derivative(torch.sin) or "
                "hodfunc.derivative(lambda x: x**3), not its name or its value.",
            )
        )


def check_dense(api: str, x: Tensor, what: str) -> None:
    """Raise unless ``x`` is dense (strided): torch.func cannot differentiate sparse tensors."""
    if x.layout != torch.strided:
        raise ArgumentTypeError(
            message(
                api,
                f"{what} must be a dense (strided) tensor; torch.func transforms do not support "
                "sparse layouts",
                f"layout {x.layout} (shape {tuple(x.shape)})",
                "Densify it first: x.to_dense().",
            )
        )


def check_float_tensor(api: str, x: object, what: str) -> None:
    """Raise unless ``x`` is a dense real floating-point tensor."""
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(
            message(
                api, f"{what} must be a torch.Tensor", type(x).__name__, "Wrap it: torch.tensor(x)."
            )
        )
    check_dense(api, x, what)
    if x.is_complex():
        raise ArgumentTypeError(
            message(
                api,
                f"{what} must be real: hodfunc differentiates functions of real inputs",
                x.dtype,
                "Split it into two real arguments, f(re, im) with z = torch.complex(re, im) "
                "inside, and differentiate each (argnums=0, argnums=1); pass z.real, z.imag. "
                "(x.double() would drop the imaginary part.)",
            )
        )
    if not x.is_floating_point():
        raise ArgumentTypeError(
            message(
                api,
                f"{what} must have a floating dtype to be differentiated",
                x.dtype,
                "Convert it first, e.g. x.double() or x.float().",
            )
        )


def check_output(api: str, out: object, *, differentiable: bool = True) -> Tensor:
    """Return ``out`` if the user's function returned a tensor, of a floating or complex dtype
    when it is to be differentiated (``differentiable``)."""
    if not isinstance(out, Tensor):
        raise ArgumentTypeError(
            message(
                api,
                "the function must return a torch.Tensor",
                f"a {type(out).__name__}",
                "Return a tensor (use torch.stack for several values; no .item()).",
            )
        )
    if differentiable and not (out.is_floating_point() or out.is_complex()):
        raise ArgumentTypeError(
            message(
                api,
                "the function must return a floating-point tensor to be differentiated",
                f"an output of dtype {out.dtype}",
                "Do not cast the result to an integer or bool dtype (.long(), .round().int(), "
                "x > 0): such a function is piecewise constant, so its derivatives are 0 "
                "wherever they exist. Return the floating value, or torch.zeros_like(x) if 0 is "
                "what you want.",
            )
        )
    return out


def check_scalar_arg(api: str, x: Tensor) -> None:
    """Raise unless ``x`` is 0-d."""
    if x.dim() != 0:
        raise ShapeError(
            message(
                api,
                "the argument must be a 0-d tensor (a scalar)",
                f"shape {tuple(x.shape)}",
                "For a vector argument use hodfunc.partial, hodfunc.derivative_tensor or "
                "hodfunc.directional_derivative; for many points use torch.func.vmap or "
                "hodfunc.batched.",
            )
        )


def check_scalar_output(api: str, out: Tensor) -> None:
    """Raise unless the function's output is a single number."""
    if out.numel() != 1:
        raise ShapeError(
            message(
                api,
                "the function must return a single number",
                f"an output of shape {tuple(out.shape)}",
                "Reduce it (e.g. .sum()) or use hodfunc.jacobian.",
            )
        )


def check_same_shape(api: str, what: str, v: object, x: Tensor) -> Tensor:
    """Return ``v`` if it is a tensor with the shape of ``x``."""
    if not isinstance(v, Tensor):
        raise ArgumentTypeError(message(api, f"{what} must be a torch.Tensor", type(v).__name__))
    check_dense(api, v, what)
    if v.shape != x.shape:
        raise ShapeError(
            message(
                api,
                f"{what} must have the shape of the differentiated argument {tuple(x.shape)}",
                f"shape {tuple(v.shape)}",
                "Pass one direction per point; batch several with torch.func.vmap.",
            )
        )
    return v


def warn_precision(api: str, x: Tensor, order: int) -> None:
    """Warn when a half-precision input meets a derivative of order >= 2."""
    if order >= 2 and x.dtype in _LOW_PRECISION:
        warnings.warn(
            message(
                api,
                f"derivatives of order >= 2 in {x.dtype} lose most of their digits",
                f"order={order}",
                "Compute in float32 or float64 and cast the result.",
            ),
            PrecisionWarning,
            stacklevel=3,
        )


def warn_per_element(
    api: str, x: Tensor, terms: Sequence[tuple[int, ...]], results: Sequence[Tensor]
) -> None:
    """Warn when a batch of points seems to have reached a per-point transform without ``vmap``:
    ``x`` has two or more dims and a leading dimension ``N > 1``, a result has the same leading
    dimension and is zero beyond row 0, and every index in ``terms`` falls in ``x``'s row 0. The
    transform then differentiated with respect to entries of the first point only, and its
    answer for the other points is zero, silently. A genuine matrix argument rarely has all
    three; one that maps its rows independently (``A @ v`` with ``wrt`` in row 0) does, and
    warns: silence it with ``warnings.filterwarnings("ignore", category=hodfunc.BatchWarning)``.
    Also warned: every result of leading dimension 1 (``net(z)[0]`` on a batch picks the first
    point itself). Not seen: a function that reduces the batch to a scalar (``net(z).sum()``)."""
    if tracing() or transformed(x) or x.dim() < 2 or x.shape[0] <= 1:
        return  # a vector argument is one point: its Jacobian columns look alike
    n = x.shape[0]
    row = x.numel() // n
    if not any(terms) or any(i >= row for term in terms for i in term):
        return
    wrt = sorted({i for t in terms for i in t})
    if all(r.dim() and r.shape[0] == 1 for r in results):
        rule = (
            "the transform is per point, and here it got a batch whose results have leading "
            "dimension 1, as if the function read only its first point (net(z)[0] on a batch), "
            "and every wrt index falls in that point"
        )
    else:
        suspects = [
            r for r, t in zip(results, terms, strict=True) if t and r.dim() and r.shape[0] == n
        ]
        if not suspects:
            return
        with outside_functorch():
            if not any(bool((physical(r)[1:] == 0).all()) for r in suspects):
                return
        rule = (
            "the transform is per point, and here it got a batch: the argument and the result "
            f"share the leading dimension {n}, and every wrt index falls in row 0, so the "
            "result is the derivative with respect to entries of the first point, zero at the "
            "others"
        )
    warnings.warn(
        message(
            api,
            rule,
            f"an argument of shape {tuple(x.shape)} and wrt indices {wrt}",
            "Map it over the points: torch.func.vmap(transform)(X), or "
            "hodfunc.batched(transform)(X) for chunks and progress.",
        ),
        BatchWarning,
        stacklevel=3,
    )
