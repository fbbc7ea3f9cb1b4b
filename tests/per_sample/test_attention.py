"""Attention rules: nn.MultiheadAttention (packed and separate projections, bias or not,
batch_first both ways, masks), TransformerEncoderLayer, TransformerDecoderLayer and a custom
module that calls F.scaled_dot_product_attention between nn.Linear projections.

Each case is held to a loop of one-sample backward passes (``hodfunc.imperative``) for
per_sample_grads, the ghost norms and the clipped sum, and must not fall back to vmap(grad)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

import hodfunc
from hodfunc import imperative
from hodfunc._per_sample import _attention, _capture

B, T, S, E, H = 4, 5, 3, 8, 2
LossFn = Callable[..., Tensor]


def _pad_mask(tokens: Tensor) -> Tensor:
    """True at padding (token 0), never on the first position (no fully masked rows)."""
    mask = tokens == 0
    mask[:, 0] = False
    return mask


class Attend(nn.Module):
    """MultiheadAttention on embedded tokens, every option of the call as a constructor flag."""

    def __init__(
        self,
        *,
        batch_first: bool = True,
        bias: bool = True,
        separate: bool = False,
        cross: str = "self",  # "self" | "kv" (key is value) | "qkv" (all three differ)
        need_weights: bool = False,
        average: bool = True,
        padding: bool = False,
        attn_mask: str = "none",  # "none" | "causal" | "float" | "per_head" | "is_causal"
    ) -> None:
        super().__init__()
        self.batch_first, self.cross, self.need_weights = batch_first, cross, need_weights
        self.average, self.padding, self.attn_mask = average, padding, attn_mask
        self.embed = nn.Embedding(11, E)
        kdim = 6 if separate else None
        self.memory = nn.Linear(E, kdim or E)
        self.mha = nn.MultiheadAttention(
            E, H, bias=bias, batch_first=batch_first, kdim=kdim, vdim=kdim
        )
        self.head = nn.Linear(E, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        mem = torch.tanh(self.memory(x))
        if self.cross == "self":
            q = k = v = x
        elif self.cross == "kv":
            q, k, v = x, mem, mem
        else:
            q, k, v = x, mem, mem * 0.5
        length = tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        mask: Tensor | None = None
        if self.attn_mask in ("causal", "is_causal"):
            mask = causal
        elif self.attn_mask == "float":
            mask = -0.5 * torch.arange(length, dtype=x.dtype).expand(length, length)
        elif self.attn_mask == "per_head":  # (B * H, L, S), built from each sample's tokens
            per = (tokens.unsqueeze(1) == 1) & ~torch.eye(length, dtype=torch.bool)
            mask = per.repeat_interleave(H, dim=0)
        if not self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
            if self.cross == "self":
                k = v = q
            elif self.cross == "kv":
                v = k
        out, weights = self.mha(
            q,
            k,
            v,
            key_padding_mask=_pad_mask(tokens) if self.padding else None,
            need_weights=self.need_weights,
            attn_mask=mask,
            average_attn_weights=self.average,
            is_causal=self.attn_mask == "is_causal",
        )
        if not self.batch_first:
            out = out.transpose(0, 1)
        pooled = out.mean(1)
        if weights is not None:
            pooled = pooled + weights.reshape(tokens.shape[0], -1).sum(1, keepdim=True)
        result: Tensor = self.head(pooled)
        return result


class Encoder(nn.Module):
    """TransformerEncoderLayer (norm first or last, relu or gelu), padding and causal masks."""

    def __init__(self, batch_first: bool, norm_first: bool, masks: bool) -> None:
        super().__init__()
        self.batch_first, self.masks = batch_first, masks
        self.embed = nn.Embedding(11, E)
        self.layer = nn.TransformerEncoderLayer(
            E, H, 12, dropout=0.0, batch_first=batch_first, norm_first=norm_first,
            activation="gelu" if norm_first else "relu",
        )  # fmt: skip
        self.head = nn.Linear(E, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        mask = pad = None
        if self.masks:
            length = tokens.shape[1]
            mask = torch.ones(length, length, dtype=torch.bool).triu(1)
            pad = _pad_mask(tokens)
        if not self.batch_first:
            h = self.layer(h.transpose(0, 1), mask, pad).transpose(0, 1)
        else:
            h = self.layer(h, mask, pad)
        out: Tensor = self.head(h.mean(1))
        return out


class Decoder(nn.Module):
    """TransformerDecoderLayer: target tokens attend to themselves (causal) and to a memory
    computed from source tokens; one input tensor holds both (target first)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(11, E)
        self.layer = nn.TransformerDecoderLayer(E, H, 12, dropout=0.0, batch_first=batch_first)
        self.head = nn.Linear(E, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        tgt, src = self.embed(tokens[:, :T]), self.embed(tokens[:, T:])
        mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=tgt.dtype)
        pad = _pad_mask(tokens[:, T:])
        if self.batch_first:
            h = self.layer(tgt, src, tgt_mask=mask, memory_key_padding_mask=pad, tgt_is_causal=True)
        else:
            h = self.layer(
                tgt.transpose(0, 1), src.transpose(0, 1), tgt_mask=mask,
                memory_key_padding_mask=pad,
            ).transpose(0, 1)  # fmt: skip
        out: Tensor = self.head(h.mean(1))
        return out


