"""per_sample_grad_dots and per_sample_grad_projections against the explicit products of a loop
of one-sample backward passes (``hodfunc.imperative.per_sample_grads``) with the same
``projection_matrix``; chunks, determinism, no materialization where a factored form exists,
purity and errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

import hodfunc
from hodfunc import imperative
from hodfunc._per_sample import _capture, _sketch
from hodfunc._per_sample._layers import Factors
from hodfunc._per_sample._sketch import ProjectionKind

from .test_attention import Encoder, _tokens
from .test_attention import _case as _attention_case
from .test_per_sample import _to

LossFn = Callable[..., Tensor]
Batch = tuple[Tensor, ...]
KINDS: list[ProjectionKind] = ["gaussian", "rademacher", "kronecker"]
CASES = [
    "mlp",
    "layernorm_rmsnorm_seq",
    "conv2d",
    "embedding",
    "batchnorm_eval",
    "tied",
    "encoder",
    "mha_cross_kv",
]


def _model(name: str, dtype: torch.dtype) -> tuple[nn.Module, LossFn, Batch, Batch]:
    """A model, its loss and two batches (of 5 and 3 samples) of one case."""
    if name in ("encoder", "mha_cross_kv"):
        model = _attention_case(name).to(dtype)
        tokens = _tokens(name)
        labels = torch.randint(0, 3, (tokens.shape[0],))
        return model, functional.cross_entropy, (tokens, labels), (tokens[:3].flip(1), labels[:3])
    model, loss, batch = _to(dtype, name)
    torch.manual_seed(5)
    other = tuple(
        (b[:3] + 0.5 * torch.randn_like(b[:3])) if b.is_floating_point() else b[:3].flip(0)
        for b in batch
    )
    return model, loss, batch, other


def _flat(grads: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)


def _close(got: Tensor, want: Tensor, rtol: float, what: str) -> None:
    scale = float(want.abs().max())
    err = float((got - want).abs().max())
    assert got.shape == want.shape, what
    assert err <= rtol * max(scale, 1e-12), f"{what}: error {err:.3e}, scale {scale:.3e}"


def _explicit_projection(
    grads: dict[str, Tensor], dim: int, kind: ProjectionKind, seed: int, dtype: torch.dtype
) -> Tensor:
    total = torch.zeros((), dtype=dtype)
    for k, g in grads.items():
        r = hodfunc.projection_matrix(k, g.shape[1:], dim=dim, kind=kind, seed=seed, dtype=dtype)
        total = total + g.reshape(g.shape[0], -1) @ r.T
    return total


@pytest.mark.parametrize("name", CASES)
def test_dots_and_projections_match_the_explicit_products(name: str) -> None:
    model, loss, a, b = _model(name, torch.float64)
    grads = imperative.per_sample_grads(model, loss, *a)
    ga = _flat(grads)
    gb = _flat(imperative.per_sample_grads(model, loss, *b))
    _close(hodfunc.per_sample_grad_dots(model, loss, a, b), ga @ gb.T, 1e-10, "dots")
    _close(hodfunc.per_sample_grad_dots(model, loss, a), ga @ ga.T, 1e-10, "gram")
    chunked = hodfunc.per_sample_grad_dots(model, loss, a, b, chunk_size=2)
    _close(chunked, ga @ gb.T, 1e-10, "dots, chunk_size=2")
    for kind in KINDS:
        want = _explicit_projection(grads, 12, kind, 7, torch.float64)
        got = hodfunc.per_sample_grad_projections(model, loss, *a, dim=12, kind=kind, seed=7)
        _close(got, want, 1e-10, f"{kind} projections")
        again = hodfunc.per_sample_grad_projections(
            model, loss, *a, dim=12, kind=kind, seed=7, chunk_size=2
        )
        _close(again, got, 1e-12, f"{kind} projections, chunk_size=2")


@pytest.mark.parametrize("kind", KINDS)
def test_float32_projections_and_dots_agree_to_1e_5(kind: ProjectionKind) -> None:
    model, loss, a, b = _model("mlp", torch.float32)
    grads = hodfunc.per_sample_grads(model, loss, *a)
    want = _explicit_projection(grads, 16, kind, 0, torch.float32)
    got = hodfunc.per_sample_grad_projections(model, loss, *a, dim=16, kind=kind)
    _close(got, want, 1e-5, "float32 projections")
    gb = _flat(hodfunc.per_sample_grads(model, loss, *b))
    _close(hodfunc.per_sample_grad_dots(model, loss, a, b), _flat(grads) @ gb.T, 1e-5, "dots")


def test_projections_are_a_function_of_seed_name_and_shape() -> None:
    model, loss, a, _ = _model("mlp", torch.float32)
    first = hodfunc.per_sample_grad_projections(model, loss, *a, dim=8, seed=3)
    assert torch.equal(first, hodfunc.per_sample_grad_projections(model, loss, *a, dim=8, seed=3))
    assert not torch.equal(first, hodfunc.per_sample_grad_projections(model, loss, *a, dim=8))
    r = hodfunc.projection_matrix("0.weight", (5, 6), dim=8, seed=3)
    assert torch.equal(r, hodfunc.projection_matrix("0.weight", [5, 6], dim=8, seed=3))
    assert not torch.equal(r, hodfunc.projection_matrix("2.weight", (5, 6), dim=8, seed=3))
    rademacher = hodfunc.projection_matrix("w", (40,), dim=4, kind="rademacher")
    assert set(torch.unique(rademacher * 2).tolist()) == {-1.0, 1.0}
    # E[R^T R] = I: the projection keeps squared norms on average
    for kind, dim in (("gaussian", 4096), ("kronecker", 1 << 16)):  # kron: 256 x 256
        gram = hodfunc.projection_matrix("w", (3, 4), dim=dim, kind=kind)  # type: ignore[arg-type]
        gram = gram.T @ gram
        assert abs(float(gram.diagonal().mean()) - 1.0) < 0.1, kind
        assert float((gram - torch.diag(gram.diagonal())).abs().mean()) < 0.1, kind


@pytest.mark.parametrize("kind", KINDS[::2])
def test_linear_layers_are_never_materialized(
    kind: ProjectionKind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MLP (vectors) and, with kronecker, the encoder's projections (sequences) project
    their factors; nothing falls back to vmap(grad) either."""
    materialized: list[tuple[str, ...]] = []
    original = _sketch.weight_chunks

    def spy(f: Factors) -> object:
        materialized.append((f.kind, *map(str, _sketch.weight_shape(f))))
        return original(f)

    monkeypatch.setattr(_sketch, "weight_chunks", spy)
    monkeypatch.setattr(_capture, "vmap_grads", None)  # any fallback would fail
    model, loss, a, _ = _model("mlp", torch.float32)
    hodfunc.per_sample_grad_projections(model, loss, *a, dim=8, kind=kind)
    hodfunc.per_sample_grad_dots(model, loss, a)
    assert materialized == []
    if kind == "kronecker":
        encoder = Encoder(batch_first=True, norm_first=False, masks=True).eval()
        tokens = _tokens("encoder")
        labels = torch.zeros(tokens.shape[0], dtype=torch.long)
        hodfunc.per_sample_grad_projections(
            encoder, functional.cross_entropy, tokens, labels, dim=8, kind="kronecker"
        )
        assert all(k != "outer" for k, *_ in materialized)


