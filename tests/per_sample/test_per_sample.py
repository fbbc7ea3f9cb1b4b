"""per_sample_grads, per_sample_grad_norms and clipped_grad_sum against a loop of one-sample
backward passes (``hodfunc.imperative.per_sample_grads``), plus purity, chunking, out= reuse,
the fallback decisions and error messages."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn import functional

import hodfunc
from hodfunc import imperative
from hodfunc._per_sample import _capture

B = 5
Batch = tuple[Tensor, ...]
LossFn = Callable[..., Tensor]


class SelfAttention(nn.Module):
    """MultiheadAttention on (B, T, E), mean-pooled, then a Linear head."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        h = self.mha(x, x, x, need_weights=False)[0]
        if not self.batch_first:
            h = h.transpose(0, 1)
        out: Tensor = self.head(h.mean(1))
        return out


class Encoder(nn.Module):
    """Embedding, TransformerEncoderLayer (batch-first or sequence-first), LayerNorm, head."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(13, 8, padding_idx=0)
        self.layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=batch_first)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        h = self.layer(h.transpose(0, 1)).transpose(0, 1) if not self.batch_first else self.layer(h)
        out: Tensor = self.head(self.norm(h).mean(1))
        return out


class Tied(nn.Module):
    """An embedding whose weight is also the output layer (a Linear rule must not claim it)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, tokens: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.embed(tokens))).mean(1)
        return functional.linear(h, self.embed.weight)


class Twice(nn.Module):
    """One Linear applied twice in a row, an in-place ReLU on its output, and a raw Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.randn(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu_(self.lin(x))
        h = torch.tanh(self.lin(h)) * self.scale
        out: Tensor = self.head(h)
        return out


class Centred(nn.Module):
    """Mixes the samples of a batch (subtracts the batch mean): the fast path must notice."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.lin(x - x.mean(0, keepdim=True))
        return out


def _ce() -> LossFn:
    return functional.cross_entropy


def _case(name: str) -> tuple[nn.Module, LossFn, Batch]:
    """Model, loss and batch for each module type in the issue's list (and the tricky ones)."""
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (B,))
    if name == "mlp":
        m: nn.Module = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
        return m, _ce(), (torch.randn(B, 6), labels)
    if name == "conv2d":
        m = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 3, (3, 2), stride=2, dilation=(1, 2), padding="valid"),
            nn.Flatten(),
            nn.Linear(3 * 3 * 3, 3),
        )
        return m, _ce(), (torch.randn(B, 2, 8, 8), labels)
    if name == "conv1d_same_reflect_groupnorm":
        m = nn.Sequential(
            nn.Conv1d(3, 4, 4, padding="same", padding_mode="reflect"),
            nn.GroupNorm(2, 4),
            nn.Conv1d(4, 4, 3, padding="same", dilation=2),
            nn.Flatten(),
            nn.Linear(4 * 9, 2),
        )
        return m, functional.mse_loss, (torch.randn(B, 3, 9), torch.randn(B, 2))
    if name == "conv3d":
        m = nn.Sequential(
            nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), nn.Flatten(), nn.Linear(3 * 3 * 2 * 3, 3)
        )
        return m, _ce(), (torch.randn(B, 2, 4, 4, 4), labels)
    if name == "batchnorm_eval":
        bn = nn.BatchNorm1d(6)
        assert bn.running_mean is not None
        assert bn.running_var is not None
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        m = nn.Sequential(nn.Linear(4, 6), bn, nn.Tanh(), nn.Linear(6, 3))
        return m.eval(), _ce(), (torch.randn(B, 4), labels)
    if name == "layernorm_rmsnorm_seq":
        m = nn.Sequential(
            nn.Linear(4, 6), nn.LayerNorm(6), nn.RMSNorm(6), nn.Flatten(), nn.Linear(18, 3)
        )
        return m, _ce(), (torch.randn(B, 3, 4), labels)
    if name == "embedding":
        m = nn.Sequential(nn.Embedding(9, 4, padding_idx=2), nn.Flatten(), nn.Linear(4 * 6, 3))
        return m, _ce(), (torch.randint(0, 9, (B, 6)), labels)
    if name == "mha":
        return SelfAttention(), _ce(), (torch.randn(B, 4, 8), labels)
    if name == "mha_seq_first":
        return SelfAttention(batch_first=False), _ce(), (torch.randn(B, 4, 8), labels)
    if name == "transformer":
        return Encoder(batch_first=True).eval(), _ce(), (torch.randint(0, 13, (B, 6)), labels)
    if name == "transformer_seq_first":  # sequence length == batch size: dim 0 is not the batch
        return Encoder(batch_first=False).eval(), _ce(), (torch.randint(0, 13, (B, B)), labels)
    if name == "tied":
        return (
            Tied(),
            functional.cross_entropy,
            (torch.randint(0, 7, (B, 3)), torch.randint(0, 7, (B,))),
        )
    if name == "twice":
        return Twice(), functional.mse_loss, (torch.randn(B, 4), torch.randn(B, 2))
    if name == "centred":
        return Centred(), functional.mse_loss, (torch.randn(B, 3), torch.randn(B, 2))
    if name == "weighted_loss":
        m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

        def loss(out: Tensor, y: Tensor, w: Tensor) -> Tensor:
            return (w * (out - y).square().sum(-1)).sum()

        return m, loss, (torch.randn(B, 3), torch.randn(B, 2), torch.rand(B))
    raise ValueError(name)