class SDPABlock(nn.Module):
    """A custom attention block: nn.Linear projections around F.scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, E)
        self.q, self.k, self.v = nn.Linear(E, E), nn.Linear(E, E, bias=False), nn.Linear(E, E)
        self.o = nn.Linear(E, E)
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)

        def split(t: Tensor) -> Tensor:
            return t.reshape(*t.shape[:-1], H, E // H).transpose(1, 2)

        a = functional.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True
        )
        h = self.norm(x + self.o(a.transpose(1, 2).flatten(2)))
        out: Tensor = self.head(h.mean(1))
        return out


def _case(name: str) -> nn.Module:
    torch.manual_seed(1)
    options: dict[str, dict[str, object]] = {
        "mha_packed": {},
        "mha_packed_seq_first": {"batch_first": False},
        "mha_no_bias": {"bias": False},
        "mha_cross_kv": {"cross": "kv", "padding": True},
        "mha_cross_qkv_seq_first": {"cross": "qkv", "batch_first": False},
        "mha_separate": {"separate": True, "cross": "qkv", "padding": True},
        "mha_separate_seq_first_no_bias": {
            "separate": True,
            "cross": "kv",
            "batch_first": False,
            "bias": False,
        },
        "mha_need_weights": {"need_weights": True, "attn_mask": "float"},
        "mha_need_weights_per_head": {"need_weights": True, "average": False, "padding": True},
        "mha_causal_and_padding": {"attn_mask": "causal", "padding": True},
        "mha_is_causal": {"attn_mask": "is_causal"},
        "mha_per_head_mask_seq_first": {"attn_mask": "per_head", "batch_first": False},
    }
    if name in options:
        return Attend(**options[name])  # type: ignore[arg-type]
    if name.startswith("encoder"):
        return Encoder(
            batch_first="seq_first" not in name, norm_first="norm_first" in name, masks=True
        ).eval()
    if name.startswith("decoder"):
        return Decoder(batch_first="seq_first" not in name).eval()
    if name == "sdpa_block":
        return SDPABlock()
    raise ValueError(name)


CASES = [
    "mha_packed",
    "mha_packed_seq_first",
    "mha_no_bias",
    "mha_cross_kv",
    "mha_cross_qkv_seq_first",
    "mha_separate",
    "mha_separate_seq_first_no_bias",
    "mha_need_weights",
    "mha_need_weights_per_head",
    "mha_causal_and_padding",
    "mha_is_causal",
    "mha_per_head_mask_seq_first",
    "encoder",
    "encoder_seq_first_norm_first",
    "decoder",
    "decoder_seq_first",
    "sdpa_block",
]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def _tokens(name: str) -> Tensor:
    torch.manual_seed(2)
    width = 2 * T if name.startswith("decoder") else T
    tokens = torch.randint(0, 11, (B, width))
    tokens[:, -1] = 0  # some padding in every sample
    return tokens


def _assert_close(got: Tensor, want: Tensor, rtol: float, what: str) -> None:
    scale = float(want.abs().max())
    err = float((got - want).abs().max())
    assert got.shape == want.shape, what
    assert err <= rtol * max(scale, 1e-12), f"{what}: error {err:.3e}, scale {scale:.3e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", CASES)
def test_attention_matches_the_loop_and_never_falls_back(
    name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _case(name).to(dtype)
    loss: LossFn = functional.cross_entropy
    tokens = _tokens(name)
    labels = torch.randint(0, 3, (B,))
    fell_back: list[str] = []
    original = _capture.vmap_grads

    def spy(ctx: _capture.Context, names: list[str], *args: object) -> dict[str, Tensor]:
        fell_back.extend(names)
        return original(ctx, names, *args)  # type: ignore[arg-type]

    ref = imperative.per_sample_grads(model, loss, tokens, labels)
    norms = torch.stack([g.reshape(B, -1).square().sum(1) for g in ref.values()]).sum(0).sqrt()
    max_norm = float(norms.median())
    weights = torch.clamp(max_norm / norms, max=1.0)
    monkeypatch.setattr(_capture, "vmap_grads", spy)
    rtol = TOL[dtype]
    got = hodfunc.per_sample_grads(model, loss, tokens, labels)
    for k in ref:
        _assert_close(got[k], ref[k], rtol, f"per_sample_grads[{k}]")
    _assert_close(hodfunc.per_sample_grad_norms(model, loss, tokens, labels), norms, rtol, "norms")
    clipped = hodfunc.clipped_grad_sum(model, loss, tokens, labels, max_norm=max_norm)
    for k in ref:
        want = torch.einsum("b,b...->...", weights, ref[k])
        _assert_close(clipped[k], want, rtol, f"clipped_grad_sum[{k}]")
    assert fell_back == []


@pytest.mark.parametrize("name", ["mha_cross_qkv_seq_first", "mha_separate", "encoder"])
def test_chunks_give_the_same_attention_gradients(name: str) -> None:
    model = _case(name).double()
    tokens, labels = _tokens(name), torch.randint(0, 3, (B,))
    full = hodfunc.per_sample_grads(model, functional.cross_entropy, tokens, labels)
    for chunk in (1, 3):
        got = hodfunc.per_sample_grads(
            model, functional.cross_entropy, tokens, labels, chunk_size=chunk
        )
        for k in full:
            _assert_close(got[k], full[k], 1e-12, f"chunk {chunk} {k}")


@pytest.mark.parametrize("name", ["mha_need_weights_per_head", "mha_cross_kv", "mha_is_causal"])
def test_the_takeover_computes_what_torch_computes(name: str) -> None:
    """The mode's attention against torch's own, on the module's real parameters."""
    model = _case(name).double()
    mha = model.mha
    assert isinstance(mha, nn.MultiheadAttention)
    layers = frozenset({*(f"mha:{s}" for s in _attention.SLOTS), "mha.out_proj"})
    spec = _attention.make_spec("mha", mha, {}, layers)
    first = mha.in_proj_weight if mha._qkv_same_embed_dim else mha.q_proj_weight
    seen: list[str] = []
    tokens = _tokens(name)
    with torch.no_grad():
        want = model(tokens)
        with _attention.Attention({id(first): spec}, lambda n, a, z: seen.append(n), probe=False):
            got = model(tokens)
    _assert_close(got, want, 1e-12, "output")
    slots = {"mha_cross_kv": ["mha:q", "mha:kv"]}.get(name, ["mha:qkv"])
    assert sorted(seen) == sorted([*slots, "mha.out_proj"])


