"""Per-layer rules: a layer's per-sample gradient from its input and its output gradient.

Every supported layer call is reduced to one of three canonical forms, with ``B`` samples and
``T`` positions per sample (sequence positions, conv output pixels, or 1 for a plain vector):

- ``outer`` (Linear): ``a (B, T, K)``, ``d (B, T, O)``;
  ``grad W_i = d_i^T a_i (O, K)`` and ``grad b_i = sum_t d_it``.
- ``conv`` (Conv1d/2d/3d): the (padded) input ``a (B, C, *S)`` and ``d (B, O, *S')``. In unfold
  terms this is ``outer`` with ``T`` the output pixels, but one convolution-backward with the
  batch folded into the groups (``groups = B``) computes all ``grad W_i`` at once, faster than
  unfold + bmm and without the unfolded copy.
- ``diag`` (LayerNorm, RMSNorm, GroupNorm): normalised input ``a (B, T, C)`` and ``d (B, T, C)``;
  ``grad w_i = sum_t a_it * d_it`` and ``grad b_i = sum_t d_it``.
- ``embed`` (Embedding): indices ``a (B, T)`` and ``d (B, T, E)``;
  ``grad W_i[v] = sum_{t: a_it = v} d_it``.

Several calls of one module concatenate along ``T``. From a form we either write the per-sample
gradients into caller-owned buffers or compute their squared norms without materialising them
(the "ghost norm": ``||a_i||^2 ||d_i||^2`` for ``T = 1``, the Gram form
``sum_{t,s} (a_it . a_is)(d_it . d_is)`` otherwise, whichever costs less).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional

Kind = Literal["outer", "conv", "diag", "embed"]

# Transient buffer, in elements, for norms that are cheaper to materialise than to Gram.
_NORM_BUFFER = 1 << 22


@dataclass(frozen=True)
class Factors:
    """One module's calls in canonical form (see the module docstring)."""

    kind: Kind
    a: Tensor
    d: Tensor
    size: int = 0  # the embedding's vocabulary size; unused otherwise
    conv: ConvSpec | None = None


@dataclass(frozen=True)
class ConvSpec:
    """A convolution's geometry, padding already applied to the input."""

    kernel: tuple[int, ...]
    stride: list[int]
    dilation: list[int]
    padding: list[int]


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def rule_kind(module: nn.Module) -> Kind | None:
    """The canonical form ``module``'s parameters follow, or None when no rule applies.

    The module's own ``forward`` must be the stock one (a subclass that overrides it may compute
    anything), and its configuration must be one the rule handles.
    """
    forward = type(module).forward
    if forward is nn.Linear.forward:
        return "outer"
    if forward in tuple(c.forward for c in _CONVS):
        assert isinstance(module, _CONVS)
        return "conv" if module.groups == 1 else None
    if forward is nn.Embedding.forward:
        assert isinstance(module, nn.Embedding)
        return "embed" if not module.scale_grad_by_freq and module.max_norm is None else None
    if forward in (nn.LayerNorm.forward, nn.RMSNorm.forward):
        assert isinstance(module, (nn.LayerNorm, nn.RMSNorm))
        return "diag" if module.elementwise_affine else None
    if forward is nn.GroupNorm.forward:
        assert isinstance(module, nn.GroupNorm)
        return "diag" if module.affine else None
    return None


def input_rank_ok(module: nn.Module, x: object) -> bool:
    """Whether ``x`` has the batched rank the rule expects (unbatched calls fall back)."""
    if not isinstance(x, Tensor):
        return False
    if isinstance(module, _CONVS):
        return x.dim() == len(module.kernel_size) + 2
    if isinstance(module, nn.Embedding):
        return x.dim() >= 1
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return x.dim() > len(module.normalized_shape)
    return x.dim() >= 2


