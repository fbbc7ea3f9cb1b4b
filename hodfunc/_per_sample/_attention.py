"""``nn.MultiheadAttention`` as projections with the ``outer`` rule, read off the batched pass.

MultiheadAttention does not call its projections as modules: ``F.multi_head_attention_forward``
multiplies its packed ``in_proj_weight`` (or ``q/k/v_proj_weight``) and ``out_proj.weight``
directly, so no module hook sees an input and an output gradient. While the batched pass runs,
a ``TorchFunctionMode`` (``Attention``) takes that one function over and computes the same
attention with each projection as one ``F.linear`` call on a batch-first view, so that each
projection's input ``a (B, T, K)`` and output ``z (B, T, O)`` are recorded like a Linear's:
``grad W_i = sum_t delta_it a_it^T`` for the rows of the weight that projection owns.

The rows are the *slots* of one module (``Slot``): the packed weight's ``qkv`` (self-attention,
one product for all three), ``q`` and ``kv`` (``key is value``), or ``q``, ``k``, ``v``; separate
weights have ``q``, ``k``, ``v`` with rows of ``in_proj_bias``; ``out_proj`` is the module's own
Linear. Each slot is a layer of ``_capture`` (``CapturedLayer.rows``), so gradients, ghost
norms, clipped sums, dot products and projections treat it like any Linear; slots of one
parameter must own disjoint rows (checked in ``_capture.covered_layers``).

The takeover is checked, not trusted: in the probe of sample 0 the mode returns torch's own
result, which ``_capture.covered_layers`` compares with row 0 of the batched pass (a mismatch
sends every parameter to ``vmap(grad)``). Calls it does not reproduce exactly (unbatched
inputs, ``add_bias_kv``, ``add_zero_attn``, static keys, dropout in training mode, weights that
are not the module's own) run torch's function and record nothing, so their parameters fall
back to ``vmap(grad)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.overrides import TorchFunctionMode

_MHA = functional.multi_head_attention_forward
_SIGNATURE = inspect.signature(_MHA)

SLOTS = ("qkv", "q", "kv", "k", "v")
"""Slot names: which of the projections (rows of the packed weight) one product computes."""

_PARAMS = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def supported(module: nn.Module) -> bool:
    """Whether ``module`` is a stock ``nn.MultiheadAttention`` (its ``forward`` not overridden)."""
    return isinstance(module, nn.MultiheadAttention) and (
        type(module).forward is nn.MultiheadAttention.forward
    )


def slot_rows(module: nn.MultiheadAttention, slot: str) -> tuple[str, tuple[int, int], int]:
    """The weight (local name), the rows of it and of ``in_proj_bias`` that ``slot`` owns, and
    the row offset of those bias rows (the same rows for the packed weight)."""
    e = module.embed_dim
    start, stop = {"qkv": (0, 3 * e), "q": (0, e), "kv": (e, 3 * e), "k": (e, 2 * e)}.get(
        slot, (2 * e, 3 * e)
    )
    if module._qkv_same_embed_dim:
        return "in_proj_weight", (start, stop), start
    weight = {"q": "q_proj_weight", "k": "k_proj_weight", "v": "v_proj_weight"}[slot]
    return weight, (0, e), start


def slot_names(module: nn.MultiheadAttention) -> tuple[str, ...]:
    """The slots a module can have: all five when packed, ``q, k, v`` with separate weights."""
    return SLOTS if module._qkv_same_embed_dim else ("q", "k", "v")


def slot_layer(name: str, slot: str) -> str:
    """The layer name of one slot of the module ``name`` (``"layer.self_attn:qkv"``)."""
    return f"{name}:{slot}"


@dataclass(frozen=True)
class Spec:
    """One MultiheadAttention of the model: its name and the tensors a call must pass."""

    name: str
    module: nn.MultiheadAttention
    tensors: Mapping[str, Tensor | None]
    """Local parameter name (``"in_proj_weight"``, ``"out_proj.weight"``, ...) -> the tensor
    ``functional_call`` hands the module (the private leaf, or the frozen parameter)."""
    layers: frozenset[str]
    """Names of this module's layers in ``_capture.Context.layers`` (slots, ``out_proj``)."""


