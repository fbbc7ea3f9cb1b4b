"""The command line's expression parser: allow-list, limits, and values against sympy."""

from __future__ import annotations

import math
import string

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hodfunc._cli._expr import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_LENGTH,
    Expression,
    ExpressionError,
    check_var,
    parse,
)

X = sympy.Symbol("x", real=True)
SYMPY_NAMES = {
    "sigmoid": lambda a: 1 / (1 + sympy.exp(-a)),
    "softplus": lambda a: sympy.log(1 + sympy.exp(a)),
    "relu": lambda a: sympy.Max(a, 0),
    "atan": sympy.atan,
    "erf": sympy.erf,
    "pow": sympy.Pow,
    "x": X,
    "e": sympy.E,
    "pi": sympy.pi,
}

VALID = {
    "poly": "2*x**3 - x/4 + 1",
    "gauss-sine": "exp(-x**2/2)*sin(3*x)",
    "trig": "tan(x) + cos(x)**2 - atan(x)",
    "logs": "log(1 + x**2) + sqrt(2 + x)",
    "activations": "tanh(x) + sigmoid(2*x) + softplus(x) + relu(x) * x",
    "erf-abs": "erf(x) * abs(x - 3)",
    "pow-fn": "pow(x, 3) + pow(2, x) + x**-2 + x**0.5",
    "constants": "pi*x + e**x",
    "unary": "-x + +x - -(x**2)",
    "nested": "sin(cos(exp(-x)))",
    "constant-only": "3*pi - 1",
}


def _sympy_value(text: str, point: float) -> float:
    sym = sympy.sympify(text.replace("**", "^"), locals=SYMPY_NAMES, convert_xor=True)
    return float(sympy.N(sym.subs(X, point), 30))


