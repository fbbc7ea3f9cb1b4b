"""Per-sample gradients, their norms and the clipped sum against one batched backward.

One question: how much does each way of getting per-sample information cost, as a multiple of
one batched forward+backward of the same model on the same batch, measured in the same run?
Compared: the torch.func recipe ``vmap(grad(functional_call))``, ``hodfunc.per_sample_grads``
(fresh result, and ``out=`` reusing the previous one), ``hodfunc.per_sample_grad_norms``,
``hodfunc.clipped_grad_sum``, and Opacus (``GradSampleModule`` hooks) and BackPACK
(``BatchGrad``) when they are installed. Models: an MLP 784-512-256-10, a small CNN on 28x28
(two conv layers and a linear), the CNN of Opacus's MNIST example, a small transformer
encoder and a decoder layer (sequence lengths 32 and 256), at batch 32 and 128. Every method is
checked against the recipe before it is timed.

``--attribution`` answers the data-attribution question: ``per_sample_grad_projections`` (each
kind) against materialize-then-project with the same matrices (given, and generated per call),
and ``per_sample_grad_dots`` against materialize-then-multiply, in time and peak memory, for the
MLP, the CNN and the encoder at batch 128. Captum's TracInCPFast is timed when installed.

Two more questions are answered in subprocesses, so that they cannot disturb the timings:
peak memory of ``per_sample_grads`` with ``chunk_size`` (growth of ``ru_maxrss``), and the
effect of ``hodfunc.tune_cpu_allocator()`` on the recipe and on ``per_sample_grads``.

    .venv/bin/python benchmarks/bench_per_sample.py [--quick] [--threads 1,2] [--rounds N]
        [--models mlp,cnn]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from _common import median_seconds, table, write_json
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import hodfunc

LossFn = Callable[[Tensor, Tensor], Tensor]
MODELS = ("mlp", "cnn", "cnn_opacus", "transformer", "decoder")
SEQUENCE_MODELS = ("transformer_s256", "decoder_s256")  # only when asked for (--models)
Case = tuple[nn.Module, LossFn, Tensor, Tensor]


def make_case(name: str, batch: int) -> Case:
    """The model, loss and a batch for one benchmark configuration."""
    torch.manual_seed(0)
    loss = nn.functional.cross_entropy
    model: nn.Module
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        return model, loss, torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    if name == "cnn":  # two conv layers and a linear on 28x28
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 10),
        )
        return model, loss, torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    if name == "cnn_opacus":  # the small CNN of Opacus's MNIST example
        model = nn.Sequential(
            nn.Conv2d(1, 16, 8, stride=2, padding=3),
            nn.ReLU(),
            nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(2, 1),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )
        return model, loss, torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    if name.startswith(("transformer", "decoder")):
        seq = 256 if name.endswith("_s256") else 32
        model = TinyEncoder() if name.startswith("transformer") else TinyDecoder(seq)
        width = seq if name.startswith("transformer") else 2 * seq
        return (
            model.eval(),
            loss,
            torch.randint(0, 1000, (batch, width)),
            torch.randint(0, 10, (batch,)),
        )
    raise ValueError(name)


class TinyDecoder(nn.Module):
    """Embedding 1000x64, one TransformerDecoderLayer (4 heads, width 128, causal self-attention,
    cross-attention to the embedded source), mean-pool, Linear; tokens are target then source."""

    def __init__(self, seq: int) -> None:
        super().__init__()
        self.seq = seq
        self.embed = nn.Embedding(1000, 64)
        self.layer = nn.TransformerDecoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.head = nn.Linear(64, 10)
        self.register_buffer("mask", torch.ones(seq, seq, dtype=torch.bool).triu(1))

    def forward(self, tokens: Tensor) -> Tensor:
        tgt, src = self.embed(tokens[:, : self.seq]), self.embed(tokens[:, self.seq :])
        mask: Tensor = self.mask  # type: ignore[assignment]
        h: Tensor = self.layer(tgt, src, tgt_mask=mask, tgt_is_causal=True)
        out: Tensor = self.head(h.mean(1))
        return out


class TinyEncoder(nn.Module):
    """Embedding 1000x64, one TransformerEncoderLayer (4 heads, width 128), mean-pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 64)
        self.layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, tokens: Tensor) -> Tensor:
        h: Tensor = self.norm(self.layer(self.embed(tokens)))
        out: Tensor = self.head(h.mean(1))
        return out