def make_spec(
    name: str, module: nn.MultiheadAttention, leaves: Mapping[str, Tensor], layers: frozenset[str]
) -> Spec:
    """The ``Spec`` of ``module`` (named ``name`` in the model whose private leaves are given)."""
    tensors: dict[str, Tensor | None] = {}
    prefix = f"{name}." if name else ""
    for local in (*_PARAMS, "out_proj.weight", "out_proj.bias"):
        owner, _, attr = local.rpartition(".")
        holder = module.out_proj if owner else module
        p = holder._parameters.get(attr)
        tensors[local] = None if p is None else leaves.get(prefix + local, p)
    return Spec(name, module, tensors, layers)


Recorder = Callable[[str, Tensor, Tensor], None]
"""``record(layer name, input a (B, T, K), output z (B, T, O))``."""


class Attention(TorchFunctionMode):
    """Compute ``F.multi_head_attention_forward`` of the known modules as recorded projections
    (module docstring). ``probe=True`` records but returns torch's own result."""

    def __init__(self, specs: Mapping[int, Spec], record: Recorder, *, probe: bool) -> None:
        super().__init__()
        self.specs = specs
        self.record = record
        self.probe = probe

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: object,
        args: tuple[object, ...] = (),
        kwargs: Mapping[str, object] | None = None,
    ) -> object:
        kwargs = kwargs or {}
        if func is _MHA:
            mine = self._attend(_SIGNATURE.bind(*args, **kwargs).arguments)
            if mine is not None and not self.probe:
                return mine
        return func(*args, **kwargs)

    def _spec(self, arg: Mapping[str, object]) -> Spec | None:
        """The module this call belongs to, when it passes exactly that module's tensors."""
        key = arg.get("in_proj_weight")
        if key is None:
            key = arg.get("q_proj_weight")
        spec = self.specs.get(id(key))
        if spec is None:
            return None
        separate = bool(arg.get("use_separate_proj_weight", False))
        for local, t in spec.tensors.items():
            passed = arg.get(local.replace(".", "_"))
            if local.endswith("proj_weight") and local != "in_proj_weight" and not separate:
                continue  # torch ignores q/k/v_proj_weight for a packed module
            if local == "in_proj_weight" and separate:
                continue
            if passed is not t:
                return None
        return spec

    def _attend(self, arg: Mapping[str, object]) -> tuple[Tensor, Tensor | None] | None:
        """Attention with recorded projections, or None where torch's function must run."""
        spec = self._spec(arg)
        query, key, value = arg["query"], arg["key"], arg["value"]
        if (
            spec is None
            or not isinstance(query, Tensor)
            or not isinstance(key, Tensor)
            or not isinstance(value, Tensor)
            or query.dim() != 3
            or key.dim() != 3
            or value.dim() != 3
            or any(arg.get(k) is not None for k in ("bias_k", "bias_v", "static_k", "static_v"))
            or arg.get("add_zero_attn", False)
            or (arg.get("training", True) and float(arg.get("dropout_p", 0.0)) > 0.0)  # type: ignore[arg-type]
        ):
            return None
        module = spec.module
        tgt, bsz, e = query.shape
        src = key.shape[0]
        heads = module.num_heads
        if e != module.embed_dim or key.shape[1] != bsz or value.shape[:2] != key.shape[:2]:
            return None
        if not module._qkv_same_embed_dim:
            for t, local in ((key, "k_proj_weight"), (value, "v_proj_weight")):
                w = spec.tensors[local]
                if w is None or t.shape[-1] != w.shape[-1]:
                    return None  # torch's function raises its own error
        elif key.shape != value.shape or key.shape[-1] != e:
            return None
        mask = _mask(arg, query, bsz, heads, tgt, src)
        if mask is None:
            return None
        attn_mask, is_causal = mask
        need_weights = bool(arg.get("need_weights", True))
        if need_weights and is_causal and attn_mask is None:
            return None
        q, k, v = self._project(spec, query, key, value)
        hd = e // heads

        def heads_first(t: Tensor) -> Tensor:
            return t.reshape(bsz, t.shape[1], heads, hd).transpose(1, 2)

        qh, kh, vh = heads_first(q), heads_first(k), heads_first(v)
        weights: Tensor | None = None
        if need_weights:
            scores = torch.matmul(qh * math.sqrt(1.0 / hd), kh.transpose(-2, -1))
            if attn_mask is not None:
                scores = scores + attn_mask
            weights = torch.softmax(scores, dim=-1)
            attended = torch.matmul(weights, vh)
            if arg.get("average_attn_weights", True):
                weights = weights.mean(dim=1)
        else:
            attended = functional.scaled_dot_product_attention(
                qh, kh, vh, attn_mask=attn_mask, is_causal=is_causal
            )
        flat = attended.transpose(1, 2).reshape(bsz, tgt, e)
        w_out, b_out = spec.tensors["out_proj.weight"], spec.tensors["out_proj.bias"]
        assert w_out is not None
        out = functional.linear(flat, w_out, b_out)
        out_name = f"{spec.name}.out_proj" if spec.name else "out_proj"
        if out_name in spec.layers:
            self.record(out_name, flat, out)
        return out.transpose(0, 1), weights

    def _project(
        self, spec: Spec, query: Tensor, key: Tensor, value: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The three in-projections, batch first, each product recorded under its slot."""
        module = spec.module
        bias = spec.tensors["in_proj_bias"]

        def proj(slot: str, x: Tensor) -> Tensor:
            weight, (start, stop), offset = slot_rows(module, slot)
            w = spec.tensors[weight]
            assert w is not None
            if (start, stop) != (0, w.shape[0]):
                w = w[start:stop]
            b = None if bias is None else bias[offset : offset + (stop - start)]
            z = functional.linear(x, w, b)
            name = slot_layer(spec.name, slot)
            if name in spec.layers:
                self.record(name, x, z)
            return z

        xq, xk, xv = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if not module._qkv_same_embed_dim:
            return proj("q", xq), proj("k", xk), proj("v", xv)
        if key is value and query is key:
            q, k, v = proj("qkv", xq).chunk(3, dim=-1)
            return q, k, v
        if key is value:
            k, v = proj("kv", xk).chunk(2, dim=-1)
            return proj("q", xq), k, v
        return proj("q", xq), proj("k", xk), proj("v", xv)


def _float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as the additive float mask torch uses (``True``: masked out)."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    return mask


def _mask(
    arg: Mapping[str, object], query: Tensor, bsz: int, heads: int, tgt: int, src: int
) -> tuple[Tensor | None, bool] | None:
    """The additive mask ``(B or 1, H or 1, L, S)`` and the causal flag SDPA gets, exactly as
    torch merges ``attn_mask``, ``key_padding_mask`` and ``is_causal``; None where the masks'
    shapes or dtypes are not ones torch accepts (its function then raises its own error)."""
    attn = arg.get("attn_mask")
    kpm = arg.get("key_padding_mask")
    is_causal = bool(arg.get("is_causal", False))
    need_weights = bool(arg.get("need_weights", True))
    for m in (attn, kpm):
        if m is not None and (
            not isinstance(m, Tensor) or not (m.dtype == torch.bool or m.is_floating_point())
        ):
            return None
    assert attn is None or isinstance(attn, Tensor)
    assert kpm is None or isinstance(kpm, Tensor)
    if is_causal and attn is None:
        return None
    if kpm is not None and tuple(kpm.shape) != (bsz, src):
        return None
    pad = None if kpm is None else _float_mask(kpm, query.dtype).view(bsz, 1, 1, src)
    if is_causal and pad is None and not need_weights:
        return None, True
    mask: Tensor | None = None
    if attn is not None:
        if attn.dim() == 2 and tuple(attn.shape) == (tgt, src):
            mask = _float_mask(attn, query.dtype).view(1, 1, tgt, src)
        elif attn.dim() == 3 and tuple(attn.shape) == (bsz * heads, tgt, src):
            mask = _float_mask(attn, query.dtype).view(bsz, heads, tgt, src)
        else:
            return None
    if pad is not None:
        mask = pad if mask is None else mask + pad
        is_causal = False
    return mask, is_causal and mask is None