CASES = [
    "mlp",
    "conv2d",
    "conv1d_same_reflect_groupnorm",
    "conv3d",
    "batchnorm_eval",
    "layernorm_rmsnorm_seq",
    "embedding",
    "mha",
    "mha_seq_first",
    "transformer",
    "transformer_seq_first",
    "tied",
    "twice",
    "centred",
    "weighted_loss",
]

TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def _to(dtype: torch.dtype, name: str) -> tuple[nn.Module, LossFn, Batch]:
    model, loss, batch = _case(name)
    model = model.to(dtype)
    return model, loss, tuple(b.to(dtype) if b.is_floating_point() else b for b in batch)


def _assert_close(got: Tensor, want: Tensor, rtol: float, what: str) -> None:
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert got.shape == want.shape, what
    assert err <= rtol * max(scale, 1e-12), f"{what}: error {err:.3e}, scale {scale:.3e}"


def _loop_reference(
    model: nn.Module, loss: LossFn, batch: Batch, max_norm: float
) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
    grads = imperative.per_sample_grads(model, loss, *batch)
    n = batch[0].shape[0]
    norms = torch.stack([g.reshape(n, -1).square().sum(1) for g in grads.values()]).sum(0).sqrt()
    w = torch.clamp(max_norm / norms, max=1.0)
    clipped = {k: torch.einsum("b,b...->...", w, g) for k, g in grads.items()}
    return grads, norms, clipped


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", CASES)
def test_all_three_match_a_loop_of_one_sample_backward_passes(
    name: str, dtype: torch.dtype
) -> None:
    model, loss, batch = _to(dtype, name)
    ref, ref_norms, _ = _loop_reference(model, loss, batch, 1.0)
    max_norm = float(ref_norms.median())  # some samples clipped, some not
    _, _, ref_clipped = _loop_reference(model, loss, batch, max_norm)
    rtol = TOL[dtype]
    got = hodfunc.per_sample_grads(model, loss, *batch)
    assert list(got) == list(ref)
    for k in ref:
        _assert_close(got[k], ref[k], rtol, f"per_sample_grads[{k}]")
        assert got[k].dtype == dtype
    _assert_close(hodfunc.per_sample_grad_norms(model, loss, *batch), ref_norms, rtol, "norms")
    clipped = hodfunc.clipped_grad_sum(model, loss, *batch, max_norm=max_norm)
    assert list(clipped) == list(ref)
    for k in ref:
        _assert_close(clipped[k], ref_clipped[k], rtol, f"clipped_grad_sum[{k}]")


