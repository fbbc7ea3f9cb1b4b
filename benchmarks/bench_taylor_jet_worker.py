"""The benchmarks' shared models, and the jet-for-pytorch side of the Taylor benchmarks.

jet-for-pytorch declares Python >= 3.12, so it may live in another interpreter than hodfunc. The
Taylor benchmarks import the model builders from here and, when ``import jet`` fails in their own
interpreter, run this file under ``$JET_PYTHON`` (see benchmarks/README.md), one task list in and
timings plus values out as JSON, in the same run as the hodfunc figures.

    python bench_taylor_jet_worker.py '{"threads": 1, "tasks": [{"kind": "mlp", ...}]}'
"""

from __future__ import annotations

import importlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

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


def jet_laplacian(
    laplacian: Callable[..., Callable[[Tensor], Tensor]], dims: list[int]
) -> Callable[[Tensor], Tensor]:
    """jet-for-pytorch's collapsed Laplacian of the benchmark MLP, vmapped over points."""
    layers = laplacian_weights(dims, torch.float32)

    def f(x: Tensor) -> Tensor:
        return tanh_mlp(layers, x)

    # per point: a Laplacian of the batched function would sum over all points' coordinates
    return torch.func.vmap(laplacian(f, (torch.zeros(dims[0]),)))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def _mlp_task(
    jet: Callable[..., Callable[..., tuple[Tensor, ...]]], task: dict[str, object]
) -> dict[str, object]:
    order, points, repeats = (
        int(str(task["order"])),
        int(str(task["points"])),
        int(str(task["repeats"])),
    )
    dtype = getattr(torch, str(task["dtype"]))
    if "x" in task:
        xs = torch.tensor([float(str(task["x"]))], dtype=dtype)
    else:
        xs = torch.linspace(-1.5, 1.5, points, dtype=dtype)
    try:
        run = jet_mlp(jet, order, xs, int(str(task["width"])))
        values = run()
        seconds = median_seconds(run, repeats)
    except Exception as error:  # report, do not crash the whole benchmark
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    return {"seconds": seconds, "values": values.double().tolist()}


def _laplacian_task(
    laplacian: Callable[..., Callable[[Tensor], Tensor]], task: dict[str, object]
) -> dict[str, object]:
    dims = [int(d) for d in cast("list[int]", task["dims"])]
    points, repeats = int(str(task["points"])), int(str(task["repeats"]))
    xs = laplacian_points(points, dims[0])
    lap = jet_laplacian(laplacian, dims)
    try:
        values = lap(xs)
        seconds = median_seconds(lambda: lap(xs), repeats)
    except Exception as error:
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    return {"seconds": seconds, "values": values.double().reshape(-1).tolist()}


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(int(spec["threads"]))
    module = importlib.import_module("jet")
    results = []
    for task in spec["tasks"]:
        if task["kind"] == "mlp":
            results.append(_mlp_task(module.jet, task))
        else:
            results.append(_laplacian_task(module.laplacian, task))
    print(json.dumps({"python": sys.version.split()[0], "results": results}))


if __name__ == "__main__":
    main()
