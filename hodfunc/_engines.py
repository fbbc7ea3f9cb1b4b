"""Registers the built-in methods with the dispatch in ``_engine``."""

from __future__ import annotations

from ._engine import register
from ._nested import NestedEngine
from ._taylor import AutoEngine

register("nested", NestedEngine)
register("auto", AutoEngine)
register("taylor", lambda: AutoEngine(fallback=False))
