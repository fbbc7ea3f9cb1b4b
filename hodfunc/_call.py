"""``Call``: one call of a user's function, as a function of one argument."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor
from typing_extensions import Protocol, TypeVarTuple, Unpack  # Protocol[Unpack[Ts]] on 3.10 too

from ._errors import ArgumentError, message
from ._validate import check_output, select_arg

Ts = TypeVarTuple("Ts")


class WithDirection(Protocol[Unpack[Ts]]):
    """The type of ``g = directional_derivative(f, k)`` and ``g = hvp(f)``: ``g(*args, v,
    **kwargs)`` calls ``f(*args, **kwargs)`` and takes the direction ``v`` as its last positional
    argument.

    Python's typing cannot append a parameter after a ``ParamSpec`` (``Concatenate`` only
    prepends), so this is the closest sound form: the positional arguments are ``f``'s
    (``Ts``, when ``f`` takes positional parameters only) followed by ``v: Tensor``; keyword
    arguments are passed through to ``f`` unchecked by the type checker and checked by ``f``
    itself when called. For an ``f`` with keyword-only parameters ``Ts`` is
    ``*tuple[object, ...]``.
    """

    __name__: str  # f's, as functools.wraps copies it

    def __call__(self, *args: Unpack[tuple[Unpack[Ts], Tensor]], **kwargs: object) -> Tensor: ...


@dataclass(frozen=True)
class Call:
    """The user's ``fn(*args, **kwargs)`` with ``args[argnum]`` free and everything else held fixed.

    Engines only see a ``Call``: they evaluate ``at(x)`` at points of their choosing. Tensors held
    fixed stay attached to autograd, so results remain differentiable with respect to them.
    """

    api: str
    fn: Callable[..., object]
    args: tuple[object, ...]
    kwargs: Mapping[str, object]
    argnum: int

    @staticmethod
    def bind(
        api: str,
        fn: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        argnums: int,
    ) -> Call:
        """Validate ``argnums`` against ``args`` and build the ``Call``."""
        argnum, _ = select_arg(api, args, argnums)
        return Call(api, fn, args, kwargs, argnum)

    @property
    def x(self) -> Tensor:
        """The point of differentiation."""
        x = self.args[self.argnum]
        assert isinstance(x, Tensor)
        return x

    def at(self, x: Tensor) -> Tensor:
        """Evaluate the function with the free argument replaced by ``x``."""
        args = (*self.args[: self.argnum], x, *self.args[self.argnum + 1 :])
        return check_output(self.api, self.fn(*args, **self.kwargs))


def split_direction(
    api: str, name: str, args_and_v: tuple[object, ...]
) -> tuple[tuple[object, ...], object]:
    """``(args, v)`` from ``g(*args, v, **kwargs)``'s positional arguments."""
    if not args_and_v:
        raise ArgumentError(
            message(
                api,
                f"the returned function takes f's positional arguments and then {name} as its "
                "last positional argument",
                "no positional arguments",
                f"Call it as g(x, {name}) (keyword arguments go on to f).",
            )
        )
    return args_and_v[:-1], args_and_v[-1]


def append_parameter(wrapper: Callable[..., object], f: Callable[..., object], name: str) -> None:
    """Make ``inspect.signature(wrapper)`` show ``f``'s positional parameters (positional-only,
    without defaults), a trailing positional ``name``, then ``f``'s keyword-only parameters.

    For transforms that return ``g(*args, v, **kwargs)``: ``functools.wraps`` alone would show
    ``f``'s.
    """
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):  # builtins without a signature: leave wraps' answer
        return
    empty = inspect.Parameter.empty
    values = sig.parameters.values()
    params = [
        p.replace(kind=p.POSITIONAL_ONLY, default=empty)
        for p in values
        if p.kind <= p.POSITIONAL_OR_KEYWORD
    ]
    params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY))
    params += [p for p in values if p.kind >= p.KEYWORD_ONLY]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
