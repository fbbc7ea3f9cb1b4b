"""First and second derivatives of vector arguments: ``jacobian``, ``hessian`` and ``hvp``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, overload

from torch import Tensor
from torch.func import grad, jacrev, jvp, vmap
from typing_extensions import TypeVarTuple, Unpack

from .._call import Call, WithDirection, append_parameter, split_direction
from .._nested import basis
from .._validate import (
    check_argnums,
    check_callable,
    check_chunk_size,
    check_same_shape,
    check_scalar_output,
    warn_precision,
)

P = ParamSpec("P")
Ts = TypeVarTuple("Ts")


def jacobian(
    f: Callable[P, Tensor], *, argnums: int = 0, chunk_size: int | None = None
) -> Callable[P, Tensor]:
    """The Jacobian of ``f``, of shape ``out_shape + in_shape``, by reverse mode (``jacrev``).

    ``chunk_size`` bounds how many vector-Jacobian products run at once, and so the peak memory.

    Example:
        >>> import torch, hodfunc
        >>> hodfunc.jacobian(lambda x: x**2)(torch.tensor([1.0, 3.0]))
        tensor([[2., 0.],
                [0., 6.]])
    """
    api = "hodfunc.jacobian"
    check_callable(api, f)
    check_argnums(api, argnums)
    chunk = check_chunk_size(api, chunk_size)

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, f, args, kwargs, argnums)
        result: Tensor = jacrev(call.at, chunk_size=chunk)(call.x)
        return result

    return wrapped


def hessian(
    f: Callable[P, Tensor], *, argnums: int = 0, chunk_size: int | None = None
) -> Callable[P, Tensor]:
    """The Hessian of ``f``, of shape ``out_shape + in_shape + in_shape``.

    Forward over reverse: one Hessian column ``H e_j`` per basis vector, vmapped in chunks of
    ``chunk_size`` columns so the peak memory is bounded (``torch.func.hessian`` cannot chunk).

    Example:
        >>> import torch, hodfunc
        >>> hodfunc.hessian(lambda x: x[0] ** 2 * x[1])(torch.tensor([1.0, 2.0]))
        tensor([[4., 2.],
                [2., 0.]])
    """
    api = "hodfunc.hessian"
    check_callable(api, f)
    check_argnums(api, argnums)
    chunk = check_chunk_size(api, chunk_size)

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, f, args, kwargs, argnums)
        x = call.x
        warn_precision(api, x, 2)
        jac = jacrev(call.at)

        def column(e: Tensor) -> Tensor:
            tangent: Tensor = jvp(jac, (x,), (e,))[1]
            return tangent

        columns = vmap(column, chunk_size=chunk)(basis(x))  # (n, *out, *in)
        return columns.movedim(0, -1).reshape(*columns.shape[1:], *x.shape)

    return wrapped


@overload
def hvp(f: Callable[[Unpack[Ts]], Tensor], *, argnums: int = 0) -> WithDirection[Unpack[Ts]]: ...


@overload
def hvp(
    f: Callable[P, Tensor], *, argnums: int = 0
) -> WithDirection[Unpack[tuple[object, ...]]]: ...


def hvp(f: Callable[P, Tensor], *, argnums: int = 0) -> WithDirection[Unpack[tuple[object, ...]]]:
    """``g(*args, v, **kwargs) = H v``, the Hessian-vector product of a scalar function, never
    forming ``H``.

    Forward over reverse (``jvp`` of ``grad``): about the cost of two gradients. ``v`` comes last
    among the positional arguments; keyword arguments go on to ``f`` (typing as in
    ``hodfunc.directional_derivative``).

    Example:
        >>> import torch, hodfunc
        >>> g = hodfunc.hvp(lambda x: (x**3).sum())
        >>> g(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))
        tensor([6., 0.])
        >>> h = hodfunc.hvp(lambda x, *, a: (a * x**3).sum())
        >>> h(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), a=2.0)
        tensor([12.,  0.])
    """
    api = "hodfunc.hvp"
    check_callable(api, f)
    check_argnums(api, argnums)

    @functools.wraps(f)
    def wrapped(*args_and_v: object, **kwargs: object) -> Tensor:
        args, v = split_direction(api, "v", args_and_v)
        call = Call.bind(api, f, args, kwargs, argnums)
        direction = check_same_shape(api, "the vector v", v, call.x)
        warn_precision(api, call.x, 2)

        def scalar(x: Tensor) -> Tensor:
            out = call.at(x)
            check_scalar_output(api, out)
            return out.reshape(())

        result: Tensor = jvp(grad(scalar), (call.x,), (direction.to(call.x.dtype),))[1]
        return result

    append_parameter(wrapped, f, "v")
    return wrapped
