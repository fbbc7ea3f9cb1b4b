"""The jet-for-pytorch side of the Taylor benchmarks, run in its own interpreter.

jet-for-pytorch declares Python >= 3.12, so it may live in another interpreter than hodfunc. When
``import jet`` fails in theirs, the Taylor benchmarks run this file under ``$JET_PYTHON`` (see
benchmarks/README.md): one task list in, timings plus values out as JSON, in the same run as the
hodfunc figures. It needs only torch, jet and ``_common`` (the shared models).

    python bench_taylor_jet_worker.py '{"threads": 1, "tasks": [{"kind": "mlp", ...}]}'
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import cast

import torch
from _common import jet_laplacian, jet_mlp, laplacian_points, median_seconds
from torch import Tensor


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
        seconds = median_seconds(run, repeats, warmup=2)
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
        seconds = median_seconds(lambda: lap(xs), repeats, warmup=2)
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
