"""Safe arithmetic expressions in one variable, for the command line.

The text is parsed with ``ast.parse(mode="eval")`` and walked against an allow-list: numbers, the
variable, the constants ``pi`` and ``e``, ``+ - * / **``, unary ``+ -`` and calls of a fixed set of
functions by name. Everything else (attributes, subscripts, keywords, strings, comprehensions,
lambdas, unknown or dunder names) is refused with an ``ExpressionError`` naming the offending
fragment. The text is never given to ``eval``, ``exec`` or ``compile``.

Size limits keep hostile input cheap to refuse: the length of the text, the number of AST nodes,
the nesting depth, and the size of a constant exponent (``9**9**9`` is refused while its
exponent is checked, before anything is evaluated). Parsing needs no torch; torch is imported
only when the parsed expression is first evaluated, so a refusal costs milliseconds.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .._errors import ArgumentError, message

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "CONSTANTS",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_EXPONENT",
    "MAX_LENGTH",
    "MAX_NODES",
    "Expression",
    "ExpressionError",
    "parse",
]

MAX_LENGTH: Final = 1000
"""Most characters an expression may have."""
MAX_NODES: Final = 500
"""Most operations and operands (``ast.expr`` nodes) an expression may have."""
MAX_DEPTH: Final = 200
"""Deepest nesting of operations and calls (a sum of n terms nests n deep)."""
MAX_EXPONENT: Final = 64.0
"""Largest ``|c|`` allowed in ``a ** c`` or ``pow(a, c)`` when ``c`` is a constant."""

FUNCTIONS: Final[dict[str, int]] = {
    "abs": 1,
    "atan": 1,
    "cos": 1,
    "erf": 1,
    "exp": 1,
    "log": 1,
    "pow": 2,
    "relu": 1,
    "sigmoid": 1,
    "sin": 1,
    "softplus": 1,
    "sqrt": 1,
    "tan": 1,
    "tanh": 1,
}
"""The callable names and their number of arguments."""

CONSTANTS: Final[dict[str, float]] = {"e": math.e, "pi": math.pi}
"""The named constants."""

_BINARY: Final[dict[type[ast.operator], str]] = {
    ast.Add: "add",
    ast.Sub: "sub",
    ast.Mult: "mul",
    ast.Div: "div",
    ast.Pow: "pow",
}
_SYMBOL: Final[dict[type[ast.operator], str]] = {
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.FloorDiv: "//",
    ast.LShift: "<<",
    ast.MatMult: "@",
    ast.Mod: "%",
    ast.RShift: ">>",
}
_ALLOWED = "+ - * / **, numbers, pi, e and calls of " + ", ".join(sorted(FUNCTIONS))


class ExpressionError(ArgumentError):
    """An expression is malformed, too large, or uses something outside the allow-list."""


@dataclass(frozen=True)
class Num:
    """A constant."""

    value: float


@dataclass(frozen=True)
class Var:
    """The free variable."""


@dataclass(frozen=True)
class Op:
    """An operation (``add``, ``sub``, ``mul``, ``div``, ``pow``, ``neg``) or a function call."""

    name: str
    args: tuple[Node, ...]


Node = Num | Var | Op
"""A node of a parsed expression."""


def _fail(api: str, rule: str, value: object, fix: str = "") -> ExpressionError:
    return ExpressionError(message(api, rule, value, fix))


class _Checker:
    """Turns a Python AST into a ``Node`` tree, refusing anything outside the allow-list."""

    def __init__(self, api: str, text: str, var: str) -> None:
        self.api, self.text, self.var = api, text, var

    def where(self, node: ast.AST) -> str:
        piece = ast.get_source_segment(self.text, node) or type(node).__name__
        if len(piece) > 40:
            piece = piece[:37] + "..."
        column = getattr(node, "col_offset", None)
        return repr(piece) + ("" if column is None else f" at column {column + 1}")

    def walk(self, node: ast.AST, depth: int) -> tuple[Node, float | None]:
        """The tree, and its value when it does not involve the variable (nan if undefined)."""
        if depth > MAX_DEPTH:
            raise _fail(
                self.api,
                f"the expression may nest at most {MAX_DEPTH} levels deep",
                "deeper nesting",
                "Simplify the expression.",
            )
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.UAdd, ast.USub)):
                raise _fail(
                    self.api, "only unary + and - are allowed", self.where(node), f"Use {_ALLOWED}."
                )
            inner, value = self.walk(node.operand, depth + 1)
            if isinstance(node.op, ast.UAdd):
                return inner, value
            return Op("neg", (inner,)), None if value is None else -value
        if isinstance(node, ast.BinOp):
            name = _BINARY.get(type(node.op))
            if name is None:
                symbol = _SYMBOL.get(type(node.op), type(node.op).__name__)
                raise _fail(
                    self.api,
                    f"the operator {symbol} is not allowed",
                    self.where(node),
                    f"Use {_ALLOWED}.",
                )
            left = self.walk(node.left, depth + 1)
            right = self.walk(node.right, depth + 1)
            return self.combine(name, (left, right), node)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.Attribute):
            raise _fail(
                self.api,
                "attribute access (a.b) is not allowed",
                self.where(node),
                "Call functions by name, e.g. sin(x).",
            )
        if isinstance(node, ast.Subscript):
            raise _fail(
                self.api, "indexing (a[i]) is not allowed", self.where(node), f"Use {_ALLOWED}."
            )
        kind = type(node).__name__
        raise _fail(self.api, f"{kind} syntax is not allowed", self.where(node), f"Use {_ALLOWED}.")

    def constant(self, node: ast.Constant) -> tuple[Node, float | None]:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(
                self.api,
                "constants must be real numbers",
                self.where(node),
                "Write numbers like 3, 0.5 or 1e-3.",
            )
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise _fail(
                self.api,
                "numbers must be finite floats",
                self.where(node),
                "Use a number below 1.8e308 in magnitude.",
            )
        return Num(number), number

    def name(self, node: ast.Name) -> tuple[Node, float | None]:
        ident = node.id
        if ident == self.var:
            return Var(), None
        if ident in CONSTANTS:
            return Num(CONSTANTS[ident]), CONSTANTS[ident]
        if ident in FUNCTIONS:
            raise _fail(
                self.api,
                f"{ident} is a function and must be called",
                self.where(node),
                f"Write {ident}({self.var}).",
            )
        raise _fail(
            self.api,
            f"unknown name {ident!r}; the variable is {self.var!r}",
            self.where(node),
            "Use --var to name another variable; constants are pi, e.",
        )

    def call(self, node: ast.Call, depth: int) -> tuple[Node, float | None]:
        if not isinstance(node.func, ast.Name):
            raise _fail(
                self.api,
                "only functions named in the allow-list can be called",
                self.where(node),
                f"Use {_ALLOWED}.",
            )
        ident = node.func.id
        if ident not in FUNCTIONS:
            raise _fail(
                self.api,
                f"unknown function {ident!r}",
                self.where(node),
                "Allowed functions: " + ", ".join(sorted(FUNCTIONS)) + ".",
            )
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _fail(
                self.api,
                f"{ident}() takes plain positional arguments only",
                self.where(node),
                f"Write {ident}(...) without names or *.",
            )
        arity = FUNCTIONS[ident]
        if len(node.args) != arity:
            plural = "" if arity == 1 else "s"
            raise _fail(
                self.api,
                f"{ident}() takes {arity} argument{plural}",
                f"{len(node.args)} in {self.where(node)}",
                "",
            )
        args = tuple(self.walk(a, depth + 1) for a in node.args)
        return self.combine(ident, args, node)

    def combine(
        self, name: str, args: tuple[tuple[Node, float | None], ...], node: ast.AST
    ) -> tuple[Node, float | None]:
        if name == "pow":
            exponent = args[1][1]
            if exponent is not None and not (
                math.isfinite(exponent) and abs(exponent) <= MAX_EXPONENT
            ):
                raise _fail(
                    self.api,
                    f"a constant exponent must be a finite number of magnitude <= {MAX_EXPONENT:g}",
                    f"{exponent:g} in {self.where(node)}",
                    "Rewrite the power, e.g. exp(c*log(x)) for x > 0.",
                )
        values = [v for _, v in args]
        value = None if any(v is None for v in values) else _value(name, values)
        return Op(name, tuple(t for t, _ in args)), value


def _value(name: str, a: list[float | None]) -> float:
    """The value of a constant operation in Python floats; nan where it is undefined."""
    x = [math.nan if v is None else v for v in a]
    ops: dict[str, Callable[[], float]] = {
        "add": lambda: x[0] + x[1],
        "sub": lambda: x[0] - x[1],
        "mul": lambda: x[0] * x[1],
        "div": lambda: x[0] / x[1],
        "pow": lambda: math.pow(x[0], x[1]),
        "abs": lambda: abs(x[0]),
        "atan": lambda: math.atan(x[0]),
        "cos": lambda: math.cos(x[0]),
        "erf": lambda: math.erf(x[0]),
        "exp": lambda: math.exp(x[0]),
        "log": lambda: math.log(x[0]),
        "relu": lambda: max(x[0], 0.0),
        "sigmoid": lambda: 0.5 * (1.0 + math.tanh(0.5 * x[0])),
        "sin": lambda: math.sin(x[0]),
        "softplus": lambda: max(x[0], 0.0) + math.log1p(math.exp(-abs(x[0]))),
        "sqrt": lambda: math.sqrt(x[0]),
        "tan": lambda: math.tan(x[0]),
        "tanh": lambda: math.tanh(x[0]),
    }
    try:
        return float(ops[name]())
    except (ArithmeticError, ValueError):
        return math.nan


def _count(tree: ast.AST, api: str) -> None:
    """Refuse trees with more than ``MAX_NODES`` nodes, without recursion."""
    nodes = (node for node in ast.walk(tree) if isinstance(node, ast.expr))
    for n, _ in enumerate(nodes, start=1):
        if n > MAX_NODES:
            raise _fail(
                api,
                f"the expression may have at most {MAX_NODES} operations and operands",
                "more",
                "Simplify the expression.",
            )


def check_var(var: str, api: str = "--var") -> str:
    """Return ``var`` if it can name the variable: an ASCII identifier, not a keyword or taken name.

    >>> check_var("t")
    't'
    """
    if not (var.isascii() and var.isidentifier()) or var.startswith("__"):
        raise _fail(
            api,
            "the variable must be an ASCII identifier not starting with __",
            repr(var),
            "Use e.g. --var t.",
        )
    if var in FUNCTIONS or var in CONSTANTS:
        raise _fail(
            api,
            "the variable cannot have the name of a function or constant",
            repr(var),
            "Use e.g. --var t.",
        )
    import keyword

    if keyword.iskeyword(var):
        raise _fail(api, "the variable cannot be a Python keyword", repr(var), "Use e.g. --var t.")
    return var


def parse(text: str, var: str = "x", *, api: str = "EXPR") -> Expression:
    """Parse ``text`` into an ``Expression`` of the variable ``var``; nothing is evaluated.

    Args:
        text: an arithmetic expression such as ``"2*x**3"`` or ``"exp(-x**2/2)*sin(3*x)"``.
        var: the name of the free variable.
        api: how error messages name the input.

    Returns:
        The parsed expression; call it on a tensor to evaluate it.

    Raises:
        ExpressionError: malformed text, a name or syntax outside the allow-list, or a size limit.

    Example:
        >>> f = parse("2*x**3")
        >>> f
        Expression('2*x**3', var='x')
        >>> parse("x.__class__")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hodfunc._cli._expr.ExpressionError: EXPR: attribute access (a.b) is not allowed, got ...
    """
    check_var(var)
    if not isinstance(text, str):
        raise _fail(api, "the expression must be a string", type(text).__name__)
    if len(text) > MAX_LENGTH:
        raise _fail(
            api,
            f"the expression may have at most {MAX_LENGTH} characters",
            f"{len(text)} characters",
            "Simplify the expression.",
        )
    source = text.strip()
    if not source:
        raise _fail(api, "the expression is empty", repr(text), "Write e.g. 'sin(x)'.")
    bad = next((c for c in source if not (c.isascii() and c.isprintable())), None)
    if bad is not None:
        raise _fail(
            api,
            "the expression must be printable ASCII",
            repr(bad),
            "Write it with plain ASCII letters, digits and + - * / ( ).",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings would print a second line
            tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        column = f" at column {err.offset}" if err.offset else ""
        raise _fail(
            api,
            f"the expression is not valid syntax ({err.msg}){column}",
            repr(source),
            "Check the parentheses and operators.",
        ) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as err:
        raise _fail(
            api,
            f"the expression cannot be parsed ({type(err).__name__})",
            repr(source),
            "Simplify the expression.",
        ) from None
    _count(tree, api)
    root, _ = _Checker(api, source, var).walk(tree.body, 1)
    return Expression(source, var, root)


@dataclass(frozen=True)
class Expression:
    """A parsed expression of one variable; calling it evaluates it elementwise with torch.

    Constant sub-expressions are folded once, with torch in float64, on the first call.

    Example:
        >>> import torch
        >>> parse("2*x**3 + pi")(torch.tensor([1.0, -2.0], dtype=torch.float64))
        tensor([  5.1416, -12.8584], dtype=torch.float64)
    """

    text: str
    var: str
    root: Node = field(repr=False)

    def __repr__(self) -> str:
        return f"Expression({self.text!r}, var={self.var!r})"

    @functools.cached_property
    def folded(self) -> Node:
        """The tree with constant sub-trees replaced by their values (computed on first use)."""
        return _fold(self.root)

    def __call__(self, x: Tensor) -> Tensor:
        """Evaluate at ``x`` (any shape); the result has ``x``'s shape and dtype."""
        folded = self.folded
        if isinstance(folded, Num):
            import torch

            return torch.full_like(x, folded.value)
        return _evaluate(folded, x)


