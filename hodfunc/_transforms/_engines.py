"""The ``method=`` registry: one plain mapping from each ``Method`` to its engine's factory.

A transform resolves its method once, when it is built, and gets a fresh engine that may keep
per-transform state (warn-once flags). A new method is one entry here; no transform changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import ParamSpec, TypeVar

from .._errors import ArgumentError, message
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


def entry(method: Method, transformed: Callable[P, R]) -> Callable[P, R]:
    """The function a transform returns: for ``method="compiled"``, marked for Dynamo as one
    call to record whole (``torch._dynamo.nonstrict_trace``). Dynamo then does not trace into
    hodfunc (the trace cache, ``make_fx``), and AOTAutograd records the propagation into the
    caller's graph, which inductor compiles with the rest of the step and differentiates for the
    weights. Other methods return ``transformed`` as it is (importing Dynamo costs a second)."""
    if method != "compiled":
        return transformed
    import torch._dynamo

    mark = getattr(torch._dynamo, "nonstrict_trace", None)
    if mark is None:  # an older torch: Dynamo then meets the engine's CompileError, with the fix
        return transformed
    marked: Callable[P, R] = mark(transformed)
    return marked
