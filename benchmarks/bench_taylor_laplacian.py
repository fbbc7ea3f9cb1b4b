"""The Laplacian of a tanh MLP 50-256-256-256-1 at 256 points: collapsed Taylor mode against
``vmap(trace(hessian))`` and against jet-for-pytorch's collapsed Laplacian (when available, see
``bench_taylor.py``), all float32, in one run.

Also reports the fraction of the matmul floor reached: exact propagation of all 50 first-order
directions must push them through the two 256x256 layers, i.e. two ``(points * 50, 256) @
(256, 256)`` matmuls; their time, measured here, is the floor (REFERENCES.md).

The timings are interleaved (each round runs every method once) so that the machine's drift
lands in every figure alike. jet-for-pytorch joins the rounds when it imports in this interpreter;
otherwise it runs under ``$JET_PYTHON`` in a process of its own, timed apart (noisier).

    python benchmarks/bench_taylor_laplacian.py [--quick] [--threads N] [--tuned-allocator]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _common import (
    interleaved_medians,
    jet_laplacian,
    jet_module,
    laplacian_points,
    laplacian_weights,
    matmul_floor,
    run_jet,
    table,
    tanh_mlp,
    write_json,
)
from torch import Tensor

import hodfunc

DIMS = [50, 256, 256, 256, 1]
POINTS = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--tuned-allocator",
        action="store_true",
        help="call hodfunc.tune_cpu_allocator() first (for every method alike: one process)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tuned_allocator:
        print(f"allocator: {hodfunc.tune_cpu_allocator()}")
    repeats = 5 if args.quick else 15

    layers = laplacian_weights(DIMS, torch.float32)
    xs = laplacian_points(POINTS, DIMS[0])

    def f(x: Tensor) -> Tensor:
        return tanh_mlp(layers, x)

    def trace_hessian(x: Tensor) -> Tensor:
        h: Tensor = torch.func.hessian(f)(x)
        return h.diagonal().sum()

    taylor = torch.func.vmap(hodfunc.laplacian(f, method="taylor"))
    baseline = torch.func.vmap(trace_hessian)

    # correctness first: float64 on a few points to 1e-10, float32 to 1e-4 of scale
    layers64 = [(w.double(), b.double()) for w, b in layers]
    lap64 = torch.func.vmap(hodfunc.laplacian(lambda x: tanh_mlp(layers64, x), method="taylor"))
    ref64 = torch.func.vmap(
        lambda x: torch.func.hessian(lambda y: tanh_mlp(layers64, y))(x).trace()
    )
    x8 = xs[:8].double()
    err64 = float((lap64(x8) - ref64(x8)).abs().max() / ref64(x8).abs().max())
    got, ref = taylor(xs), baseline(xs)
    err32 = float((got - ref).abs().max() / ref.abs().max())
    assert err64 < 1e-10, err64
    assert err32 < 1e-4, err32

    methods: dict[str, Callable[[], object]] = {
        "taylor": lambda: taylor(xs),
        "hessian": lambda: baseline(xs),
        "floor": matmul_floor(POINTS, DIMS[0]),
    }
    row: dict[str, object] = {
        "taylor_vs_hessian_float64": err64,
        "taylor_vs_hessian_float32": err32,
        "points": POINTS,
        "dims": DIMS,
        "allocator": "tuned" if args.tuned_allocator else "default",
    }
    jet_values: Tensor | None = None
    jet = jet_module()
    if jet is not None:
        jet_lap = jet_laplacian(jet.laplacian, DIMS)
        jet_values = jet_lap(xs)
        methods["jet"] = lambda: jet_lap(xs)
        print("jet-for-pytorch in this interpreter: timed in the same rounds")
    else:
        jet_results, jet_note = run_jet(
            [{"kind": "laplacian", "dims": DIMS, "points": POINTS, "repeats": repeats}],
            args.threads,
        )
        print(f"{jet_note} (its own process, timed apart)" if jet_results else jet_note)
        if jet_results and "error" not in jet_results[0]:
            jet_values = torch.tensor(jet_results[0]["values"])
            row["jet_s"] = jet_results[0]["seconds"]
        elif jet_results:
            row["jet_error"] = jet_results[0]["error"]
    if jet_values is not None:
        row["jet_vs_taylor"] = float((jet_values - got).abs().max() / got.abs().max())

    for name, seconds in interleaved_medians(methods, repeats).items():
        row[f"{name}_s"] = seconds

    def ms(key: str) -> str:
        value = row.get(key)
        return f"{1e3 * float(value):.1f}" if isinstance(value, float) else "-"

    taylor_s = row["taylor_s"]
    assert isinstance(taylor_s, float)

    def over(key: str) -> str:
        value = row.get(key)
        return f"{value / taylor_s:.2f}x" if isinstance(value, float) else "-"

    print(
        table(
            ["method", "ms", "time / taylor"],
            [
                ["collapsed Taylor (hodfunc)", ms("taylor_s"), "1.00x"],
                ["vmap(trace(hessian))", ms("hessian_s"), over("hessian_s")],
                ["jet-for-pytorch collapsed", ms("jet_s"), over("jet_s")],
                ["matmul floor", ms("floor_s"), over("floor_s")],
            ],
        )
    )
    floor = row["floor_s"]
    assert isinstance(floor, float)
    print(f"fraction of the matmul floor reached: {floor / taylor_s:.0%}")
    print(f"taylor vs trace(hessian): {err64:.1e} (float64), {err32:.1e} (float32)")
    print(f"wrote {write_json('bench_taylor_laplacian', [row])}")


if __name__ == "__main__":
    main()
