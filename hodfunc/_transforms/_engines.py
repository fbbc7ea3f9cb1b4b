"""The ``method=`` registry: one plain mapping from each ``Method`` to its engine's factory.

A transform resolves its method once, when it is built, and gets a fresh engine that may keep
per-transform state (warn-once flags). A new method is one entry here; no transform changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from .._errors import ArgumentError, message
from .._nested import NestedEngine
from .._taylor import AutoEngine
from ._method import METHODS, Engine, Method, is_method

ENGINES: Mapping[Method, Callable[[], Engine]] = {
    "auto": AutoEngine,
    "nested": NestedEngine,
    "taylor": functools.partial(AutoEngine, fallback=False),
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
