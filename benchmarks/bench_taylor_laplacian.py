"""The Laplacian of a tanh MLP 50-256-256-256-1 at 256 points: collapsed Taylor mode against
``vmap(trace(hessian))`` and against jet-for-pytorch's collapsed Laplacian (when available, see
``bench_taylor.py``), all float32, in one run.

Also reports the fraction of the matmul floor reached: exact propagation of all 50 first-order
directions must push them through the two 256x256 layers, i.e. two ``(points * 50, 256) @
(256, 256)`` matmuls; their time, measured here, is the floor (REFERENCES.md).

    python benchmarks/bench_taylor_laplacian.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
from _common import median_seconds, table, write_json
from bench_taylor import run_jet
from bench_taylor_jet_worker import laplacian_weights, tanh_mlp
from torch import Tensor

import hodfunc

DIMS = [50, 256, 256, 256, 1]
POINTS = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 9

    layers = laplacian_weights(DIMS, torch.float32)
    xs = torch.randn(POINTS, DIMS[0], generator=torch.Generator().manual_seed(2))

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

    jet_results, jet_note = run_jet(
        [{"kind": "laplacian", "dims": DIMS, "points": POINTS, "repeats": repeats}], args.threads
    )
    print(jet_note)
    row: dict[str, object] = {
        "taylor_vs_hessian_float64": err64,
        "taylor_vs_hessian_float32": err32,
    }
    row["taylor_s"] = median_seconds(lambda: taylor(xs), repeats)
    row["hessian_s"] = median_seconds(lambda: baseline(xs), repeats)
    hidden = torch.randn(POINTS * DIMS[0], 256)
    weight = torch.randn(256, 256)
    row["floor_s"] = median_seconds(lambda: (hidden @ weight, hidden @ weight), repeats)
    if jet_results and "error" not in jet_results[0]:
        jet_values = torch.tensor(jet_results[0]["values"])
        row["jet_vs_taylor"] = float((jet_values - got).abs().max() / got.abs().max())
        row["jet_s"] = jet_results[0]["seconds"]
    elif jet_results:
        row["jet_error"] = jet_results[0]["error"]

    def ms(key: str) -> str:
        value = row.get(key)
        return f"{1e3 * float(value):.1f}" if isinstance(value, float) else "-"

    def over(key: str) -> str:
        value = row.get(key)
        return f"{float(value) / float(row['taylor_s']):.2f}x" if isinstance(value, float) else "-"  # type: ignore[arg-type]

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
    floor, taylor_s = row["floor_s"], row["taylor_s"]
    assert isinstance(floor, float)
    assert isinstance(taylor_s, float)
    print(f"fraction of the matmul floor reached: {floor / taylor_s:.0%}")
    print(f"taylor vs trace(hessian): {err64:.1e} (float64), {err32:.1e} (float32)")
    print(f"wrote {write_json('bench_taylor_laplacian', [row])}")


if __name__ == "__main__":
    main()