def test_nothing_the_caller_owns_changes() -> None:
    model, loss, a, b = _model("encoder", torch.float32)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    rng = torch.random.get_rng_state()
    hodfunc.per_sample_grad_projections(model, loss, *a, dim=4, kind="gaussian", chunk_size=3)
    hodfunc.per_sample_grad_dots(model, loss, a, b, chunk_size=2)
    assert torch.equal(torch.random.get_rng_state(), rng)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k])
        assert p.grad is None
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_arguments_say_what_to_do() -> None:
    model, loss, a, _ = _model("mlp", torch.float32)
    api = "hodfunc.per_sample_grad_projections"
    with pytest.raises(hodfunc.ArgumentError, match=rf"{api}: dim must be an int >= 1, got 0"):
        hodfunc.per_sample_grad_projections(model, loss, *a, dim=0)
    with pytest.raises(hodfunc.ArgumentError, match=r"kind must be one of .*got 'normal'"):
        hodfunc.per_sample_grad_projections(model, loss, *a, dim=4, kind="normal")  # type: ignore[arg-type]
    with pytest.raises(hodfunc.ArgumentTypeError, match=r"seed must be an int, got '1'"):
        hodfunc.per_sample_grad_projections(model, loss, *a, dim=4, seed="1")  # type: ignore[arg-type]
    with pytest.raises(
        hodfunc.ArgumentTypeError,
        match=r"hodfunc.per_sample_grad_dots: batch_a must be a tuple.*got Tensor",
    ):
        hodfunc.per_sample_grad_dots(model, loss, a[0])  # type: ignore[arg-type]
    with pytest.raises(hodfunc.ShapeError, match=r"same leading batch size"):
        hodfunc.per_sample_grad_dots(model, loss, a, (a[0], a[1][:2]))
