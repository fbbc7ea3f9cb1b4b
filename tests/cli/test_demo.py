"""The demo: its table states the seeds' numbers and the verdicts the equivalence suite proves."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hodfunc._cli._demo import NOTEBOOK_GX, NOTEBOOK_INPUT_GRAD, notebook_net, run_demo


def test_notebook_net_reproduces_the_printed_numbers() -> None:
    net = notebook_net()
    x = torch.tensor([1.0, 1.0], requires_grad=True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert torch.allclose(grad, torch.tensor(NOTEBOOK_INPUT_GRAD), atol=6e-5)
    (gx,) = torch.autograd.grad(net(x).sum(), net.mlp.weight)
    assert torch.allclose(gx, torch.tensor(NOTEBOOK_GX), atol=6e-5)


def test_demo_prints_every_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo() == 0
    out = capsys.readouterr().out
    assert out.count("agree") == 11
    for fact in (
        "differs [5]",
        "12*(-2) = -24",
        "row 0 + row 1",
        "5 x gx",
        "RuntimeError",
        "8, not 2",
    ):
        assert fact in out


def test_python_m_hodfunc_demo_exits_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hodfunc", "demo"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "seed printed" in done.stdout
    assert "Traceback" not in done.stderr