@pytest.mark.parametrize(("text"), VALID.values(), ids=VALID.keys())
def test_values_match_sympy(text: str) -> None:
    points = [0.3, 1.2, 2.5]
    got = parse(text)(torch.tensor(points, dtype=torch.float64))
    want = torch.tensor([_sympy_value(text, p) for p in points], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_result_keeps_shape_and_dtype_even_for_constants() -> None:
    x = torch.zeros(2, 3, dtype=torch.float32)
    for text in ("x**2", "3*pi - 1"):
        out = parse(text)(x)
        assert out.shape == (2, 3)
        assert out.dtype == torch.float32
    assert parse("3*pi - 1")(x)[0, 0].item() == pytest.approx(3 * math.pi - 1)


def test_other_variable_name() -> None:
    f = parse("t**2 + sin(t)", "t")
    assert f == parse("t**2 + sin(t)", var="t")
    assert f(torch.tensor(2.0)).item() == pytest.approx(4 + math.sin(2))
    with pytest.raises(ExpressionError, match="unknown name 'x'; the variable is 't'"):
        parse("x + t", "t")


def test_integer_exponent_is_exact_at_negative_points() -> None:
    # an integral constant exponent stays an int, so (-2)**3 is -8, not nan
    assert parse("x**3")(torch.tensor(-2.0)).item() == -8.0
    assert math.isnan(parse("x**0.5")(torch.tensor(-2.0)).item())


def test_expression_is_pure_data() -> None:
    f = parse(" sin(x) ")
    assert isinstance(f, Expression)
    assert f.text == "sin(x)"
    assert repr(f) == "Expression('sin(x)', var='x')"


# Hostile or broken input: every case raises ExpressionError whose message matches.
HOSTILE = {
    "import-system": ("__import__('os').system('touch pwned')", "allow-list"),
    "import-call": ("__import__('os')", "unknown function '__import__'"),
    "dunder-name": ("__builtins__", "unknown name '__builtins__'"),
    "attribute": ("x.__class__", r"attribute access \(a.b\)"),
    "attribute-chain": ("().__class__.__bases__[0].__subclasses__()", "allow-list"),
    "eval": ("eval('1+1')", "unknown function 'eval'"),
    "exec": ("exec('import os')", "unknown function 'exec'"),
    "open": ("open('pwned', 'w')", "unknown function 'open'"),
    "globals": ("globals()", "unknown function 'globals'"),
    "lambda": ("(lambda: 1)()", "allow-list"),
    "comprehension": ("[x for x in (1, 2)]", "ListComp syntax"),
    "subscript": ("x[0]", r"indexing \(a\[i\]\)"),
    "string": ("'x'", "constants must be real numbers"),
    "bytes": ("b'x' * x", "constants must be real numbers"),
    "bool": ("True * x", "constants must be real numbers"),
    "complex": ("1j * x", "constants must be real numbers"),
    "conditional": ("x if x > 0 else 0", "IfExp syntax"),
    "compare": ("x is 1", "Compare syntax"),
    "walrus": ("(y := x)", "NamedExpr syntax"),
    "fstring": ("f'{x}'", "JoinedStr syntax"),
    "tuple": ("(x, x)", "Tuple syntax"),
    "matmul": ("x @ x", "operator @"),
    "floordiv": ("x // 2", "operator //"),
    "bitwise": ("~x", r"only unary \+ and -"),
    "keywords": ("sin(x=1)", "positional arguments only"),
    "starred": ("sin(*x)", "positional arguments only"),
    "arity": ("sin(x, x)", "takes 1 argument"),
    "pow-arity": ("pow(x)", "takes 2 arguments"),
    "unknown-fn": ("foo(x)", "unknown function 'foo'"),
    "var-called": ("x(1)", "unknown function 'x'"),
    "bare-function": ("sin + x", "sin is a function and must be called"),
    "unknown-name": ("y + 1", "unknown name 'y'"),
    "empty": ("   ", "empty"),
    "unbalanced-open": ("sin(x", "not valid syntax"),
    "unbalanced-close": ("sin(x))", "not valid syntax"),
    "dangling-op": ("x +", "not valid syntax"),
    "statement": ("x; import os", "not valid syntax"),
    "null-byte": ("x\x00", "printable ASCII"),
    "non-ascii": ("\uff53\uff49\uff4e(x)", "printable ASCII"),
    "tower": ("9**9**9", "constant exponent"),
    "tower-in-x": ("x**9**9", "constant exponent"),
    "huge-exponent": ("x**1000", "constant exponent"),
    "huge-exponent-pow": ("pow(x, 10**3)", "constant exponent"),
    "inf-exponent": ("x**(1/0)", "constant exponent"),
    "huge-literal": ("1e999 * x", "finite"),
    "huge-int": ("1" + "0" * 400 + " * x", "finite"),
    "too-long": ("x+" * 600 + "x", "at most 1000 characters"),
    "too-many-nodes": ("x+" * 300 + "x", "at most 500 operations"),
    "parentheses": ("(" * 300 + "x" + ")" * 300, "not valid syntax"),
    "deep-power": ("e**" * 210 + "x", f"at most {MAX_DEPTH} levels"),
    "deep-unary": ("-" * 300 + "x", f"at most {MAX_DEPTH} levels"),
    "deep-sum": ("+".join(["x"] * 220), f"at most {MAX_DEPTH} levels"),
}


@pytest.mark.parametrize(("text", "match"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_refused(text: str, match: str) -> None:
    with pytest.raises(ExpressionError, match=match) as info:
        parse(text)
    assert "\n" not in str(info.value)


def test_limits_are_inclusive() -> None:
    parse("x**64 + x**-64 + pow(x, 64)")
    parse("+".join(["x*x"] * 125))  # 499 operations and operands
    with pytest.raises(ExpressionError, match="at most 500 operations"):
        parse("+".join(["x*x"] * 126))
    parse("-" * (MAX_DEPTH - 1) + "x")
    with pytest.raises(ExpressionError, match=f"at most {MAX_DEPTH} levels"):
        parse("-" * MAX_DEPTH + "x")
    parse("x" + " " * (MAX_LENGTH - 4) + "+ 1")
    with pytest.raises(ExpressionError, match="at most 1000 characters"):
        parse("x" + " " * (MAX_LENGTH - 3) + "+ 1")
    assert MAX_EXPONENT == 64
    with pytest.raises(ExpressionError, match="constant exponent"):
        parse("x**64.5")


@pytest.mark.parametrize("var", ["1x", "sin", "pi", "__x", "lambda", "x y", "\u00e9"])
def test_bad_variable_names(var: str) -> None:
    with pytest.raises(ExpressionError, match="--var"):
        check_var(var)
    with pytest.raises(ExpressionError):
        parse("1", var)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable + "\u00e9\x00", max_size=40))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        parse(text)
    except ExpressionError as err:
        refusal = str(err)
    else:
        return
    assert refusal.startswith("EXPR: ")
    assert "\n" not in refusal


_LEAVES = st.sampled_from(["x", "2", "0.5", "pi", "e"])


def _trees(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    unary = sorted(set(FUNCTIONS) - {"pow", "relu", "abs", "log", "sqrt", "tan"})
    return st.one_of(
        st.tuples(st.sampled_from(["+", "-", "*"]), children, children).map(
            lambda t: f"({t[1]} {t[0]} {t[2]})"
        ),
        st.tuples(st.sampled_from(unary), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(children, st.integers(0, 3)).map(lambda t: f"({t[0]})**{t[1]}"),
    )


@settings(max_examples=40, deadline=None)
@given(st.recursive(_LEAVES, _trees, max_leaves=6))
def test_random_expressions_match_sympy(text: str) -> None:
    point = 0.7
    got = parse(text)(torch.tensor(point, dtype=torch.float64)).item()
    want = _sympy_value(text, point)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-10)
