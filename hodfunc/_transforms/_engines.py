"""The ``method=`` registry: one plain mapping from each ``Method`` to its engine's factory.

A transform resolves its method once, when it is built, and gets a fresh engine that may keep
per-transform state (warn-once flags). A new method is one entry here; no transform changes.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable, Mapping
from typing import ParamSpec, TypeVar, cast

from .._errors import ArgumentError, message
from .._functorch import dynamo_tracing
from .._nested import NestedEngine
from .._taylor import AutoEngine, CompiledEngine
from ._method import METHODS, Engine, Method, is_method

P = ParamSpec("P")
R = TypeVar("R")

ENGINES: Mapping[Method, Callable[[], Engine]] = {
    "auto": AutoEngine,
    "nested": NestedEngine,
    "taylor": functools.partial(AutoEngine, fallback=False),
    "compiled": CompiledEngine,
}
assert tuple(sorted(ENGINES)) == tuple(sorted(METHODS))


def resolve(api: str, method: object) -> Engine:
    """Return a fresh engine for ``method`` or raise naming the accepted methods."""
    if not is_method(method):
        raise ArgumentError(
            message(
                api,
                f"method must be one of {sorted(METHODS)}",
                repr(method),
                'Use method="auto" unless you need a specific one.',
            )
        )
    return ENGINES[method]()


_TRANSFORMS: weakref.WeakValueDictionary[str, Callable[..., object]] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()
_ENTER: list[Callable[..., object]] = []


def _enter() -> Callable[..., object] | None:
    """The one function Dynamo records whole (``torch._dynamo.nonstrict_trace``): it runs the
    transform of a handle. Made once, on the first compiled transform (Dynamo's import costs a
    second); ``None`` on a torch without ``nonstrict_trace``."""
    if not _ENTER:
        import torch._dynamo

        mark = getattr(torch._dynamo, "nonstrict_trace", None)
        if mark is None:
            return None

        def enter(handle: str, *args: object, **kwargs: object) -> object:
            return _TRANSFORMS[handle](*args, **kwargs)

        _ENTER.append(mark(enter))
    return _ENTER[0]


def entry(method: Method, transformed: Callable[P, R]) -> Callable[P, R]:
    """The function a transform returns. For ``method="compiled"``, inside Dynamo's trace its
    call goes through ``_enter`` with the transform's handle, a string Dynamo guards on: Dynamo
    then does not trace into hodfunc (the trace cache, ``make_fx``), and AOTAutograd records the
    propagation into the caller's graph, which inductor compiles with the rest of the step and
    differentiates for the weights. (Marking each transform itself would not do: Dynamo keys a
    marked function by its code, shared by every transform of a kind, and reused a graph of
    one transform for another, ``derivative(sin, 1)`` for ``derivative(sin, 2)``.) Other
    methods return ``transformed`` as it is."""
    if method != "compiled":
        return transformed
    enter = _enter()
    if enter is None:  # an older torch: Dynamo then meets the engine's CompileError, with the fix
        return transformed
    handle = f"transform {next(_HANDLES)}"  # a str: Dynamo would make a changing int symbolic
    _TRANSFORMS[handle] = transformed

    @functools.wraps(transformed)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if dynamo_tracing():
            return cast("R", enter(handle, *args, **kwargs))
        return transformed(*args, **kwargs)

    return call