def _conv(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: Tensor) -> tuple[Tensor, ConvSpec]:
    """The conv's input with any padding the conv would add, and the geometry that remains."""
    n = len(module.kernel_size)
    padding = [0] * n
    if module.padding_mode != "zeros":
        x = functional.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
    elif module.padding == "same":
        pads: list[int] = []
        for k, dil in zip(reversed(module.kernel_size), reversed(module.dilation), strict=True):
            total = dil * (k - 1)
            pads += [total // 2, total - total // 2]
        x = functional.pad(x, pads)
    elif isinstance(module.padding, tuple):
        padding = list(module.padding)
    spec = ConvSpec(module.kernel_size, list(module.stride), list(module.dilation), padding)
    return x, spec


def _conv_weight_grads(f: Factors, d: Tensor, *, per_sample: bool) -> Tensor:
    """Conv weight gradients from ``a`` and ``d``: per sample ``(B, O, C*prod(k))`` (one
    convolution-backward with ``groups = B``) or summed over the batch ``(O, C*prod(k))``."""
    spec = f.conv
    assert spec is not None
    x = f.a
    b, c, o = x.shape[0], x.shape[1], d.shape[1]
    groups = b if per_sample else 1
    if per_sample:
        x, d = x.reshape(1, b * c, *x.shape[2:]), d.reshape(1, b * o, *d.shape[2:])
    proto = d.new_empty(()).expand(groups * o, c, *spec.kernel)  # only its shape is read
    grads = torch.ops.aten.convolution_backward(
        d, x, proto, None, spec.stride, spec.padding, spec.dilation, False,
        [0] * len(spec.kernel), groups, [False, True, False],
    )  # fmt: skip
    weight: Tensor = grads[1]
    return weight.reshape(b, o, -1) if per_sample else weight.reshape(o, -1)


def factors(module: nn.Module, kind: Kind, x: Tensor, delta: Tensor) -> Factors:
    """Reduce one call (input ``x``, gradient ``delta`` of its output) to canonical form."""
    b = x.shape[0]
    if kind == "conv":
        assert isinstance(module, _CONVS)
        padded, spec = _conv(module, x)
        return Factors("conv", padded, delta, conv=spec)
    if kind == "outer":
        return Factors(
            "outer", x.reshape(b, -1, x.shape[-1]), delta.reshape(b, -1, delta.shape[-1])
        )
    if kind == "embed":
        assert isinstance(module, nn.Embedding)
        idx = x.reshape(b, -1)
        d = delta.reshape(b, idx.shape[1], -1)
        if module.padding_idx is not None:
            d = d * (idx != module.padding_idx).unsqueeze(-1).to(d.dtype)
        return Factors("embed", idx, d, module.num_embeddings)
    with torch.no_grad():
        if isinstance(module, nn.GroupNorm):
            xhat = functional.group_norm(x, module.num_groups, None, None, module.eps)
            a = xhat.reshape(b, xhat.shape[1], -1).transpose(1, 2)
            return Factors("diag", a, delta.reshape(b, delta.shape[1], -1).transpose(1, 2))
        assert isinstance(module, (nn.LayerNorm, nn.RMSNorm))
        shape = list(module.normalized_shape)
        if isinstance(module, nn.LayerNorm):
            xhat = functional.layer_norm(x, shape, None, None, module.eps)
        else:
            xhat = functional.rms_norm(x, shape, None, module.eps)
        n = xhat[(0,) * (x.dim() - len(shape))].numel()
        return Factors("diag", xhat.reshape(b, -1, n), delta.reshape(b, -1, n))


def concat(parts: list[Factors]) -> Factors:
    """Several calls of one module as one form, concatenated along ``T``."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    assert first.kind != "conv", "a conv module called more than once has no rule"
    a = torch.cat([p.a for p in parts], dim=1)
    d = torch.cat([p.d for p in parts], dim=1)
    return Factors(first.kind, a, d, first.size)


def write(f: Factors, weight: Tensor | None, bias: Tensor | None) -> None:
    """Write the per-sample gradients into ``weight (B, *w.shape)`` and ``bias (B, *b.shape)``."""
    b = f.d.shape[0]
    with torch.no_grad():
        if f.kind == "conv":
            if weight is not None:
                weight.view(b, f.d.shape[1], -1).copy_(_conv_weight_grads(f, f.d, per_sample=True))
            if bias is not None:
                torch.sum(f.d.reshape(b, f.d.shape[1], -1), dim=2, out=bias.view(b, -1))
            return
        if weight is not None:
            if f.kind == "outer":
                w = weight.view(b, f.d.shape[2], f.a.shape[2])
                if f.a.shape[1] == 1:
                    torch.mul(f.d[:, 0, :, None], f.a[:, 0, None, :], out=w)
                else:
                    torch.bmm(f.d.transpose(1, 2), f.a, out=w)
            elif f.kind == "diag":
                torch.sum(f.a * f.d, dim=1, out=weight.view(b, -1))
            else:
                w = weight.view(b * f.size, -1)
                w.zero_()
                offsets = torch.arange(b, device=f.a.device).unsqueeze(1) * f.size
                w.index_add_(0, (f.a + offsets).reshape(-1), f.d.reshape(-1, f.d.shape[2]))
        if bias is not None:
            torch.sum(f.d, dim=1, out=bias.view(b, -1))


def _sq(x: Tensor) -> Tensor:
    """Per-sample squared norm of ``x (B, ...)``."""
    return x.reshape(x.shape[0], -1).square().sum(1)


def norm_sq(f: Factors, weight: bool, bias: bool) -> Tensor:
    """Per-sample squared gradient norm ``(B,)`` over the weight and/or bias, without storing
    the per-sample gradients (Gram form, or a bounded transient buffer when that is cheaper)."""
    b, t = f.d.shape[0], f.d.shape[1]
    with torch.no_grad():
        total = f.d.new_zeros(b)
        if f.kind == "conv":
            d = f.d.reshape(b, t, -1)
            if bias:
                total += _sq(d.sum(2))
            if weight:
                assert f.conv is not None
                step = max(1, _NORM_BUFFER // (t * f.a.shape[1] * math.prod(f.conv.kernel)))
                for s in range(0, b, step):
                    part = Factors("conv", f.a[s : s + step], f.d[s : s + step], conv=f.conv)
                    total[s : s + step] += _sq(_conv_weight_grads(part, part.d, per_sample=True))
            return total
        if bias:
            total += _sq(f.d.sum(1))
        if not weight:
            return total
        if f.kind == "diag":
            return total + _sq((f.a * f.d).sum(1))
        if f.kind == "outer" and t == 1:
            return total + _sq(f.a) * _sq(f.d)
        if f.kind == "embed" and t == 1:
            return total + _sq(f.d)
        e, k = f.d.shape[2], (f.a.shape[2] if f.kind == "outer" else f.size)
        if t * (e + (k if f.kind == "outer" else 0)) <= k * e:
            gd = torch.bmm(f.d, f.d.transpose(1, 2))
            if f.kind == "outer":
                ga = torch.bmm(f.a, f.a.transpose(1, 2))
            else:
                ga = (f.a.unsqueeze(2) == f.a.unsqueeze(1)).to(gd.dtype)
            return total + (ga * gd).sum((1, 2))
        step = max(1, _NORM_BUFFER // (k * e))
        buf = f.d.new_empty(min(step, b), k * e)
        for s in range(0, b, step):
            part = Factors(f.kind, f.a[s : s + step], f.d[s : s + step], f.size)
            out = buf[: part.d.shape[0]]
            write(part, out, None)
            total[s : s + step] += out.square().sum(1)
        return total


def weighted_sum(
    f: Factors, w: Tensor, weight: bool, bias: bool
) -> tuple[Tensor | None, Tensor | None]:
    """``sum_i w_i g_i`` for the weight and bias (the weight flattened to 2-d, or 1-d for norms):
    the batched weight gradient with each sample's output gradient scaled by ``w_i``."""
    with torch.no_grad():
        d = f.d * w.to(f.d.dtype).reshape(-1, *([1] * (f.d.dim() - 1)))
        if f.kind == "conv":
            gb = d.reshape(d.shape[0], d.shape[1], -1).sum((0, 2)) if bias else None
            return (_conv_weight_grads(f, d, per_sample=False) if weight else None), gb
        gb = d.sum((0, 1)) if bias else None
        if not weight:
            return None, gb
        if f.kind == "outer":
            gw = d.reshape(-1, d.shape[2]).t() @ f.a.reshape(-1, f.a.shape[2])
        elif f.kind == "diag":
            gw = (f.a * d).sum((0, 1))
        else:
            gw = d.new_zeros(f.size, d.shape[2])
            gw.index_add_(0, f.a.reshape(-1), d.reshape(-1, d.shape[2]))
        return gw, gb
