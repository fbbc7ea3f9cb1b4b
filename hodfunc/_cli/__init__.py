"""The command line and the demo: ``hodfunc derive``, ``hodfunc eval``, ``hodfunc demo``.

Modules: ``_main`` (argument parsing, the commands), ``_expr`` (the allow-list expression parser,
imported before torch so hostile input is refused first), ``_points`` (point files, atomic
writes), ``_plot`` (matplotlib figures), ``_demo`` (the seed documents replayed).
"""

from ._main import main as main

__all__ = ["main"]
