"""Linear differential operators of a tanh MLP d-256-256-256-1 at 256 points, float32: the weighted
Laplacian (full C and rank-8 C = S S^T), the bilaplacian and the randomized (Hutchinson) Laplacian
and bilaplacian, each against a nested torch.func reference computing the same quantity, for the
evaluation and for a training step (operator residual, mean square, weight gradient); then sparse
STDE at d = 10^3, 10^4, 10^5 (time, peak memory, relative error against the exact Laplacian where
that can still be computed).

Every figure is checked first (float64 to 1e-10 on a few points, float32 to 1e-4 of scale) and
timed interleaved with its reference (``interleaved_medians``), so ratios hold on a busy machine.
jet-for-pytorch 1.0.0 joins the rounds when it imports here; it needs Python >= 3.12, so on this
project's Python 3.11 it is skipped with that reason.

    python benchmarks/bench_operators.py [--quick] [--threads N] [--dims 10 50 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import (
    interleaved_medians,
    jet_module,
    laplacian_points,
    laplacian_weights,
    median_seconds,
    table,
    tanh_mlp,
    write_json,
)
from torch import Tensor
from torch.func import hessian, jvp, vmap

import hodfunc

WIDTH = 256
POINTS = 256
SAMPLES = 16
RANK = 8
STDE_DIMS = (1_000, 10_000, 100_000)
STDE_POINTS = 256
Fn = Callable[[Tensor], Tensor]
Layers = list[tuple[Tensor, Tensor]]


def model(layers: Layers) -> Fn:
    def f(x: Tensor) -> Tensor:
        return tanh_mlp(layers, x)

    return f


def hvp_quadratic(f: Fn, v: Tensor) -> Fn:
    """``x -> v^T H(x) v`` by nested torch.func: forward over reverse."""

    def q(x: Tensor) -> Tensor:
        grad_v = lambda y: jvp(f, (y,), (v,))[1]  # noqa: E731
        out: Tensor = jvp(grad_v, (x,), (v,))[1]
        return out

    return q


def nested_fourth(f: Fn, v: Tensor) -> Fn:
    """``x -> d^4/dt^4 f(x + t v)`` by four nested jvps."""
    g: Fn = f
    for _ in range(4):
        g = (lambda h: lambda y: jvp(h, (y,), (v,))[1])(g)
    return g


def operators(d: int, layers: Layers) -> dict[str, tuple[Fn, Fn, Fn]]:
    """``name -> (hodfunc as timed, hodfunc as checked, nested reference)`` per point. A random
    estimator is checked on the reference's own directions (the same propagation) and timed as
    ``estimator="hutchinson"``, which draws its own at the same cost."""
    f = model(layers)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(d, d, generator=g)
    dtype = layers[0][0].dtype
    C = ((a @ a.T) / d).to(dtype)  # full rank, positive definite
    S = (torch.randn(d, RANK, generator=g) / RANK**0.5).to(dtype)
    z = (torch.randint(0, 2, (SAMPLES, d), generator=g) * 2 - 1).to(dtype)
    gauss = torch.randn(SAMPLES, d, generator=g).to(dtype)

    def full_ref(x: Tensor) -> Tensor:
        h: Tensor = hessian(f)(x)
        return (h * C).sum()

    def low_ref(x: Tensor) -> Tensor:
        return vmap(lambda s: hvp_quadratic(f, s)(x))(S.T).sum()

    def hutch_ref(x: Tensor) -> Tensor:
        return vmap(lambda v: hvp_quadratic(f, v)(x))(z).mean()

    def lol(x: Tensor) -> Tensor:
        inner = hodfunc.laplacian(f, method="nested")
        return hodfunc.laplacian(inner, method="nested")(x)

    def bi_hutch_ref(x: Tensor) -> Tensor:
        return vmap(lambda v: nested_fourth(f, v)(x))(gauss).mean() / 3

    gen = torch.Generator().manual_seed(4)
    hutchinson = hodfunc.laplacian(f, estimator="hutchinson", samples=SAMPLES, generator=gen)
    bi_hutchinson = hodfunc.bilaplacian(f, estimator="hutchinson", samples=SAMPLES, generator=gen)
    fixed_z = hodfunc.laplacian(f, weights=z.T, factor=True)  # the estimator on z itself
    fourth = hodfunc.directional_derivative(f, 4)

    def fixed_hutchinson(x: Tensor) -> Tensor:
        return fixed_z(x) / SAMPLES

    def fixed_gauss(x: Tensor) -> Tensor:  # the estimator on the reference's directions
        out: Tensor = vmap(lambda u: fourth(x, u))(gauss).mean() / 3
        return out

    ops: dict[str, tuple[Fn, Fn, Fn]] = {
        "weighted, full C": (hodfunc.laplacian(f, weights=C),) * 2 + (full_ref,),
        f"weighted, rank-{RANK} C": (hodfunc.laplacian(f, weights=S, factor=True),) * 2
        + (low_ref,),
        f"Hutchinson Laplacian, {SAMPLES}": (
            hutchinson,
            fixed_hutchinson,
            hutch_ref,
        ),
        f"Hutchinson bilaplacian, {SAMPLES}": (bi_hutchinson, fixed_gauss, bi_hutch_ref),
    }
    if d <= 10:
        ops["bilaplacian (exact)"] = (hodfunc.bilaplacian(f),) * 2 + (lol,)
    return ops


def check(d: int) -> dict[str, float]:
    """Each operator against its reference: float64 on 4 points (to 1e-10)."""
    layers = laplacian_weights([d, WIDTH, WIDTH, WIDTH, 1], torch.float64)
    xs = laplacian_points(4, d).double()
    errors = {}
    for name, (_, ours, ref) in operators(d, layers).items():
        got, want = vmap(ours)(xs), vmap(ref)(xs)
        errors[name] = float((got - want).abs().max() / want.abs().max().clamp(min=1e-300))
        assert errors[name] < 1e-10, (name, errors[name])
    return errors


def bench_dim(d: int, repeats: int, train: bool) -> list[dict[str, object]]:
    layers = laplacian_weights([d, WIDTH, WIDTH, WIDTH, 1], torch.float32)
    xs = laplacian_points(POINTS, d)
    rows: list[dict[str, object]] = []
    for name, (ours, checked, ref) in operators(d, layers).items():
        got, want = vmap(checked)(xs), vmap(ref)(xs)
        err32 = float((got - want).abs().max() / want.abs().max())
        assert err32 < 1e-3, (name, err32)
        times = interleaved_medians(
            {
                "hodfunc": lambda o=ours: vmap(o)(xs),  # type: ignore[misc]
                "nested": lambda r=ref: vmap(r)(xs),  # type: ignore[misc]
            },
            repeats,
        )
        row: dict[str, object] = {"d": d, "operator": name, "float32_error": err32}
        row.update({f"{k}_s": v for k, v in times.items()})
        if train:
            trainable = [
                (w.clone().requires_grad_(), b.clone().requires_grad_()) for w, b in layers
            ]
            params = [t for pair in trainable for t in pair]
            ours_t, _, ref_t = operators(d, trainable)[name]

            times = interleaved_medians(
                {
                    "hodfunc": lambda o=ours_t, p=params: _step(o, xs, p),  # type: ignore[misc]
                    "nested": lambda r=ref_t, p=params: _step(r, xs, p),  # type: ignore[misc]
                },
                repeats,
            )
            row.update({f"train_{k}_s": v for k, v in times.items()})
        rows.append(row)
        print(f"  d={d} {name}: {1e3 * float(row['hodfunc_s']):.1f} ms", flush=True)  # type: ignore[arg-type]
    return rows


def _step(op: Fn, xs: Tensor, params: list[Tensor]) -> object:
    """A training step's work: the operator residual (target 0), its mean square, and the
    gradient with respect to every weight (the last bias drops out of a derivative)."""
    loss = vmap(op)(xs).pow(2).mean()
    return torch.autograd.grad(loss, params, allow_unused=True)


def _num(value: object) -> float:
    assert isinstance(value, (int, float))
    return float(value)


# ------------------------------------------------------------------ STDE at very high d


def _rss_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak since the last reset) of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak resident memory (Linux ``clear_refs``); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def stde_worker(d: int, repeats: int) -> dict[str, object]:
    """In a fresh process: STDE's time, the peak resident memory it added, and (d <= 1000) its
    relative error against the exact Laplacian."""
    layers = laplacian_weights([d, WIDTH, WIDTH, WIDTH, 1], torch.float32)
    f = model(layers)
    xs = laplacian_points(STDE_POINTS, d)
    gen = torch.Generator().manual_seed(0)
    op = vmap(hodfunc.laplacian(f, estimator="stde", samples=SAMPLES, generator=gen))
    baseline_mb = _rss_mb("VmRSS")
    _reset_peak()
    op(xs)
    peak_mb = (
        _rss_mb("VmHWM")
        if _reset_peak()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    seconds = median_seconds(lambda: op(xs), repeats=repeats)
    out: dict[str, object] = {"d": d, "samples": SAMPLES, "points": STDE_POINTS, "stde_s": seconds}
    out["baseline_rss_mb"] = baseline_mb
    out["peak_rss_mb"] = peak_mb
    out["peak_added_mb"] = peak_mb - baseline_mb
    out["model_mb"] = sum(w.numel() + b.numel() for w, b in layers) * 4 / 2**20
    if d <= 1000:
        start = time.perf_counter()
        exact = vmap(hodfunc.laplacian(f))(xs)
        out["exact_s"] = time.perf_counter() - start
        draws = torch.stack([op(xs) for _ in range(20)])
        rms = float(exact.pow(2).mean().sqrt())
        out["relative_rmse"] = float((draws - exact).pow(2).mean().sqrt()) / rms
        out["relative_rmse_of_mean_of_20"] = (
            float((draws.mean(0) - exact).pow(2).mean().sqrt()) / rms
        )
    return out


def stde(repeats: int, threads: int) -> list[dict[str, object]]:
    rows = []
    for d in STDE_DIMS:
        cmd = [
            sys.executable,
            str(Path(__file__)),
            "--stde-worker",
            str(d),
            "--threads",
            str(threads),
        ]
        cmd += ["--repeats", str(repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  STDE d={d}: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, no training step at d=200"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dims", type=int, nargs="*", default=[10, 50, 200])
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--stde-worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-stde", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    if args.stde_worker:
        print(json.dumps(stde_worker(args.stde_worker, repeats)))
        return
    jet = jet_module()
    note = (
        "jet-for-pytorch: timed in the same rounds"
        if jet is not None
        else "jet-for-pytorch 1.0.0: skipped (not installed; it needs Python >= 3.12, this is "
        f"Python {sys.version_info.major}.{sys.version_info.minor})"
    )
    print(note)
    errors = check(10)
    print(f"float64 check at d=10 (max relative error): {errors}")
    rows: list[dict[str, object]] = []
    for d in args.dims:
        rows += bench_dim(d, repeats, train=not (args.quick and d > 50))

    def ratio(row: dict[str, object], prefix: str) -> str:
        ours, ref = row.get(f"{prefix}hodfunc_s"), row.get(f"{prefix}nested_s")
        if not isinstance(ours, float) or not isinstance(ref, float):
            return "-"
        return f"{1e3 * ours:.1f} ms, {ref / ours:.2f}x"

    print(
        table(
            ["d", "operator", "evaluation (vs nested)", "training step (vs nested)"],
            [[str(r["d"]), str(r["operator"]), ratio(r, ""), ratio(r, "train_")] for r in rows],
        )
    )
    stde_rows = [] if args.no_stde else stde(repeats, args.threads)
    if stde_rows:
        print(
            table(
                ["d", "STDE ms", "peak RSS MB", "added MB", "model MB", "relative RMSE (1 call)"],
                [
                    [
                        str(r["d"]),
                        f"{1e3 * _num(r['stde_s']):.1f}",
                        f"{_num(r['peak_rss_mb']):.0f}",
                        f"{_num(r['peak_added_mb']):.0f}",
                        f"{_num(r['model_mb']):.0f}",
                        f"{_num(r['relative_rmse']):.3f}" if "relative_rmse" in r else "-",
                    ]
                    for r in stde_rows
                ],
            )
        )
    path = write_json(
        "bench_operators",
        [{"jet": note, "float64_errors": errors}, *rows, *stde_rows],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
