"""Per-layer rules: a layer's per-sample gradient from its input and its output gradient.

Every supported layer call is reduced to one of three canonical forms, with ``B`` samples and
``T`` positions per sample (sequence positions, conv output pixels, or 1 for a plain vector):

- ``outer`` (Linear, Conv1d/Conv2d as unfold): ``a (B, T, K)``, ``d (B, T, O)``;
  ``grad W_i = d_i^T a_i (O, K)`` and ``grad b_i = sum_t d_it``.
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

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional

Kind = Literal["outer", "diag", "embed"]

# Transient buffer, in elements, for norms that are cheaper to materialise than to Gram.
_NORM_BUFFER = 1 << 22


@dataclass(frozen=True)
class Factors:
    """One module's calls in canonical form (see the module docstring)."""

    kind: Kind
    a: Tensor
    d: Tensor
    size: int = 0  # the embedding's vocabulary size; unused otherwise


def _conv_padding(module: nn.Conv1d | nn.Conv2d) -> bool:
    return isinstance(module.padding, tuple) or module.padding in ("valid", "same")


def rule_kind(module: nn.Module) -> Kind | None:
    """The canonical form ``module``'s parameters follow, or None when no rule applies.

    The module's own ``forward`` must be the stock one (a subclass that overrides it may compute
    anything), and its configuration must be one the rule handles.
    """
    forward = type(module).forward
    if forward is nn.Linear.forward:
        return "outer"
    if forward in (nn.Conv1d.forward, nn.Conv2d.forward):
        assert isinstance(module, (nn.Conv1d, nn.Conv2d))
        return "outer" if module.groups == 1 and _conv_padding(module) else None
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
    if isinstance(module, nn.Conv2d):
        return x.dim() == 4
    if isinstance(module, nn.Conv1d):
        return x.dim() == 3
    if isinstance(module, nn.Embedding):
        return x.dim() >= 1
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return x.dim() > len(module.normalized_shape)
    return x.dim() >= 2


def _unfold(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """The conv input as patches ``(B, L, C * prod(kernel))``, padded as the conv pads it."""
    one_d = isinstance(module, nn.Conv1d)

    def two(v: tuple[int, ...]) -> tuple[int, int]:
        return (1, v[0]) if one_d else (v[0], v[1])

    if one_d:
        x = x.unsqueeze(2)
    kernel, stride, dilation = two(module.kernel_size), two(module.stride), two(module.dilation)
    padding: tuple[int, int] = (0, 0)
    pads: list[int] = []
    if module.padding_mode != "zeros":
        pads = [*module._reversed_padding_repeated_twice, *([0, 0] if one_d else [])]
        x = functional.pad(x, pads, mode=module.padding_mode)
    elif module.padding == "same":
        for k, dil in zip(reversed(kernel), reversed(dilation), strict=True):
            total = dil * (k - 1)
            pads += [total // 2, total - total // 2]
        x = functional.pad(x, pads)
    elif isinstance(module.padding, tuple):
        padding = two(module.padding)
    return functional.unfold(
        x, kernel, dilation=dilation, padding=padding, stride=stride
    ).transpose(1, 2)


def factors(module: nn.Module, kind: Kind, x: Tensor, delta: Tensor) -> Factors:
    """Reduce one call (input ``x``, gradient ``delta`` of its output) to canonical form."""
    b = x.shape[0]
    if kind == "outer":
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            a = _unfold(module, x)
            d = delta.reshape(b, delta.shape[1], -1).transpose(1, 2)
            return Factors("outer", a, d)
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
    a = torch.cat([p.a for p in parts], dim=1)
    d = torch.cat([p.d for p in parts], dim=1)
    return Factors(first.kind, a, d, first.size)


def write(f: Factors, weight: Tensor | None, bias: Tensor | None) -> None:
    """Write the per-sample gradients into ``weight (B, *w.shape)`` and ``bias (B, *b.shape)``."""
    b = f.d.shape[0]
    with torch.no_grad():
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