def _functions() -> dict[str, Callable[..., Tensor]]:
    import torch
    from torch.nn import functional

    return {
        "abs": torch.abs,
        "atan": torch.atan,
        "cos": torch.cos,
        "erf": torch.special.erf,
        "exp": torch.exp,
        "log": torch.log,
        "pow": torch.pow,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "sin": torch.sin,
        "softplus": functional.softplus,
        "sqrt": torch.sqrt,
        "tan": torch.tan,
        "tanh": torch.tanh,
        "add": operator.add,
        "sub": operator.sub,
        "mul": operator.mul,
        "div": operator.truediv,
        "neg": operator.neg,
    }


def _fold(node: Node) -> Node:
    """Replace every sub-tree without the variable by its value, computed by torch in float64."""
    if not isinstance(node, Op):
        return node
    args = tuple(_fold(a) for a in node.args)
    if all(isinstance(a, Num) for a in args):
        import torch

        values = [torch.tensor(a.value, dtype=torch.float64) for a in args if isinstance(a, Num)]
        return Num(float(_functions()[node.name](*values)))
    return Op(node.name, args)


def _scalar(value: float) -> float | int:
    """An integral exponent as an int, so ``pow`` keeps its exact integer-power path."""
    return int(value) if value.is_integer() else value


def _evaluate(node: Node, x: Tensor) -> Tensor:
    """Evaluate a folded tree at ``x``; constants stay Python numbers next to tensors."""
    table = _functions()

    def run(n: Node) -> Tensor | float:
        if isinstance(n, Num):
            return n.value
        if isinstance(n, Var):
            return x
        args = [run(a) for a in n.args]
        if n.name == "pow":
            base, exponent = args
            if isinstance(exponent, float):
                assert not isinstance(base, float)  # folded otherwise
                return table["pow"](base, _scalar(exponent))
        return table[n.name](*args)

    out = run(node)
    assert not isinstance(out, float)  # a constant root is handled by the caller
    return out