def batched_backward(case: Case) -> Callable[[], object]:
    """One batched forward and backward of the summed loss (into private leaves)."""
    model, loss_fn, x, y = case
    params = {k: p.detach().requires_grad_(True) for k, p in model.named_parameters()}

    def run() -> object:
        loss = loss_fn(functional_call(model, params, (x,)), y, reduction="sum")  # type: ignore[call-arg]
        return torch.autograd.grad(loss, list(params.values()))

    return run


def recipe(case: Case) -> Callable[[], dict[str, Tensor]]:
    """The torch.func recipe ``vmap(grad(functional_call))``."""
    model, loss_fn, x, y = case
    params = {k: p.detach() for k, p in model.named_parameters()}

    def sample_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    def run() -> dict[str, Tensor]:
        out: dict[str, Tensor] = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
        return out

    return run


def opacus_grads(case: Case) -> Callable[[], dict[str, Tensor]] | None:
    """Opacus's hook-based per-sample gradients, if Opacus is installed."""
    if importlib.util.find_spec("opacus") is None:
        return None
    opacus = importlib.import_module("opacus")  # untyped: imported dynamically
    model, _, x, y = case
    gsm: nn.Module = opacus.GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    lossfunc = nn.CrossEntropyLoss(reduction="sum")

    def run() -> dict[str, Tensor]:
        gsm.zero_grad(set_to_none=True)
        torch.autograd.backward(lossfunc(gsm(x), y))
        named = gsm.named_parameters()
        return {k.removeprefix("_module."): getattr(p, "grad_sample") for k, p in named}  # noqa: B009

    return run


def backpack_grads(case: Case) -> Callable[[], dict[str, Tensor]] | None:
    """BackPACK's ``BatchGrad``, if BackPACK is installed and supports the model."""
    if importlib.util.find_spec("backpack") is None:
        return None
    bp = importlib.import_module("backpack")  # untyped: imported dynamically
    extensions = importlib.import_module("backpack.extensions")
    model, _, x, y = case
    if isinstance(model, (TinyEncoder, TinyDecoder)):
        return None  # BackPACK has no extension for attention
    private: nn.Module = bp.extend(copy.deepcopy(model))
    lossfunc: nn.Module = bp.extend(nn.CrossEntropyLoss(reduction="sum"))

    def run() -> dict[str, Tensor]:
        private.zero_grad(set_to_none=True)
        with bp.backpack(extensions.BatchGrad()):
            torch.autograd.backward(lossfunc(private(x), y))
        return {k: getattr(p, "grad_batch") for k, p in private.named_parameters()}  # noqa: B009

    return run


