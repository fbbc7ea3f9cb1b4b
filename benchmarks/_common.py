"""Everything the benchmarks share: timing (median of repeats, or interleaved rounds), the
environment record, JSON output, the seeded models of REFERENCES.md, and the optional
jet-for-pytorch anchor (in this interpreter, or in its own through ``run_jet``).

Only torch is imported here: the jet worker imports this module under another interpreter.
Optional anchors are loaded with ``importlib``, so the benchmarks type-check the same with and
without them installed."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import cast

import torch
from torch import Tensor

RESULTS = Path(__file__).parent / "results"


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]], repeats: int = 9, warmup: int = 1
) -> dict[str, float]:
    """Median wall time of each of ``fns`` over ``repeats`` rounds, each round calling every one
    once (in a rotating order), after ``warmup`` rounds.

    On a shared machine the speed drifts over seconds; interleaving puts the same drift into
    every figure, so their ratios hold even when the absolute times do not.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def environment() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json(name: str, rows: list[dict[str, object]]) -> Path:
    """Write ``rows`` with the environment to ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    return path


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ the seeded models

MlpWeights = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def mlp_weights(width: int, dtype: torch.dtype) -> MlpWeights:
    """``W1 (w,1), b1, W2 (w,w), b2, w3``: the scalar tanh MLP of REFERENCES.md, seeded."""
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(width, 1, generator=g)
    b1 = torch.randn(width, generator=g)
    w2 = torch.randn(width, width, generator=g) / width**0.5
    b2 = torch.randn(width, generator=g)
    w3 = torch.randn(width, generator=g) / width**0.5
    return cast("MlpWeights", tuple(t.to(dtype) for t in (w1, b1, w2, b2, w3)))


def laplacian_weights(dims: list[int], dtype: torch.dtype) -> list[tuple[Tensor, Tensor]]:
    """Seeded ``(W, b)`` per layer of the tanh MLP ``dims[0] -> ... -> dims[-1]``."""
    g = torch.Generator().manual_seed(1)
    return [
        (
            (torch.randn(o, i, generator=g) / i**0.5).to(dtype),
            (torch.randn(o, generator=g) * 0.1).to(dtype),
        )
        for i, o in itertools.pairwise(dims)
    ]


def tanh_mlp(layers: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
    """``x (..., d_in) -> (...)``: linear layers with tanh between them, batched or not."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = torch.nn.functional.linear(h, w, b)
        if i < len(layers) - 1:
            h = torch.tanh(h)
    return h.squeeze(-1)


def laplacian_points(points: int, dim: int) -> Tensor:
    """The seeded points of the Laplacian benchmark."""
    return torch.randn(points, dim, generator=torch.Generator().manual_seed(2))


def matmul_floor(points: int, dim: int) -> Callable[[], object]:
    """The Laplacian benchmark's floor (REFERENCES.md): the matmuls of its two 256x256 layers on
    all ``dim`` directions of ``points`` points, as a call to time beside the methods."""
    hidden = torch.randn(points * dim, 256)
    weight = torch.randn(256, 256)
    return lambda: (hidden @ weight, hidden @ weight)


def jet_laplacian(
    laplacian: Callable[..., Callable[[Tensor], Tensor]], dims: list[int]
) -> Callable[[Tensor], Tensor]:
    """jet-for-pytorch's collapsed Laplacian of the benchmark MLP, vmapped over points."""
    layers = laplacian_weights(dims, torch.float32)

    def f(x: Tensor) -> Tensor:
        return tanh_mlp(layers, x)

    # per point: a Laplacian of the batched function would sum over all points' coordinates
    return torch.func.vmap(laplacian(f, (torch.zeros(dims[0]),)))


# ------------------------------------------------------- jet-for-pytorch, the optional anchor


def jet_module() -> ModuleType | None:
    """jet-for-pytorch when it imports in this interpreter: then it runs in the same rounds."""
    if importlib.util.find_spec("jet") is None:
        return None
    return importlib.import_module("jet")


def jet_mlp(
    jet: Callable[..., Callable[..., tuple[Tensor, ...]]],
    order: int,
    xs: Tensor,
    width: int,
) -> Callable[[], Tensor]:
    """jet-for-pytorch's derivatives ``0..order`` of the scalar MLP at the points ``xs``, as a
    call returning ``(points, order + 1)``."""
    w1, b1, w2, b2, w3 = mlp_weights(width, xs.dtype)

    def f(x: Tensor) -> Tensor:  # batched over x; no aten.mv (jet-for-pytorch has no rule for it)
        h = torch.tanh(torch.tanh(x.unsqueeze(-1) @ w1.T + b1) @ w2.T + b2)
        return (h @ w3.reshape(-1, 1)).squeeze(-1)

    jet_f = jet(f, (torch.zeros_like(xs),))
    coefficients = (xs, torch.ones_like(xs), *[torch.zeros_like(xs) for _ in range(order - 1)])
    return lambda: torch.stack(list(jet_f(coefficients))).T


def run_jet(tasks: list[dict[str, object]], threads: int) -> tuple[list[dict[str, object]], str]:
    """jet-for-pytorch results per task, or ``([], reason)`` when it is not available."""
    worker = Path(__file__).with_name("bench_taylor_jet_worker.py")
    spec = json.dumps({"threads": threads, "tasks": tasks})
    python = os.environ.get("JET_PYTHON")
    if importlib.util.find_spec("jet") is not None:
        python = sys.executable
    if python is None:
        return [], "jet-for-pytorch not importable and $JET_PYTHON not set (benchmarks/README.md)"
    done = subprocess.run(
        [python, str(worker), spec], capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        return [], f"worker failed: {done.stderr.strip().splitlines()[-1][:200]}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    results: list[dict[str, object]] = out["results"]
    return results, f"jet-for-pytorch under Python {out['python']}"
