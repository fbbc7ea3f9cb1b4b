"""``hodfunc derive`` and ``hodfunc eval`` run in-process through ``main``.

The subprocess tests (``test_cli_subprocess.py``) drive the installed command; these cover the
options, the numbers and every error path quickly.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import hodfunc
from hodfunc import FallbackWarning, imperative
from hodfunc._cli._main import MAX_ORDER, main
from hodfunc._transforms._method import available_methods


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def gauss_sine(x: Tensor) -> Tensor:
    return torch.exp(-(x**2) / 2) * torch.sin(3 * x)


def assert_one_error_line(status: int, out: str, err: str, match: str) -> None:
    assert status == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hodfunc: error: ")
    assert match in lines[0], lines[0]
    assert "Traceback" not in err


def test_seed_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "derive", "2*x**3", "--at", "-2", "--order", "4")
    assert (status, err) == (0, "")
    header, row = out.splitlines()
    assert header.split() == ["x", "f", "f'", "f''", "f'''", "f^(4)"]
    assert row.split() == ["-2", "-16", "24", "-24", "12", "0"]


# compiled: tests/taylor/test_compiled.py (seconds of inductor per case)
METHODS = [*(m for m in available_methods() if m != "compiled"), "imperative"]


@pytest.mark.parametrize("method", METHODS)
def test_json_matches_hodfunc_derivatives(capsys: pytest.CaptureFixture[str], method: str) -> None:
    at = [-1.5, 0.0, 0.5, 2.0]
    expr = "exp(-x**2/2)*sin(3*x)"
    status, out, err = run(
        capsys, "derive", expr, "--order", "5", "--method", method, "--json",
        "--at", *map(str, at),
    )  # fmt: skip
    assert (status, err) == (0, "")
    doc = json.loads(out)
    assert doc["order"] == 5
    assert doc["method"] == method
    assert doc["points"] == at
    got = torch.tensor(doc["derivatives"], dtype=torch.float64)
    want = torch.stack(
        [hodfunc.derivatives(gauss_sine, 5)(torch.tensor(a, dtype=torch.float64)) for a in at]
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_json_nonfinite_values_are_null(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "derive", "log(x)", "--at", "-1", "1", "--order", "1", "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["derivatives"][0][0] is None
    assert doc["derivatives"][1] == [0.0, 1.0]


def test_float32_and_other_variable(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "derive", "tanh(t)", "--var", "t", "--at", "0.3", "--order", "3",
        "--dtype", "float32", "--json",
    )  # fmt: skip
    assert status == 0
    got = torch.tensor(json.loads(out)["derivatives"][0], dtype=torch.float32)
    want = imperative.derivatives(torch.tanh, 3)(torch.tensor(0.3))
    torch.testing.assert_close(got, want)
    status, out, _ = run(capsys, "derive", "tanh(t)", "--var", "t", "--at", "0.3", "--order", "1")
    assert out.splitlines()[0].split() == ["t", "f", "f'"]


def test_constant_and_deep_expressions(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "derive", "3*pi", "--at", "0", "--order", "2", "--json")
    assert status == 0
    assert json.loads(out)["derivatives"] == [[3 * math.pi, 0.0, 0.0]]
    deep = "+".join(["x"] * 199)  # nests 199 levels, just under the limit
    status, out, _ = run(capsys, "derive", deep, "--at", "1", "--order", "2", "--json")
    assert status == 0
    assert json.loads(out)["derivatives"] == [[199.0, 199.0, 0.0]]


def test_eval_npy_and_csv_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    points = np.linspace(-2.0, 2.0, 37)
    np.save("p.npy", points)
    Path("p.csv").write_text("x\n" + "\n".join(repr(float(p)) for p in points) + "\n")
    status, out, err = run(
        capsys, "eval", "sin(x)*exp(-x)", "--points", "p.npy", "--order", "3",
        "--out", "v.npy", "--chunk-size", "8",
    )  # fmt: skip
    assert (status, err) == (0, "")
    assert "37 x 4 values" in out
    values = np.load("v.npy")
    assert values.shape == (37, 4)
    direct = hodfunc.batched(hodfunc.derivatives(lambda x: torch.sin(x) * torch.exp(-x), 3))
    want = direct(torch.from_numpy(points)).numpy()
    np.testing.assert_allclose(values, want, rtol=1e-12, atol=1e-12)
    status, out, _ = run(
        capsys, "eval", "sin(x)*exp(-x)", "--points", "p.csv", "--order", "3", "--out", "v.csv",
        "--json",
    )  # fmt: skip
    assert status == 0
    doc = json.loads(out)
    assert (doc["points"], doc["shape"], doc["nonfinite"]) == (37, [37, 4], 0)
    lines = Path("v.csv").read_text().splitlines()
    assert lines[0] == "d0,d1,d2,d3"
    np.testing.assert_allclose(np.loadtxt("v.csv", delimiter=",", skiprows=1), want, rtol=1e-15)


def test_plot_leaves_matplotlib_state_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import matplotlib

    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    path = tmp_path / "f.png"
    status, out, err = run(capsys, "derive", "sin(x)", "--order", "2", "--plot", str(path))
    assert (status, out) == (0, "")
    assert err.strip() == f"hodfunc: wrote {path}"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules  # the object API only, no global figures


def test_plot_without_matplotlib_says_how_to_install(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    path = tmp_path / "f.png"
    status, out, err = run(capsys, "derive", "sin(x)", "--at", "0", "--order", "1", "--plot",
                           str(path))  # fmt: skip
    assert_one_error_line(status, out, err, 'pip install "hodfunc[plot]"')
    assert not path.exists()


def test_piecewise_linear_warning_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "derive", "relu(x)*x", "--at", "1", "--order", "3")
    assert status == 0
    assert out.splitlines()[1].split() == ["1", "1", "2", "2", "0"]
    for line in err.splitlines():
        assert line.startswith("hodfunc: warning: ")


def test_fallback_to_nested_is_refused_at_high_order(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def falls_back(f: Callable[[Tensor], Tensor], order: int, **_: object) -> Callable[..., Tensor]:
        def run(x: Tensor) -> Tensor:
            warnings.warn("auto fell back to nested", FallbackWarning, stacklevel=2)
            return torch.zeros(order + 1, dtype=x.dtype)

        return run

    monkeypatch.setattr(hodfunc, "derivatives", falls_back)
    status, out, err = run(capsys, "derive", "sin(x)", "--at", "1", "--order", "12")
    assert_one_error_line(status, out, err, "exponential in the order")
    assert "auto fell back to nested" in err
    status, out, err = run(capsys, "derive", "sin(x)", "--at", "1", "--order", "4")
    assert status == 0
    assert err == "hodfunc: warning: auto fell back to nested\n"


def _write(name: str, content: Callable[[Path], object]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        content(folder / name)

    return make


BAD_ARGS: dict[str, tuple[list[str], str, Callable[[Path], None] | None]] = {
    "order-negative": (["derive", "x", "--at", "1", "--order", "-1"], "between 0 and", None),
    "order-huge": (["derive", "x", "--at", "1", "--order", str(MAX_ORDER + 1)], "--order", None),
    "nested-order": (["derive", "x", "--at", "1", "--order", "9", "--method", "nested"],
                     "up to 8", None),
    "imperative-order": (["derive", "x", "--at", "1", "--order", "13", "--method", "imperative"],
                         "up to 12", None),
    "at-nan": (["derive", "x", "--at", "nan", "--order", "1"], "finite", None),
    "at-inf": (["derive", "x", "--at", "1", "inf", "--order", "1"], "finite", None),
    "no-points": (["derive", "x", "--order", "1"], "--at", None),
    "var-digit": (["derive", "x", "--var", "1x", "--at", "1", "--order", "1"], "--var", None),
    "var-function": (["derive", "x", "--var", "exp", "--at", "1", "--order", "1"], "--var", None),
    "range-no-plot": (["derive", "x", "--at", "1", "--order", "1", "--range", "0", "1"],
                      "--range", None),
    "range-reversed": (["derive", "x", "--order", "1", "--plot", "f.png", "--range", "3", "-3"],
                       "A < B", None),
    "plot-jpg": (["derive", "x", "--order", "1", "--plot", "f.jpg"], ".png", None),
    "plot-no-folder": (["derive", "x", "--order", "1", "--plot", "nope/f.png"], "folder", None),
    "eval-missing": (["eval", "x", "--points", "none.npy", "--order", "1", "--out", "v.npy"],
                     "cannot be read", None),
    "eval-ext": (["eval", "x", "--points", "p.txt", "--order", "1", "--out", "v.npy"],
                 ".npy or .csv", None),
    "eval-out-ext": (["eval", "x", "--points", "p.npy", "--order", "1", "--out", "v.json"],
                     "--out", None),
    "eval-two-columns": (["eval", "x", "--points", "p.csv", "--order", "1", "--out", "v.npy"],
                         "one column",
                         _write("p.csv", lambda p: p.write_text("1,2\n3,4\n"))),
    "eval-text": (["eval", "x", "--points", "p.csv", "--order", "1", "--out", "v.npy"],
                  "one number per line", _write("p.csv", lambda p: p.write_text("x\n1\nfoo\n"))),
    "eval-2d": (["eval", "x", "--points", "p.npy", "--order", "1", "--out", "v.npy"],
                "one column", _write("p.npy", lambda p: np.save(p, np.zeros((3, 2))))),
    "eval-pickle": (["eval", "x", "--points", "p.npy", "--order", "1", "--out", "v.npy"],
                    "numeric .npy",
                    _write("p.npy", lambda p: np.save(p, np.array([{}], dtype=object)))),
    "eval-empty": (["eval", "x", "--points", "p.npy", "--order", "1", "--out", "v.npy"],
                   "at least one point", _write("p.npy", lambda p: np.save(p, np.zeros(0)))),
    "eval-nan": (["eval", "x", "--points", "p.npy", "--order", "1", "--out", "v.npy"],
                 "row 1", _write("p.npy", lambda p: np.save(p, np.array([0.0, np.nan])))),
    "eval-imperative": (["eval", "x", "--points", "p.npy", "--order", "1", "--out", "v.npy",
                         "--method", "imperative"], "registered method",
                        _write("p.npy", lambda p: np.save(p, np.zeros(3)))),
    "eval-chunk": (["eval", "x", "--points", "p.npy", "--order", "1", "--out", "v.npy",
                    "--chunk-size", "0"], "--chunk-size", None),
    "eval-out-folder": (["eval", "x", "--points", "p.npy", "--order", "1", "--out", "no/v.npy"],
                        "folder for the output must exist",
                        _write("p.npy", lambda p: np.save(p, np.zeros(3)))),
    "hostile-expr": (["derive", "__import__('os').system('touch pwned')", "--at", "1",
                      "--order", "1"], "EXPR", None),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "match", "setup"), BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_user_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    match: str,
    setup: Callable[[Path], None] | None,
) -> None:
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    before = sorted(tmp_path.iterdir())
    status, out, err = run(capsys, *argv)
    assert_one_error_line(status, out, err, match)
    assert sorted(tmp_path.iterdir()) == before  # no output file, no side effect


USAGE_ERRORS: dict[str, tuple[list[str], str]] = {
    "order-missing": (["derive", "x", "--at", "1"], "required: --order/-k"),
    "order-no-value": (["derive", "x", "--at", "1", "--order"], "expected one argument"),
    "order-word": (["derive", "x", "--at", "1", "--order", "two"], "invalid int value: 'two'"),
    "order-float": (["derive", "x", "--at", "1", "--order", "1.5"], "invalid int value: '1.5'"),
    "method": (["derive", "x", "--at", "1", "--order", "1", "--method", "magic"], "'magic'"),
    "dtype": (["derive", "x", "--at", "1", "--order", "1", "--dtype", "int64"], "'int64'"),
    "unknown-option": (["derive", "x", "--at", "1", "--order", "1", "--frob"], "--frob"),
    "eval-no-out": (["eval", "x", "--points", "p.npy", "--order", "1"], "--out"),
    "command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "no-command": ([], "required: COMMAND"),
}


@pytest.mark.parametrize(("argv", "match"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    # issue 10, item 13: argparse printed its usage block and "hodfunc derive: error: ..."
    status, out, err = run(capsys, *argv)
    assert_one_error_line(status, out, err, match)
    command = f"hodfunc {argv[0]}" if argv and argv[0] in ("derive", "eval") else "hodfunc"
    assert err.rstrip().endswith(f"Run '{command} --help' for the options."), err


@pytest.mark.parametrize(
    ("order", "fix"),
    [("171", "Use --order 30 or lower."), (str(MAX_ORDER + 1), "Use --order 30 or lower."),
     ("-1", "K is the highest order computed: --order 1 gives f and f'")],
)  # fmt: skip
def test_order_out_of_range_suggests_a_fitting_order(
    capsys: pytest.CaptureFixture[str], order: str, fix: str
) -> None:
    # issue 10, item 13: --order 171 was told "For a gradient use --order 1."
    status, out, err = run(capsys, "derive", "x", "--at", "1", "--order", order)
    assert_one_error_line(status, out, err, f"between 0 and {MAX_ORDER}, got {order}. {fix}")
    assert "gradient" not in err


def test_plot_of_a_variable_with_underscores(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # its order-4 label was read by mathtext as a double subscript: a 30-line traceback
    path = tmp_path / "f.png"
    status, _, err = run(capsys, "derive", "x_1_2**5", "--var", "x_1_2", "--order", "4", "--plot",
                         str(path))  # fmt: skip
    assert (status, err) == (0, f"hodfunc: wrote {path}\n")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_lists_methods_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "derive", "--help")
    assert status == 0
    for name in METHODS:
        assert name in out
    assert 'hodfunc derive "2*x**3" --at -2 --order 4' in out
    status, out, _ = run(capsys, "eval", "--help")
    assert status == 0
    assert "--chunk-size" in out
    assert "hodfunc eval" in out