def close(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Per-parameter agreement to float32 tolerance relative to the largest entry."""
    return all(
        torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5 * float(b[k].abs().max())) for k in b
    )


def bench_case(name: str, batch: int, repeats: int) -> dict[str, object]:
    """Time every method on one configuration; return the row with ratios to the backward."""
    case = make_case(name, batch)
    model, loss_fn, x, y = case
    ref = recipe(case)()
    norms_ref = (
        torch.stack([g.reshape(batch, -1).square().sum(1) for g in ref.values()]).sum(0).sqrt()
    )
    weights = torch.clamp(1.0 / norms_ref, max=1.0)
    clipped_ref = {k: torch.einsum("b,b...->...", weights, g) for k, g in ref.items()}
    mine = hodfunc.per_sample_grads(model, loss_fn, x, y)
    reused = {k: torch.empty_like(v) for k, v in mine.items()}
    checks = {
        "per_sample_grads": close(mine, ref),
        "per_sample_grad_norms": bool(
            torch.allclose(
                hodfunc.per_sample_grad_norms(model, loss_fn, x, y), norms_ref, rtol=1e-4
            )
        ),
        "clipped_grad_sum": close(
            hodfunc.clipped_grad_sum(model, loss_fn, x, y, max_norm=1.0), clipped_ref
        ),
    }
    methods: dict[str, Callable[[], object]] = {
        "backward": batched_backward(case),
        "vmap(grad)": recipe(case),
        "per_sample_grads": lambda: hodfunc.per_sample_grads(model, loss_fn, x, y),
        "per_sample_grads(out=)": lambda: hodfunc.per_sample_grads(
            model, loss_fn, x, y, out=reused
        ),
        "per_sample_grad_norms": lambda: hodfunc.per_sample_grad_norms(model, loss_fn, x, y),
        "clipped_grad_sum": lambda: hodfunc.clipped_grad_sum(model, loss_fn, x, y, max_norm=1.0),
    }
    if not all(checks.values()):
        raise AssertionError(f"{name} batch {batch}: disagrees with vmap(grad): {checks}")
    skipped: dict[str, str] = {}
    for label, build in (("opacus", opacus_grads), ("backpack", backpack_grads)):
        try:
            run = build(case)
            if run is None:
                skipped[label] = "not installed or no support for this model"
            elif close(run(), ref):
                methods[label] = run
            else:
                skipped[label] = "disagrees with vmap(grad)"
        except Exception as e:  # a baseline that cannot run this model is skipped, not fatal
            skipped[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    # interleave the methods over the rounds so that load from other processes hits all alike
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for k, fn in methods.items():
            times[k].append(median_seconds(fn, repeats=3, warmup=1))
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = {k: min(v) * 1e3 for k, v in times.items()}
    return {
        "model": name,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "ms": ms,
        "best_ms": best,
        "ratio_to_backward": {k: v / ms["backward"] for k, v in ms.items()},
        "best_ratio_to_backward": {k: v / best["backward"] for k, v in best.items()},
        "speedup_over_vmap_grad": {k: ms["vmap(grad)"] / v for k, v in ms.items()},
        "best_speedup_over_vmap_grad": {k: best["vmap(grad)"] / v for k, v in best.items()},
        "skipped": skipped,
    }


def _rss_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process from /proc, in KiB (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_child(name: str, batch: int, chunk: int | None) -> None:
    """In a fresh process: peak RSS growth of one per_sample_grads call (printed as JSON)."""
    model, loss_fn, x, y = make_case(name, batch)
    hodfunc.per_sample_grads(model, loss_fn, x[:2], y[:2])  # warm up imports and kernels
    try:  # reset the high-water mark to the current RSS (Linux), so the peak is this call's
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = hodfunc.per_sample_grads(model, loss_fn, x, y, chunk_size=chunk)
    after = _rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result_mb = sum(t.numel() * t.element_size() for t in result.values()) / 2**20
    print(json.dumps({"peak_growth_mb": (after - before) / 1024, "result_mb": result_mb}))


def allocator_child(name: str, batch: int, tune: bool, repeats: int) -> None:
    """In a fresh process: the recipe and per_sample_grads as ratios to one backward."""
    if tune:
        hodfunc.tune_cpu_allocator()
    case = make_case(name, batch)
    model, loss_fn, x, y = case
    methods: dict[str, Callable[[], object]] = {
        "backward": batched_backward(case),
        "vmap(grad)": recipe(case),
        "per_sample_grads": lambda: hodfunc.per_sample_grads(model, loss_fn, x, y),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for k, fn in methods.items():
            times[k].append(median_seconds(fn, repeats=3, warmup=1))
    ms = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
    print(
        json.dumps({"ms": ms, "ratio_to_backward": {k: v / ms["backward"] for k, v in ms.items()}})
    )


ATTRIBUTION_MODELS = ("mlp", "cnn", "transformer")
ProjectionKind = Literal["gaussian", "rademacher", "kronecker"]
KINDS: tuple[ProjectionKind, ...] = ("kronecker", "rademacher", "gaussian")


def _second_batch(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Another batch of the same size for the dot products (the samples paired differently)."""
    return x.roll(1, 0), y.roll(1, 0)


def attribution_methods(
    name: str, batch: int, dim: int
) -> tuple[dict[str, Callable[[], object]], dict[str, bool]]:
    """The attribution methods of one model, each checked against its baseline first."""
    model, loss_fn, x, y = make_case(name, batch)
    x2, y2 = _second_batch(x, y)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    mats = {
        kind: {k: hodfunc.projection_matrix(k, s, dim=dim, kind=kind) for k, s in shapes.items()}
        for kind in KINDS
    }
    buf_a = hodfunc.per_sample_grads(model, loss_fn, x, y)
    buf_b = hodfunc.per_sample_grads(model, loss_fn, x2, y2)

    def materialize() -> dict[str, Tensor]:
        return hodfunc.per_sample_grads(model, loss_fn, x, y, out=buf_a)

    def then_project(kind: ProjectionKind, generate: bool) -> Callable[[], Tensor]:
        def run() -> Tensor:
            g = materialize()
            total = torch.zeros(batch, dim)
            for k, t in g.items():
                r = (
                    hodfunc.projection_matrix(k, shapes[k], dim=dim, kind=kind)
                    if generate
                    else mats[kind][k]
                )
                total += t.reshape(batch, -1) @ r.T
            return total

        return run

    def then_multiply() -> Tensor:
        ga = materialize()
        gb = hodfunc.per_sample_grads(model, loss_fn, x2, y2, out=buf_b)
        return sum(
            (ga[k].reshape(batch, -1) @ gb[k].reshape(batch, -1).T for k in ga),
            start=torch.zeros(batch, batch),
        )

    def project(kind: ProjectionKind) -> Callable[[], Tensor]:
        return lambda: hodfunc.per_sample_grad_projections(model, loss_fn, x, y, dim=dim, kind=kind)

    methods: dict[str, Callable[[], object]] = {"materialize": materialize}
    checks: dict[str, bool] = {}
    for kind in KINDS:
        want = then_project(kind, False)()
        got = project(kind)()
        checks[kind] = bool((got - want).abs().max() <= 1e-5 * want.abs().max())
        methods[f"materialize+project {kind} (R given)"] = then_project(kind, False)
        methods[f"materialize+project {kind} (R drawn)"] = then_project(kind, True)
        methods[f"project {kind}"] = project(kind)
    want = then_multiply()
    got = hodfunc.per_sample_grad_dots(model, loss_fn, (x, y), (x2, y2))
    checks["dots"] = bool((got - want).abs().max() <= 1e-5 * want.abs().max())
    methods["materialize+multiply"] = then_multiply
    methods["dots"] = lambda: hodfunc.per_sample_grad_dots(model, loss_fn, (x, y), (x2, y2))
    return methods, checks


def attribution_case(name: str, batch: int, dim: int, repeats: int) -> dict[str, object]:
    """Time the attribution methods of one model (interleaved rounds, medians in ms)."""
    methods, checks = attribution_methods(name, batch, dim)
    if not all(checks.values()):
        raise AssertionError(f"{name}: projections or dots disagree with the baseline: {checks}")
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for k, fn in methods.items():
            times[k].append(median_seconds(fn, repeats=1, warmup=1))
    skipped = {}
    if importlib.util.find_spec("captum") is None:
        skipped["captum TracInCPFast"] = "captum is not installed"
    return {
        "model": name,
        "batch": batch,
        "dim": dim,
        "ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
        "checks": checks,
        "skipped": skipped,
    }


def attribution_memory_child(name: str, batch: int, dim: int, method: str) -> None:
    """In a fresh process: peak RSS growth of one attribution method (printed as JSON)."""
    methods, _ = attribution_methods(name, batch, dim)
    fn = methods[method]
    fn()  # warm up kernels and the allocator
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = _rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = make_case(name, batch)[0]
    psg_mb = sum(p.numel() for p in model.parameters()) * batch * 4 / 2**20
    print(json.dumps({"peak_growth_mb": (after - before) / 1024, "per_sample_grads_mb": psg_mb}))


def attribution_main(threads: list[str], repeats: int, dim: int) -> None:
    """The attribution tables: time as a ratio to materialize-then-X, and peak memory."""
    rows = []
    memory = []
    for name in ATTRIBUTION_MODELS:
        rows.append(child([*threads, "--attribution-case", name, "128", str(dim), str(repeats)]))
        for method in ("materialize", *(f"project {k}" for k in KINDS), "dots"):
            res = child([*threads, "--attribution-memory", name, "128", str(dim), method])
            memory.append({"model": name, "method": method, **res})
        print(f"done attribution {name}", file=sys.stderr)
    print(f"\nBatch 128, dim {dim}: ms, and speed-up of hodfunc over materialize-then-X")
    header = ["model", "psg ms"]
    cells = []
    for r in rows:
        ms: dict[str, float] = r["ms"]  # type: ignore[assignment]
        line = [str(r["model"]), f"{ms['materialize']:.1f}"]
        for kind in KINDS:
            given, drawn = (ms[f"materialize+project {kind} (R {w})"] for w in ("given", "drawn"))
            mine = ms[f"project {kind}"]
            line.append(f"{mine:.1f} ms: {given / mine:.2f}x / {drawn / mine:.2f}x")
        line.append(f"{ms['dots']:.1f} ms: {ms['materialize+multiply'] / ms['dots']:.2f}x")
        cells.append(line)
    header += [f"project {k} (vs R given / R drawn)" for k in KINDS] + ["dots"]
    print(table(header, cells))
    print("\nPeak RSS growth (MB) of one call, and as a fraction of the per-sample gradients")
    print(
        table(
            ["model", "method", "peak MB", "per-sample grads MB", "fraction"],
            [
                [
                    str(m["model"]),
                    str(m["method"]),
                    f"{m['peak_growth_mb']:.1f}",
                    f"{m['per_sample_grads_mb']:.1f}",
                    f"{float(m['peak_growth_mb']) / float(m['per_sample_grads_mb']):.3f}",  # type: ignore[arg-type]
                ]
                for m in memory
            ],
        )
    )
    for r in rows:
        for k, why in r["skipped"].items():  # type: ignore[attr-defined]
            print(f"skipped {k}: {why}")
    print(f"\nwrote {write_json('bench_per_sample_attribution', [*rows, {'memory': memory}])}")


def child(args: list[str]) -> dict[str, object]:
    """Run this script in a subprocess with ``args`` and parse its last line as JSON."""
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="batch 128 only, fewer repeats")
    parser.add_argument(
        "--threads", default="1,2", help="comma-separated torch.set_num_threads values to run"
    )
    parser.add_argument("--rounds", type=int, default=0, help="interleaved timing rounds")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--case", nargs=4, metavar=("MODEL", "BATCH", "THREADS", "ROUNDS"))
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "BATCH", "CHUNK"))
    parser.add_argument("--allocator-child", nargs=4, metavar=("MODEL", "BATCH", "TUNE", "REPS"))
    parser.add_argument("--attribution", action="store_true", help="projections and dots")
    parser.add_argument("--dim", type=int, default=256, help="projection dimension")
    parser.add_argument("--attribution-case", nargs=4, metavar=("MODEL", "BATCH", "DIM", "REPS"))
    parser.add_argument("--attribution-memory", nargs=4, metavar=("MODEL", "BATCH", "DIM", "WHAT"))
    args = parser.parse_args()
    torch.set_num_threads(int(args.threads.split(",")[0]))
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus
    warnings.filterwarnings("ignore", message="There is a performance drop")  # vmap of SDPA
    if args.case:
        m, b, t, r = args.case
        torch.set_num_threads(int(t))
        print(json.dumps(bench_case(m, int(b), int(r))))
        return
    if args.memory_child:
        m, b, c = args.memory_child
        memory_child(m, int(b), None if c == "none" else int(c))
        return
    if args.allocator_child:
        m, b, t, r = args.allocator_child
        allocator_child(m, int(b), t == "1", int(r))
        return
    if args.attribution_case:
        m, b, d, r = args.attribution_case
        print(json.dumps(attribution_case(m, int(b), int(d), int(r))))
        return
    if args.attribution_memory:
        m, b, d, what = args.attribution_memory
        attribution_memory_child(m, int(b), int(d), what)
        return
    if args.attribution:
        quiet = str(min(int(t) for t in args.threads.split(",")))
        attribution_main(["--threads", quiet], args.rounds or 3, args.dim)
        return
    repeats = args.rounds or (3 if args.quick else 7)
    batches = [128] if args.quick else [32, 128]
    rows: list[dict[str, object]] = []
    for n_threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(n_threads)
        for name in args.models.split(","):
            for batch in batches:
                # each configuration in a fresh process: glibc's mmap threshold adapts to the
                # sizes freed before, so one model's timings would depend on the previous one's
                rows.append(child(["--case", name, str(batch), str(n_threads), str(repeats)]))
                print(f"done {name} {batch} threads={n_threads}", file=sys.stderr)
        part = [r for r in rows if r["threads"] == n_threads]
        labels = sorted({k for r in part for k in r["ratio_to_backward"]}, key=_order)  # type: ignore[attr-defined]
        print(
            f"\n{n_threads} thread(s). Time as a multiple of one batched backward, median of "
            f"{repeats} interleaved rounds (best round in brackets); backward in ms"
        )
        print(table(["model", "B", "backward ms", *labels], [_cells(r, labels) for r in part]))
    if args.models != ",".join(MODELS):  # a partial run: timings only
        print(f"\nwrote {write_json('bench_per_sample_partial', rows)}")
        return
    threads = ["--threads", str(min(int(t) for t in args.threads.split(",")))]  # the quietest
    memory: list[dict[str, object]] = []
    for name in ("mlp", "cnn", "transformer"):
        for chunk in ("none", "32", "8"):
            res = child([*threads, "--memory-child", name, "128", chunk])
            memory.append({"model": name, "batch": 128, "chunk_size": chunk, **res})
    print("\nPeak RSS growth of per_sample_grads at batch 128 (MB), result size included")
    print(
        table(
            ["model", "chunk_size", "result MB", "peak growth MB", "beyond result MB"],
            [
                [
                    str(m["model"]),
                    str(m["chunk_size"]),
                    f"{m['result_mb']:.0f}",
                    f"{m['peak_growth_mb']:.0f}",
                    f"{float(m['peak_growth_mb']) - float(m['result_mb']):.0f}",  # type: ignore[arg-type]
                ]
                for m in memory
            ],
        )
    )
    alloc = {
        tune: child([*threads, "--allocator-child", "mlp", "128", tune, str(repeats)])
        for tune in ("0", "1")
    }
    print("\nMLP batch 128, each in a fresh process: ratio to one batched backward")
    print(
        table(
            ["tune_cpu_allocator()", "backward ms", "vmap(grad)", "per_sample_grads"],
            [
                [
                    "no" if t == "0" else "yes",
                    f"{a['ms']['backward']:.1f}",  # type: ignore[index]
                    f"{a['ratio_to_backward']['vmap(grad)']:.2f}",  # type: ignore[index]
                    f"{a['ratio_to_backward']['per_sample_grads']:.2f}",  # type: ignore[index]
                ]
                for t, a in alloc.items()
            ],
        )
    )
    path = write_json(
        "bench_per_sample",
        [*rows, {"memory": memory}, {"allocator": alloc}],
    )
    print(f"\nwrote {path}")


def _cells(r: dict[str, object], labels: list[str]) -> list[str]:
    """One table row: median ratio with the best-round ratio in brackets."""
    med: dict[str, float] = r["ratio_to_backward"]  # type: ignore[assignment]
    best: dict[str, float] = r["best_ratio_to_backward"]  # type: ignore[assignment]
    ms: dict[str, float] = r["ms"]  # type: ignore[assignment]
    cells = [f"{med[k]:.2f} ({best[k]:.2f})" if k in med else "-" for k in labels]
    return [str(r["model"]), str(r["batch"]), f"{ms['backward']:.1f}", *cells]


def _order(label: str) -> int:
    order = [
        "backward",
        "vmap(grad)",
        "opacus",
        "backpack",
        "per_sample_grads",
        "per_sample_grads(out=)",
        "per_sample_grad_norms",
        "clipped_grad_sum",
    ]
    return order.index(label) if label in order else len(order)


if __name__ == "__main__":
    main()