# Which parameters the batched pass must claim (None: all); the rest fall back to vmap(grad).
FAST: dict[str, set[str] | None] = {
    "mlp": None,
    "conv2d": None,
    "conv3d": None,
    "embedding": None,
    "layernorm_rmsnorm_seq": None,
    "conv1d_same_reflect_groupnorm": None,
    "batchnorm_eval": {"0.weight", "0.bias", "3.weight", "3.bias"},
    "mha": None,
    "mha_seq_first": None,
    "transformer": None,
    "transformer_seq_first": None,
    "tied": {"mix.weight", "mix.bias"},
    "twice": {"lin.weight", "lin.bias", "head.weight", "head.bias"},  # in-place ReLU, called twice
    "centred": set(),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FAST))
def test_the_batched_pass_claims_exactly_the_parameters_it_can(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, loss, batch = _case(name)
    fell_back: list[str] = []
    original = _capture.vmap_grads

    def spy(ctx: _capture.Context, names: list[str], *args: object) -> dict[str, Tensor]:
        fell_back.extend(names)
        return original(ctx, names, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_capture, "vmap_grads", spy)
    hodfunc.per_sample_grads(model, loss, *batch)
    every = {k for k, p in model.named_parameters() if p.requires_grad}
    fast = FAST[name]
    fast = every if fast is None else fast
    assert set(fell_back) == every - fast


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "params": {
            k: (p, p.detach().clone(), p.requires_grad) for k, p in model.named_parameters()
        },
        "buffers": {k: b.clone() for k, b in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
    }


@pytest.mark.parametrize("name", ["mlp", "transformer", "batchnorm_eval", "twice"])
def test_purity_nothing_the_caller_owns_changes(name: str) -> None:
    model, loss, batch = _case(name)
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)
    before = _snapshot(model)
    inputs = [b.clone() for b in batch]
    rng = torch.random.get_rng_state()
    out = hodfunc.per_sample_grads(model, loss, *batch, chunk_size=2)
    hodfunc.per_sample_grads(model, loss, *batch, out=out)
    hodfunc.per_sample_grad_norms(model, loss, *batch, chunk_size=3)
    hodfunc.clipped_grad_sum(model, loss, *batch, max_norm=0.5)
    assert torch.equal(torch.random.get_rng_state(), rng)
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    for k, (p, value, flag) in before["params"].items():  # type: ignore[attr-defined]
        q, _, flag_after = after["params"][k]  # type: ignore[index]
        assert q is p
        assert torch.equal(p, value)
        assert flag_after == flag
        assert p.grad is None
    for k, b in before["buffers"].items():  # type: ignore[attr-defined]
        assert torch.equal(after["buffers"][k], b)  # type: ignore[index]
    for m in model.modules():
        assert not m._forward_hooks
        assert not m._backward_hooks
    for b, c in zip(batch, inputs, strict=True):
        assert torch.equal(b, c)
        assert not b.requires_grad
    assert frozen.requires_grad is False
    assert "0.weight" not in out
    assert not any(n.endswith("embed.weight") for n in out)


@pytest.mark.parametrize("name", ["mlp", "conv2d", "transformer", "embedding"])
def test_chunk_size_and_out_give_the_same_result(name: str) -> None:
    model, loss, batch = _to(torch.float64, name)
    full = hodfunc.per_sample_grads(model, loss, *batch)
    buffers = {k: torch.full_like(v, float("nan")) for k, v in full.items()}
    for chunk in (1, 2, B, 100):
        got = hodfunc.per_sample_grads(model, loss, *batch, chunk_size=chunk, out=buffers)
        assert all(got[k] is buffers[k] for k in full)
        for k in full:
            _assert_close(got[k], full[k], 1e-12, f"chunk {chunk} {k}")
        norms = hodfunc.per_sample_grad_norms(model, loss, *batch, chunk_size=chunk)
        want = torch.stack([g.reshape(B, -1).square().sum(1) for g in full.values()]).sum(0).sqrt()
        _assert_close(norms, want, 1e-12, f"norms chunk {chunk}")


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 6),
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    seq=st.one_of(st.none(), st.integers(1, 3)),
    chunk=st.one_of(st.none(), st.integers(1, 4)),
)
def test_random_mlps_and_sequences_match_the_loop(
    batch: int, widths: list[int], seq: int | None, chunk: int | None
) -> None:
    torch.manual_seed(batch * 7 + len(widths))
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers).double()
    shape = (batch, widths[0]) if seq is None else (batch, seq, widths[0])
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randn((*shape[:-1], widths[-1]), dtype=torch.float64)
    ref, norms, clipped = _loop_reference(model, functional.mse_loss, (x, y), 0.1)
    got = hodfunc.per_sample_grads(model, functional.mse_loss, x, y, chunk_size=chunk)
    for k in ref:
        _assert_close(got[k], ref[k], 1e-10, k)
    got_norms = hodfunc.per_sample_grad_norms(model, functional.mse_loss, x, y, chunk_size=chunk)
    _assert_close(got_norms, norms, 1e-10, "norms")
    got_clipped = hodfunc.clipped_grad_sum(model, functional.mse_loss, x, y, max_norm=0.1)
    for k in ref:
        _assert_close(got_clipped[k], clipped[k], 1e-10, k)


