"""What a user's ``mypy --strict`` sees (issue 10, items 14 and 15).

One mypy run, in a subprocess, from a temporary directory outside the repository, so that hodfunc
is found the way a user's project finds it: through the installed (editable) package, not the
current directory. It checks that hodfunc is found at all (setuptools' editable finder is an
import hook mypy cannot follow, and every signature then read as ``Any``), that the transforms'
revealed types are real signatures, and that ``directional_derivative`` and ``hvp`` accept
functions with keyword-only parameters while still checking positional arguments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

GOOD = """
    import torch
    from torch import Tensor

    import hodfunc


    def f(x: Tensor) -> Tensor:
        return torch.sin(x)


    def scaled(x: Tensor, *, a: float) -> Tensor:
        return (a * x**3).sum()


    def two(x: Tensor, n: int) -> Tensor:
        return (x**n).sum()


    reveal_type(hodfunc.derivative)
    reveal_type(hodfunc.derivative(f))
    reveal_type(hodfunc.directional_derivative(scaled, 2))
    reveal_type(hodfunc.hvp(scaled))
    reveal_type(hodfunc.directional_derivative(two, 1))
    x = torch.ones(2)
    y: Tensor = hodfunc.directional_derivative(scaled, 2)(x, x, a=2.0)
    z: Tensor = hodfunc.hvp(scaled)(x, x, a=2.0)
    w: Tensor = hodfunc.directional_derivative(two, 1)(x, 3, x)
    u: Tensor = hodfunc.hvp(two)(x, 3, x)
    d: Tensor = hodfunc.derivative(f, 2)(torch.tensor(0.5))
    named: dict[str, Tensor] = hodfunc.partials(f, {"u": (), "u_x": (0,)})(x)
    terms: tuple[Tensor, ...] = hodfunc.partials(f, [(0,), (0, 0)])(x)
    over: dict[str, Tensor] = hodfunc.batched(hodfunc.partials(f, {"u_xx": (0, 0)}))(x)
"""

BAD = """
    from torch import Tensor

    import hodfunc


    def two(x: Tensor, n: int) -> Tensor:
        return (x**n).sum()


    hodfunc.directional_derivative(two, 1)(Tensor(), "3", Tensor())
    hodfunc.hvp(two)(Tensor(), 3)
    hodfunc.derivative(two)(Tensor(), "3")
"""


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Run ``python -m mypy --strict`` once on the two user modules; lines by file name."""
    work = tmp_path_factory.mktemp("user_project")
    assert REPO not in work.parents
    (work / "user_module.py").write_text(textwrap.dedent(GOOD))
    (work / "user_errors.py").write_text(textwrap.dedent(BAD))
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(work / ".mypy_cache"),
            "user_module.py",
            "user_errors.py",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    lines: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        lines.setdefault(line.split(":", 1)[0], []).append(line)
    return lines


def _revealed(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := re.search(r'Revealed type is "(.*)"', line))]


def test_an_installed_hodfunc_is_found_by_mypy(mypy_output: dict[str, list[str]]) -> None:
    text = "\n".join(line for lines in mypy_output.values() for line in lines)
    assert "Cannot find implementation or library stub" not in text, text
    assert "missing library stubs" not in text, text
    assert "import-untyped" not in text, text


def test_user_code_type_checks_cleanly(mypy_output: dict[str, list[str]]) -> None:
    errors = [line for line in mypy_output.get("user_module.py", []) if ": error:" in line]
    assert not errors, "\n".join(errors)


def test_revealed_types_are_real_signatures(mypy_output: dict[str, list[str]]) -> None:
    revealed = _revealed(mypy_output.get("user_module.py", []))
    assert len(revealed) == 5, mypy_output
    assert all(r != "Any" for r in revealed), revealed
    derivative, applied, directional, hvp, positional = revealed
    assert derivative.startswith("def [P] (f: def (*P.args, **P.kwargs) -> torch._tensor.Tensor")
    assert "order: int" in derivative
    assert applied == "def (x: torch._tensor.Tensor) -> torch._tensor.Tensor"
    assert "WithDirection" in directional
    assert "WithDirection" in hvp
    assert positional == "hodfunc._call.WithDirection[torch._tensor.Tensor, int]"


def test_positional_arguments_are_still_checked(mypy_output: dict[str, list[str]]) -> None:
    errors = [line for line in mypy_output.get("user_errors.py", []) if ": error:" in line]
    text = "\n".join(errors)
    assert len(errors) == 3, text
    assert re.search(r"user_errors.py:11: error: Argument 2 .* \"str\"; expected \"int\"", text)
    assert re.search(r"user_errors.py:12: error: Too few arguments", text)
    assert re.search(r"user_errors.py:13: error: Argument 2 .* \"str\"; expected \"int\"", text)
