"""``hodfunc derive --plot``: f and its derivatives, one panel per order, drawn with matplotlib.

matplotlib is an optional extra (``pip install "hodfunc[plot]"``). It is imported only here, only
when a plot is asked for, and used through its object API with the Agg canvas: no ``pyplot``, no
change to the caller's backend, rcParams or style. The picture is written atomically
(``hodfunc._cli._points.atomic_file``): a failed write leaves the previous file as it was.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._errors import ArgumentError, message
from ._points import atomic_file, check_writable

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from numpy.typing import NDArray

__all__ = ["FORMATS", "INSTALL_HINT", "check_plot_path", "order_label", "plot_derivatives"]

FORMATS = (".png", ".svg", ".pdf")
"""The file types ``--plot`` writes."""

INSTALL_HINT = 'pip install "hodfunc[plot]"'


def order_label(k: int) -> str:
    """The name of the ``k``-th derivative: ``f``, ``f'``, ``f''``, ``f'''``, then ``f^(k)``.

    >>> [order_label(k) for k in range(5)]
    ['f', "f'", "f''", "f'''", 'f^(4)']
    """
    return "f" + "'" * k if k <= 3 else f"f^({k})"


def check_plot_path(path: str, api: str = "--plot") -> None:
    """Raise unless ``path`` can take a picture: a known image extension, a writable folder, not
    a folder itself, and matplotlib installed. Called before anything is computed.

    >>> check_plot_path("f.png")
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ArgumentError(
            message(
                api,
                "the picture must be a " + ", ".join(FORMATS) + " file",
                repr(path),
                "Use e.g. --plot derivatives.png.",
            )
        )
    check_writable(path, api)
    _matplotlib(api)


def _matplotlib(api: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ArgumentError(
            message(
                api,
                "drawing needs matplotlib, which is not installed",
                "no matplotlib",
                f"Install it with: {INSTALL_HINT}",
            )
        ) from None


def plot_derivatives(
    path: str,
    title: str,
    var: str,
    grid: NDArray[np.float64],
    values: NDArray[np.float64],
    marks: NDArray[np.float64] | None = None,
    mark_values: NDArray[np.float64] | None = None,
    *,
    api: str = "--plot",
) -> None:
    """Draw ``values[:, k]`` against ``grid`` in panel ``k`` and save the figure to ``path``.

    Args:
        path: output file (``.png``, ``.svg`` or ``.pdf``).
        title: the figure's title (the expression).
        var: the variable's name, for the x axis.
        grid: ``(M,)`` abscissae.
        values: ``(M, K+1)`` derivatives of orders ``0..K`` at ``grid``.
        marks: ``(N,)`` points to mark in every panel, or None.
        mark_values: ``(N, K+1)`` derivatives at ``marks``.

    Raises:
        ArgumentError: matplotlib is missing (the message says how to install it), or the file
            cannot be written (the previous file, if any, is left as it was).
    """
    _matplotlib(api)
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = values.shape[1]
    height = min(1.7 * panels + 0.8, 24.0)
    fig = Figure(figsize=(7.0, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes: list[Axes] = list(fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0])
    shown = np.where(np.isfinite(values), values, np.nan)
    for k, ax in enumerate(axes):
        ax.plot(grid, shown[:, k], color="C0", linewidth=1.4)
        ax.axhline(0.0, color="0.75", linewidth=0.6, zorder=0)
        ax.set_ylabel(_tex_label(k, var))
        ax.grid(True, linewidth=0.3, alpha=0.6)
        if marks is not None and mark_values is not None and marks.size:
            ax.plot(
                marks,
                mark_values[:, k],
                linestyle="none",
                marker="o",
                color="C3",
                markersize=5,
                label="--at points" if k == 0 else None,
            )
    axes[-1].set_xlabel(var)
    axes[0].set_title(f"f({var}) = {title}", fontsize=11)
    if marks is not None and marks.size:
        axes[0].legend(loc="best", fontsize=8)
    ext = os.path.splitext(path)[1].lower()
    with atomic_file(path, api) as fh:
        fig.savefig(fh, format=ext[1:], dpi=100)  # explicit: a user matplotlibrc may set the dpi


def _tex_label(k: int, var: str) -> str:
    """The y label of panel ``k``: ``f``, ``f'``, ... and ``d^k f / d var^k`` beyond order 3."""
    if k == 0:
        return f"f({var})"
    if k <= 3:
        return order_label(k) + f"({var})"
    tex = var.replace("_", r"\_")  # mathtext reads x_1_2 as a double subscript
    return f"$d^{{{k}}}f/d{tex}^{{{k}}}$"
