"""The ``hodfunc`` command line: ``demo``, ``derive`` and ``eval``.

``derive`` prints a table of derivatives at a few points (or JSON) and can draw them; ``eval``
reads points from a file, evaluates through ``hodfunc.batched`` and writes the values back. The
expression is parsed by ``hodfunc._cli._expr`` against an allow-list before torch is imported, so
bad input is refused quickly. Every user error (argparse's usage errors too) exits with status 2 and
one line on stderr, ``hodfunc: error: ...``; internal errors are bugs and keep their traceback.
Output files are checked before anything is computed and written atomically
(``hodfunc._cli._points.atomic_file``), so a failed run never damages an existing file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn, overload

from .._errors import ArgumentError, FallbackWarning, HodfuncError, HodfuncWarning, message
from ._expr import Expression, check_var, parse
from ._plot import check_plot_path, order_label

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from .._transforms._method import Method

__all__ = ["MAX_AT_POINTS", "MAX_ORDER", "MAX_VALUES", "main"]

MAX_ORDER = 30
"""Highest ``--order`` the command line accepts."""
MAX_AT_POINTS = 10_000
"""Most ``--at`` points of one ``derive``."""
MAX_VALUES = 200_000_000
"""Most values (points times orders) one ``eval`` computes: 1.6 GB in float64."""
EXPONENTIAL_ORDER_LIMITS = {"nested": 8, "imperative": 12}
"""Highest ``--order`` for the methods whose cost grows exponentially with it. Measured for
``exp(-x**2/2)*sin(3*x)`` at one point: nested order 8 takes 10 s and order 9 37 s; imperative
order 14 takes 10 s and order 16 a minute and 1 GB."""
DEFAULT_CHUNK = 65_536
"""Points per vectorised chunk in ``eval``; peak working memory scales with it."""
PLOT_POINTS = 401

_EXPR_HELP = (
    "expression in the variable (default x), e.g. '2*x**3' or 'exp(-x**2/2)*sin(3*x)'. "
    "Allowed: numbers, + - * / **, pi, e, and abs atan cos erf exp log pow relu sigmoid sin "
    "softplus sqrt tan tanh. Quote it; an expression starting with '-' needs '--' before it."
)

_DERIVE_EXAMPLES = """\
examples:
  hodfunc derive "2*x**3" --at -2 --order 4
  hodfunc derive "exp(-x**2/2)*sin(3*x)" --at 0 0.5 1 --order 8 --method taylor
  hodfunc derive "tanh(t)" --var t --at 0.3 --order 3 --json
  hodfunc derive "exp(-x**2/2)*sin(3*x)" --order 3 --at 0.5 --plot f.png --range -3 3
"""

_EVAL_EXAMPLES = """\
examples:
  hodfunc eval "sin(x)*exp(-x)" --points points.npy --order 4 --out values.npy
  hodfunc eval "log(1+x**2)" --points points.csv --order 2 --out values.csv --dtype float32

