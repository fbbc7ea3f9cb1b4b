"""Taylor-mode automatic differentiation: the ``"taylor"`` and ``"auto"`` methods.

Modules: ``_trace`` (make_fx tracing and its cache; the only one touching torch internals),
``_series`` (univariate coefficient recurrences), ``_algebra`` (univariate and collapsed jets),
``_rules`` (one rule per ATen op), ``_plan`` (what a run may overwrite or skip, decided once per
trace), ``_interpret`` (running a trace on jets), ``_mixed`` (Griewank-Utke-Walther interpolation
for mixed partials), ``_engine`` (the engines).
"""

from ._engine import AutoEngine as AutoEngine
from ._engine import TaylorEngine as TaylorEngine

__all__ = ["AutoEngine", "TaylorEngine"]