def test_a_mean_loss_is_each_samples_own_loss_not_the_batch_mean() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
    grads = hodfunc.per_sample_grads(model, functional.mse_loss, x, y)["weight"]
    # loss_i = (x_i . w)^2, gradient 2 (x_i . w) x_i; a batch mean would halve it
    assert torch.equal(grads, torch.tensor([[[2.0, 0.0]], [[0.0, 8.0]]]))


def _mlp() -> tuple[nn.Module, LossFn, Tensor, Tensor]:
    return nn.Linear(3, 2), functional.mse_loss, torch.randn(4, 3), torch.randn(4, 2)


def test_out_must_fit_with_a_message_that_says_how() -> None:
    model, loss, x, y = _mlp()
    good = hodfunc.per_sample_grads(model, loss, x, y)
    api = "hodfunc.per_sample_grads"
    with pytest.raises(
        hodfunc.ArgumentError, match=rf"{api}: out must have exactly one entry.*missing \['bias'\]"
    ):
        hodfunc.per_sample_grads(model, loss, x, y, out={"weight": good["weight"]})
    with pytest.raises(
        hodfunc.ShapeError,
        match=r"out\['weight'\] must have shape \(3, 2, 3\).*got shape \(4, 2, 3\)",
    ):
        hodfunc.per_sample_grads(model, loss, x[:3], y[:3], out=good)
    with pytest.raises(hodfunc.ShapeError, match=r"dtype torch.float32.*dtype torch.float64"):
        hodfunc.per_sample_grads(model, loss, x, y, out={**good, "bias": good["bias"].double()})
    with pytest.raises(hodfunc.ArgumentError, match=r"must be contiguous.*contiguous=False"):
        hodfunc.per_sample_grads(
            model,
            loss,
            x,
            y,
            out={**good, "weight": good["weight"].transpose(1, 2).contiguous().transpose(1, 2)},
        )
    with pytest.raises(hodfunc.ArgumentError, match=r"requires_grad=True"):
        hodfunc.per_sample_grads(
            model, loss, x, y, out={**good, "bias": good["bias"].clone().requires_grad_()}
        )
    with pytest.raises(hodfunc.ArgumentTypeError, match=r"out must be a dict.*got list"):
        hodfunc.per_sample_grads(model, loss, x, y, out=[good["weight"]])  # type: ignore[arg-type]
    with pytest.raises(
        hodfunc.ArgumentError, match=r"chunk_size must be None or an int >= 1, got 0"
    ):
        hodfunc.per_sample_grads(model, loss, x, y, chunk_size=0)
    with pytest.raises(
        hodfunc.ArgumentError, match=r"chunk_size must be None or an int >= 1, got 0"
    ):
        hodfunc.per_sample_grad_norms(model, loss, x, y, chunk_size=0)  # fmt: skip


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_max_norm_must_be_positive_and_finite(bad: float) -> None:
    model, loss, x, y = _mlp()
    with pytest.raises(
        hodfunc.ArgumentError,
        match=r"hodfunc.clipped_grad_sum: max_norm must be a finite number > 0",
    ):
        hodfunc.clipped_grad_sum(model, loss, x, y, max_norm=bad)