Points: a .npy array of shape (N,) or (N, 1), or a .csv file with one number per line and an
optional header line that starts with a letter (blank lines and # comments are skipped; any
other line that is not a finite number refuses the file, naming its line). Values: shape
(N, K+1), column k the k-th derivative; a .csv gets the header d0,d1,...,dK. --out is checked
before computing, must not be --points, and is replaced atomically: a failed run leaves an
existing file as it was. Use .npy for millions of points. Peak memory is about that of the
output twice plus --chunk-size points of working memory.
"""


class _Methods(Sequence[str]):
    """The ``--method`` choices, read from hodfunc's method names only when argparse needs them
    (``_transforms._method`` imports no torch, and a refused expression reads nothing)."""

    def _names(self) -> tuple[str, ...]:
        from .._transforms._method import available_methods

        return (*available_methods(), "imperative")

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


class _Parser(argparse.ArgumentParser):
    """argparse with an exit status returned to ``main`` instead of ``sys.exit``, and usage
    errors on one line, ``hodfunc: error: ...``, like every other error (no usage block)."""

    commands: dict[str, argparse.ArgumentParser]
    """The sub-command parsers, so an unknown option is reported with its command's help."""

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """``parse_args``, but an unknown option is reported by its command's parser."""
        args, extra = self.parse_known_args(argv)
        if extra:
            self.commands.get(args.command, self).error(
                f"unrecognized arguments: {' '.join(extra)}"
            )
        return args

    def error(self, message: str) -> NoReturn:
        hint = f"Run '{self.prog} --help' for the options."
        self.exit(2, f"hodfunc: error: {_one_line(message)}. {hint}\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message, sys.stderr)
        raise _ExitError(status)


class _ExitError(Exception):
    """Raised by the parser instead of ``sys.exit``; carries the exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("expr", metavar="EXPR", help=_EXPR_HELP)
    p.add_argument(
        "--order",
        "-k",
        type=int,
        required=True,
        metavar="K",
        help=f"highest derivative order, 0..{MAX_ORDER}; orders 0..K are computed",
    )
    p.add_argument("--var", default="x", help="the variable's name in EXPR (default: x)")
    p.add_argument(
        "--method",
        default="auto",
        choices=_Methods(),
        metavar="METHOD",
        help="how derivatives are computed: %(choices)s (default: auto). 'imperative' "
        "is the torch.autograd create_graph path, one point at a time",
    )
    p.add_argument(
        "--dtype",
        default="float64",
        choices=("float32", "float64"),
        help="floating type of the computation (default: float64)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout and nothing else (no progress bar)",
    )


def _parser() -> _Parser:
    parser = _Parser(
        prog="hodfunc",
        description="Derivatives of any order in PyTorch.",
        epilog="Run 'hodfunc COMMAND --help' for the options and examples of each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="replay the seed documents' examples: printed vs functional vs imperative",
        description="Replay every example of the seed documents and compare the values they "
        "printed with hodfunc's functional and imperative results, with a verdict for each.",
    )
    derive = sub.add_parser(
        "derive",
        help="print (or plot) derivatives of orders 0..K of an expression at points",
        description="Print a table with one row per --at point and one column per order 0..K.\n"
        "With --plot, draw f and its derivatives over --range, one panel per order.",
        epilog=_DERIVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(derive)
    derive.add_argument(
        "--at",
        type=float,
        nargs="+",
        metavar="X",
        help=f"points to evaluate at (at most {MAX_AT_POINTS:,})",
    )
    derive.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw f and its derivatives to this .png/.svg/.pdf (needs "
        'matplotlib: pip install "hodfunc[plot]")',
    )
    derive.add_argument(
        "--range",
        type=float,
        nargs=2,
        metavar=("A", "B"),
        help="x range of the plot (default: -5 5, widened to show every --at)",
    )
    ev = sub.add_parser(
        "eval",
        help="evaluate derivatives at points read from a .npy/.csv file, write them to a file",
        description="Evaluate derivatives of orders 0..K at every point of --points with\n"
        "hodfunc.batched, --chunk-size points at a time, and write an (N, K+1) array to --out.\n"
        "A progress bar is shown on stderr when it is a terminal (not with --json or --quiet).",
        epilog=_EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(ev)
    ev.add_argument(
        "--points",
        required=True,
        metavar="FILE",
        help="input points: .npy of shape (N,) or (N, 1), or one-column .csv",
    )
    ev.add_argument(
        "--out", required=True, metavar="FILE", help="output values, .npy or .csv, shape (N, K+1)"
    )
    ev.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK,
        metavar="N",
        help=f"points per vectorised chunk; bounds working memory (default: {DEFAULT_CHUNK})",
    )
    ev.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar and no summary line"
    )
    parser.commands = {"demo": demo, "derive": derive, "eval": ev}
    return parser


def _check_order(order: int) -> int:
    if not 0 <= order <= MAX_ORDER:
        fix = (
            f"Use --order {MAX_ORDER} or lower."
            if order > MAX_ORDER
            else "K is the highest order computed: --order 1 gives f and f', --order 2 adds f''."
        )
        raise ArgumentError(
            message("--order", f"the order must be between 0 and {MAX_ORDER}", order, fix)
        )
    return order


def _check_at(at: Sequence[float]) -> list[float]:
    if len(at) > MAX_AT_POINTS:
        raise ArgumentError(
            message(
                "--at",
                f"at most {MAX_AT_POINTS:,} points",
                f"{len(at):,}",
                "Use 'hodfunc eval' with a file of points.",
            )
        )
    bad = [a for a in at if not math.isfinite(a)]
    if bad:
        raise ArgumentError(message("--at", "points must be finite numbers", bad[0]))
    return list(at)


def _plot_range(args: argparse.Namespace, at: Sequence[float]) -> tuple[float, float]:
    if args.range is not None:
        a, b = args.range
        if not (math.isfinite(a) and math.isfinite(b) and a < b):
            raise ArgumentError(
                message(
                    "--range",
                    "the range must be two finite numbers A < B",
                    f"{a} {b}",
                    "Use e.g. --range -3 3.",
                )
            )
        return float(a), float(b)
    lo, hi = min([-5.0, *at]), max([5.0, *at])
    margin = 0.0 if (lo, hi) == (-5.0, 5.0) else 0.1 * (hi - lo)
    return lo - margin, hi + margin


def _method(name: str) -> Method | None:
    """The registered method named ``name`` (None for ``imperative``)."""
    from .._transforms._method import is_method

    return name if is_method(name) else None


def _evaluate(
    expr: Expression,
    points: NDArray[np.float64],
    order: int,
    method: str,
    dtype: str,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> NDArray[np.float64] | NDArray[np.float32]:
    """Derivatives of orders ``0..order`` at every point: an ``(N, order+1)`` array."""
    import torch

    import hodfunc
    from hodfunc import imperative

    x = torch.from_numpy(points).to(getattr(torch, dtype))
    registered = _method(method)
    if registered is None:
        one = imperative.derivatives(expr, order)
        out = torch.stack([one(xi) for xi in x]) if len(x) else x.new_zeros((0, order + 1))
        return out.detach().numpy()
    many = hodfunc.batched(
        hodfunc.derivatives(expr, order, method=registered),
        chunk_size=chunk_size,
        progress=progress,
    )
    with warnings.catch_warnings():
        if order > EXPONENTIAL_ORDER_LIMITS["nested"]:
            # a fallback to nested torch.func at this order would run for hours: refuse it
            warnings.simplefilter("error", FallbackWarning)
        try:
            out = many(x)
        except FallbackWarning as fallback:
            raise ArgumentError(
                message(
                    "--order",
                    "this expression needs the nested method, which is exponential in the order "
                    f"(orders up to {EXPONENTIAL_ORDER_LIMITS['nested']} with it)",
                    order,
                    f"Lower --order. ({_one_line(str(fallback))})",
                )
            ) from None
    return out.detach().numpy()


def _check_method_order(method: str, order: int) -> None:
    """Refuse orders at which an exponential method would run for minutes or exhaust memory."""
    limit = EXPONENTIAL_ORDER_LIMITS.get(method)
    if limit is not None and order > limit:
        raise ArgumentError(
            message(
                "--order",
                f"--method {method} costs about 3x more per order; it allows orders up to {limit}",
                order,
                "Use --method auto (Taylor mode) for high orders.",
            )
        )


def _fmt(v: float, digits: int) -> str:
    """A table cell: ``%g`` with ``digits`` significant digits and no negative zero."""
    return f"{v + 0.0:.{digits}g}"


def _table(var: str, at: Sequence[float], values: NDArray[np.floating], digits: int) -> str:
    header = [var, *(order_label(k) for k in range(values.shape[1]))]
    rows = [
        [_fmt(a, 10), *(_fmt(float(v), digits) for v in row)]
        for a, row in zip(at, values, strict=True)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def _json_number(v: float) -> float | None:
    """JSON has no nan or inf: they become null."""
    return v if math.isfinite(v) else None


def _derive(args: argparse.Namespace) -> int:
    order = _check_order(args.order)
    _check_method_order(args.method, order)
    at = _check_at(args.at or [])
    if not at and args.plot is None:
        raise ArgumentError(
            message(
                "--at",
                "give points to evaluate at, or --plot to draw",
                "neither",
                "Add e.g. --at 0 0.5 1.",
            )
        )
    if args.range is not None and args.plot is None:
        raise ArgumentError(
            message("--range", "the range is for --plot", "no --plot", "Add --plot FILE.png.")
        )
    if args.plot is not None:
        check_plot_path(args.plot)
    expr = parse(args.expr, check_var(args.var))
    import numpy as np

    points = np.asarray(at, dtype=np.float64)
    values = (
        _evaluate(expr, points, order, args.method, args.dtype) if at else np.zeros((0, order + 1))
    )
    if args.plot is not None:
        from ._plot import plot_derivatives

        lo, hi = _plot_range(args, at)
        grid = np.linspace(lo, hi, PLOT_POINTS)
        curve = _evaluate(expr, grid, order, args.method, args.dtype)
        plot_derivatives(
            args.plot,
            expr.text,
            expr.var,
            grid,
            curve.astype(np.float64),
            points if at else None,
            values.astype(np.float64),
        )
    if args.json:
        doc = {
            "expression": expr.text,
            "variable": expr.var,
            "order": order,
            "method": args.method,
            "dtype": args.dtype,
            "points": at,
            "derivatives": [[_json_number(float(v)) for v in row] for row in values],
            "plot": args.plot,
        }
        print(json.dumps(doc, allow_nan=False))
    elif at:
        print(_table(expr.var, at, values, 10 if args.dtype == "float64" else 7))
    if args.plot is not None and not args.json:
        print(f"hodfunc: wrote {args.plot}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import numpy as np

    from ._points import check_writable, file_format, read_points, write_values

    order = _check_order(args.order)
    _check_method_order(args.method, order)
    if args.chunk_size < 1:
        raise ArgumentError(
            message(
                "--chunk-size", "the chunk size must be >= 1", args.chunk_size, "Use e.g. 65536."
            )
        )
    file_format(args.points, "--points")
    file_format(args.out, "--out")
    _check_not_input(args.out, args.points)
    check_writable(args.out, "--out")  # before the computing, which may take minutes
    expr = parse(args.expr, check_var(args.var))
    if args.method == "imperative":
        raise ArgumentError(
            message(
                "--method",
                "eval runs through hodfunc.batched, which needs a registered method",
                "'imperative'",
                "Use --method auto, or 'derive' for a few points.",
            )
        )
    try:
        points = read_points(args.points, "--points")
    except OSError as err:
        raise ArgumentError(
            message("--points", "the file cannot be read", _os_error(err))
        ) from None
    n = len(points)
    if n * (order + 1) > MAX_VALUES:
        raise ArgumentError(
            message(
                "--points",
                f"at most {MAX_VALUES:,} values (points x (K+1)) per run",
                f"{n:,} points x {order + 1}",
                "Split the points into several files.",
            )
        )
    progress = sys.stderr.isatty() and not args.json and not args.quiet and n > args.chunk_size
    start = time.perf_counter()
    values = _evaluate(
        expr, points, order, args.method, args.dtype, chunk_size=args.chunk_size, progress=progress
    )
    seconds = time.perf_counter() - start
    write_values(args.out, values, [f"d{k}" for k in range(order + 1)], "--out")
    if args.json:
        doc = {
            "expression": expr.text,
            "variable": expr.var,
            "order": order,
            "method": args.method,
            "dtype": args.dtype,
            "points": n,
            "shape": list(values.shape),
            "out": args.out,
            "seconds": round(seconds, 3),
            "nonfinite": int((~np.isfinite(values)).sum()),
        }
        print(json.dumps(doc))
    elif not args.quiet:
        print(
            f"hodfunc: wrote {n:,} x {order + 1} values (orders 0..{order}) to {args.out} "
            f"in {seconds:.2f} s"
        )
    return 0


def _same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file: equal once resolved (symlinks, ``..``), or the
    same inode when both exist (hard links, case-insensitive file systems)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_not_input(out: str, points: str) -> None:
    if _same_file(out, points):
        raise ArgumentError(
            message(
                "--out",
                "the output must not overwrite the input",
                f"--out {out!r} and --points {points!r}, the same file",
                "Choose another --out.",
            )
        )


def _os_error(err: OSError) -> str:
    return f"{err.filename!r} ({err.strerror or type(err).__name__})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _run(command: str, args: argparse.Namespace) -> int:
    commands: dict[str, Callable[[argparse.Namespace], int]] = {"derive": _derive, "eval": _eval}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # third-party noise (torch deprecations) stays hidden
        warnings.simplefilter("always", HodfuncWarning)
        status = commands[command](args)
    seen: set[str] = set()
    for w in caught:
        text = _one_line(str(w.message))
        if text not in seen:
            seen.add(text)
            print(f"hodfunc: warning: {text}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Exit status 0 on success, 2 on a usage or input error (one line on stderr), 130 when
    interrupted.

    Example:
        >>> main(["derive", "2*x**3", "--at", "-2", "--order", "4"])
        x    f  f'  f''  f'''  f^(4)
        -2  -16  24  -24    12      0
        0
    """
    try:
        args = _parser().parse(argv)
    except _ExitError as done:
        return done.status
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    try:
        return _run(args.command, args)
    except HodfuncError as err:
        print(f"hodfunc: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hodfunc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `hodfunc derive ... | head`: stop quietly, as cat would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
