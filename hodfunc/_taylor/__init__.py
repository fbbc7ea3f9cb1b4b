"""Taylor-mode automatic differentiation: the ``"taylor"``, ``"auto"`` and ``"compiled"`` methods.

Modules: ``_reach`` (what a function can reach: the cache key), ``_trace`` (make_fx tracing and
its cache; the only one touching torch internals),
``_series`` (univariate coefficient recurrences), ``_algebra`` (univariate and collapsed jets),
``_rules`` (one rule per ATen op), ``_plan`` (what a run may overwrite or skip, decided once per
trace), ``_interpret`` (running a trace on jets), ``_compiled`` (a run emitted as one graph for
torch.compile), ``_mixed`` (Griewank-Utke-Walther interpolation
for mixed partials), ``_engine`` (the engines).
"""

from ._compiled import clear as _clear_compiled
from ._engine import AutoEngine as AutoEngine
from ._engine import CompiledEngine as CompiledEngine
from ._engine import TaylorEngine as TaylorEngine
from ._trace import SHARED


def clear_cache() -> None:
    """Forget every Taylor-mode trace, so the next call of each transform traces afresh.

    Never needed for correct answers (a trace is reused only when everything it baked in is
    unchanged); it frees the memory the traces hold (at most a few hundred small graphs).

    Example:
        >>> import torch, hodfunc
        >>> d = hodfunc.derivative(torch.sin, order=2, method="taylor")
        >>> _ = d(torch.tensor(0.5))
        >>> hodfunc.clear_cache()
        >>> d(torch.tensor(0.5))
        tensor(-0.4794)
    """
    SHARED.clear()
    _clear_compiled()


__all__ = ["AutoEngine", "CompiledEngine", "TaylorEngine", "clear_cache"]