def test_max_norm_must_be_a_number() -> None:
    model, loss, x, y = _mlp()
    with pytest.raises(hodfunc.ArgumentTypeError, match=r"max_norm must be a number > 0, got True"):
        hodfunc.clipped_grad_sum(model, loss, x, y, max_norm=True)


@pytest.mark.parametrize(
    "fn",
    [
        hodfunc.per_sample_grads,
        hodfunc.per_sample_grad_norms,
        lambda *a: hodfunc.clipped_grad_sum(*a, max_norm=1.0),
    ],
    ids=["grads", "norms", "clipped"],
)
def test_mismatched_batch_sizes_and_training_batchnorm_are_refused(
    fn: Callable[..., object],
) -> None:
    model, loss, x, y = _mlp()
    with pytest.raises(hodfunc.ShapeError, match=r"same leading batch size, got \[4, 3\]"):
        fn(model, loss, x, y[:3])
    bn = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with pytest.raises(
        hodfunc.NonFunctionalModuleError, match=r"BatchNorm in training mode.*model.eval\(\)"
    ):
        fn(bn, loss, x, y)
    emb = nn.Sequential(nn.Embedding(5, 2, max_norm=1.0), nn.Flatten())
    with pytest.raises(
        hodfunc.NonFunctionalModuleError, match=r"max_norm renormalises.*Set max_norm=None"
    ):
        fn(emb, loss, torch.zeros(4, 1, dtype=torch.long), y)


def test_a_loss_that_is_not_one_number_per_sample_is_refused() -> None:
    model, _, x, y = _mlp()
    with pytest.raises(
        hodfunc.ShapeError, match=r"loss_fn must return a single number per sample.*reduction"
    ):
        hodfunc.per_sample_grads(model, lambda o, t: (o - t).square(), x, y)


def test_model_output_must_keep_the_batch_dimension() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Flatten(0))
    with pytest.raises(
        hodfunc.ShapeError, match=r"keep the batch dimension 4 first, got shape \(8,\)"
    ):
        hodfunc.per_sample_grads(model, lambda o: o.sum(), torch.randn(4, 3))


def test_tune_cpu_allocator_is_explicit_and_validated() -> None:
    with pytest.raises(
        hodfunc.ArgumentError, match=r"keep_freed_bytes must be an int >= 0, got -1"
    ):
        hodfunc.tune_cpu_allocator(keep_freed_bytes=-1)
    code = "import hodfunc; print(hodfunc.tune_cpu_allocator(keep_freed_bytes=1 << 30))"
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "{'M_MMAP_MAX': 0, 'M_TRIM_THRESHOLD': 1073741824}"


@pytest.mark.parametrize("name", ["conv2d", "transformer", "centred"])
def test_imperative_twins_agree_with_the_functional_path(name: str) -> None:
    model, loss, batch = _to(torch.float64, name)
    norms = imperative.per_sample_grad_norms(model, loss, *batch)
    _assert_close(hodfunc.per_sample_grad_norms(model, loss, *batch), norms, 1e-10, "norms")
    max_norm = float(norms.median())
    want = imperative.clipped_grad_sum(model, loss, *batch, max_norm=max_norm)
    got = hodfunc.clipped_grad_sum(model, loss, *batch, max_norm=max_norm)
    for k in want:
        _assert_close(got[k], want[k], 1e-10, k)
    with pytest.raises(hodfunc.ArgumentError, match=r"imperative.clipped_grad_sum: max_norm"):
        imperative.clipped_grad_sum(model, loss, *batch, max_norm=-1.0)


def test_a_module_whose_output_a_hook_rewrites_falls_back() -> None:
    model, loss, x, y = _mlp()
    handle = model.register_forward_hook(lambda m, a, out: 3.0 * out)
    try:
        got = hodfunc.per_sample_grads(model, loss, x, y)
        want = imperative.per_sample_grads(model, loss, x, y)
        norms = hodfunc.per_sample_grad_norms(model, loss, x, y)
        assert len(model._forward_hooks) == 1
    finally:
        handle.remove()
    for k in want:
        _assert_close(got[k], want[k], 1e-5, k)
    want_norms = torch.cat([want["weight"].flatten(1), want["bias"]], 1).norm(dim=1)
    _assert_close(norms, want_norms, 1e-5, "norms")