def test_unsupported_attention_options_fall_back_and_stay_correct() -> None:
    """add_bias_kv and add_zero_attn are not taken over: their parameters fall back."""
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(E, H, add_bias_kv=True, add_zero_attn=True, batch_first=True)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha, self.head = mha, nn.Linear(E, 3)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.head(self.mha(x, x, x, need_weights=False)[0].mean(1))
            return out

    model = Model().double()
    x, y = torch.randn(B, T, E, dtype=torch.float64), torch.randint(0, 3, (B,))
    ref = imperative.per_sample_grads(model, functional.cross_entropy, x, y)
    got = hodfunc.per_sample_grads(model, functional.cross_entropy, x, y)
    for k in ref:
        _assert_close(got[k], ref[k], 1e-10, k)


def test_a_frozen_in_projection_leaves_the_rest_batched() -> None:
    model = _case("mha_cross_kv").double()
    mha = model.mha
    assert isinstance(mha, nn.MultiheadAttention)
    mha.in_proj_weight.requires_grad_(False)
    tokens, labels = _tokens("mha_cross_kv"), torch.randint(0, 3, (B,))
    ref = imperative.per_sample_grads(model, functional.cross_entropy, tokens, labels)
    got = hodfunc.per_sample_grads(model, functional.cross_entropy, tokens, labels)
    assert "mha.in_proj_weight" not in got
    for k in ref:
        _assert_close(got[k], ref[k], 1e-10, k)
