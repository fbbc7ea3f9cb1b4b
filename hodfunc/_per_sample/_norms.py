"""Per-sample gradient norms without per-sample gradients, and the clipped gradient sum (DP-SGD).

Both read each supported layer's input and output gradient off one batched pass (``_capture``)
and use the layer's ghost norm (``_layers.norm_sq``); parameters without a rule fall back to
``vmap(grad)`` for those parameters only, whose per-sample gradients are squared and summed
chunk by chunk.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._errors import ArgumentError, ArgumentTypeError, message
from .._validate import check_chunk_size
from . import _capture, _layers
from ._capture import LossFn
from ._grads import check_batch, check_functional_module


def _layer_norms_sq(ctx: _capture.Context, forms: dict[str, _layers.Factors], into: Tensor) -> None:
    """Add every covered layer's per-sample squared gradient norm to ``into``."""
    for name, f in forms.items():
        layer = ctx.layers[name]
        into += _layers.norm_sq(f, "weight" in layer.params, "bias" in layer.params)


def _fallback_norms_sq(
    ctx: _capture.Context,
    names: list[str],
    batch: tuple[Tensor, ...],
    step: int,
    into: Tensor,
) -> None:
    """Add the fallback parameters' per-sample squared gradient norms, ``step`` at a time."""
    if not names:
        return
    size = batch[0].shape[0]
    for s in range(0, size, step):
        part = tuple(b[s : s + step] for b in batch)
        grads = _capture.vmap_grads(ctx, names, part, None)
        for g in grads.values():
            into[s : s + step] += g.detach().reshape(g.shape[0], -1).square().sum(1)


def per_sample_grad_norms(
    model: nn.Module, loss_fn: LossFn, *batch: Tensor, chunk_size: int | None = None
) -> Tensor:
    """The Euclidean norm of each sample's gradient over all trainable parameters.

    ``result[i] = ||d loss_i / d theta||`` with ``loss_i`` as in ``hodfunc.per_sample_grads``.
    Linear, Conv, Embedding, normalisation layers and MultiheadAttention's projections (so
    also TransformerEncoderLayer and TransformerDecoderLayer) never materialise a per-sample
    gradient:
    on vector inputs ``||grad W_i||^2 = ||a_i||^2 ||delta_i||^2``; on sequences the Gram form
    ``sum_{t,s} (a_it . a_is)(delta_it . delta_is)`` (or a bounded transient buffer, whichever
    is cheaper). Other parameters fall back to ``vmap(grad)``, ``chunk_size`` samples at a time.

    Args:
        model: the module; BatchNorm layers must be in eval mode.
        loss_fn: ``loss_fn(output, *targets)`` returning one number for a batch of one.
        *batch: the model input first, then the loss's extra tensors, all with leading size B.
        chunk_size: samples per batched pass; peak memory is one batched forward and backward
            of ``chunk_size`` samples plus a transient buffer of at most 4M elements per layer
            (or vmap's working set for ``chunk_size`` samples where parameters fall back).

    Returns:
        A tensor of shape ``(B,)``.

    Raises:
        NonFunctionalModuleError: a BatchNorm layer is in training mode.
        ShapeError: the batch tensors disagree in batch size.

    Example:
        >>> import torch, hodfunc
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x, y = torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.zeros(2, 1)
        >>> model.weight.data.fill_(0.0)
        tensor([[0., 0.]])
        >>> hodfunc.per_sample_grad_norms(model, torch.nn.functional.mse_loss, x, y)
        tensor([0., 0.])
        >>> model.weight.data.fill_(1.0)  # loss_i = (x_i1 + x_i2)^2, gradient 2 (x_i1 + x_i2) x_i
        tensor([[1., 1.]])
        >>> hodfunc.per_sample_grad_norms(model, torch.nn.functional.mse_loss, x, y)
        tensor([70.,  2.])
    """
    api = "hodfunc.per_sample_grad_norms"
    chunk = check_chunk_size(api, chunk_size)
    check_functional_module(api, model, loss_fn)
    size = check_batch(api, batch)
    ctx = _capture.make_context(api, model, loss_fn)
    step = chunk or size
    total = batch[0].new_zeros(size, dtype=_dtype(ctx, batch))
    done: set[str] = set()
    with torch.random.fork_rng(devices=[]):
        if ctx.layers:
            for part in _capture.passes(ctx, batch, step):
                if part.mixes or not part.covered:
                    break
                _layer_norms_sq(ctx, part.forms, total[part.start : part.start + part.size])
                done = _capture.covered_params(ctx, part.covered)
        rest = [k for k in ctx.params if k not in done]
        _fallback_norms_sq(ctx, rest, batch, step, total)
    return total.sqrt()


def _dtype(ctx: _capture.Context, batch: tuple[Tensor, ...]) -> torch.dtype:
    """The dtype norms are accumulated in: the parameters' (or the input's, without any)."""
    for p in ctx.params.values():
        return p.dtype
    return batch[0].dtype if batch[0].is_floating_point() else torch.get_default_dtype()


def _clipped_by_vmap(
    ctx: _capture.Context, batch: tuple[Tensor, ...], clip: float
) -> dict[str, Tensor]:
    """The clipped sum from ``vmap(grad)`` per-sample gradients (models that mix samples)."""
    grads = _capture.vmap_grads(ctx, list(ctx.params), batch, None)
    size = batch[0].shape[0]
    norms = torch.stack([g.reshape(size, -1).square().sum(1) for g in grads.values()]).sum(0)
    norms = norms.sqrt()
    weights = torch.where(norms > clip, clip / norms, torch.ones_like(norms))
    return {k: torch.tensordot(weights, g, dims=1) for k, g in grads.items()}


def check_max_norm(api: str, max_norm: object) -> float:
    """Return ``max_norm`` as a float if it is a finite number > 0."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)):
        raise ArgumentTypeError(
            message(api, "max_norm must be a number > 0", f"{max_norm!r}", "Use e.g. max_norm=1.0.")
        )
    if not math.isfinite(max_norm) or max_norm <= 0:
        raise ArgumentError(
            message(
                api,
                "max_norm must be a finite number > 0",
                max_norm,
                "Use e.g. max_norm=1.0; for no clipping sum plain gradients instead.",
            )
        )
    return float(max_norm)


def clipped_grad_sum(
    model: nn.Module, loss_fn: LossFn, *batch: Tensor, max_norm: float
) -> dict[str, Tensor]:
    """The sum over samples of each sample's gradient clipped to norm ``max_norm`` (DP-SGD).

    ``result = sum_i min(1, max_norm / ||g_i||) g_i`` with ``g_i = d loss_i / d theta`` as in
    ``hodfunc.per_sample_grads``. One batched forward and one backward to the layer outputs
    give the ghost norms ``||g_i||`` (``hodfunc.per_sample_grad_norms``) and, with each sample's
    output gradient scaled by ``w_i = min(1, max_norm / ||g_i||)``, the clipped sum of every
    layer with a rule: the reweighted-loss trick, ``grad of sum_i w_i loss_i`` with ``w`` held
    constant, done layer by layer. Parameters without a rule get a second backward of that
    reweighted loss, and their norms from ``vmap(grad)``. Nothing per sample is materialised
    for layers with a rule. Add the noise and divide by the batch size yourself.

    Args:
        model: the module; BatchNorm layers must be in eval mode.
        loss_fn: ``loss_fn(output, *targets)`` returning one number for a batch of one.
        *batch: the model input first, then the loss's extra tensors, all with leading size B.
        max_norm: the clipping threshold C > 0.

    Returns:
        A dict from parameter name to a tensor of the parameter's shape.

    Raises:
        ArgumentError: ``max_norm`` is not a finite number > 0.
        NonFunctionalModuleError: a BatchNorm layer is in training mode.
        ShapeError: the batch tensors disagree in batch size.

    Example:
        >>> import torch, hodfunc
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = model.weight.data.fill_(1.0)
        >>> x, y = torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.zeros(2, 1)
        >>> # gradients (42, 56) and (0, 2), of norms 70 and 2, clipped to (0.6, 0.8) and (0, 1)
        >>> hodfunc.clipped_grad_sum(model, torch.nn.functional.mse_loss, x, y, max_norm=1.0)
        {'weight': tensor([[0.6000, 1.8000]])}
    """
    api = "hodfunc.clipped_grad_sum"
    clip = check_max_norm(api, max_norm)
    check_functional_module(api, model, loss_fn)
    size = check_batch(api, batch)
    ctx = _capture.make_context(api, model, loss_fn)
    total = batch[0].new_zeros(size, dtype=_dtype(ctx, batch))
    with torch.random.fork_rng(devices=[]):
        # the whole batch in one pass; its graph is kept for the reweighted backward of the rest
        (only,) = _capture.passes(ctx, batch, size, retain_graph=True)
        if only.mixes:  # no batched graph to reweight
            return _clipped_by_vmap(ctx, batch, clip)
        forms, losses = only.forms, only.losses
        done = _capture.covered_params(ctx, only.covered)
        rest = [k for k in ctx.params if k not in done]
        _layer_norms_sq(ctx, forms, total)
        _fallback_norms_sq(ctx, rest, batch, size, total)
        norms = total.sqrt()
        weights = torch.where(norms > clip, clip / norms, torch.ones_like(norms)).detach()
        result: dict[str, Tensor] = {}
        for name, f in forms.items():
            layer = ctx.layers[name]
            local = layer.params
            gw, gb = _layers.weighted_sum(f, weights, "weight" in local, "bias" in local)
            for pname, g in (("weight", gw), ("bias", gb)):
                if g is not None:
                    k = local[pname]
                    if k not in result:
                        result[k] = torch.zeros_like(ctx.params[k])
                    into = layer.part(pname, result[k])
                    into.copy_(g.reshape(into.shape))
        if rest:
            with torch.enable_grad():
                grads = torch.autograd.grad(
                    (weights.to(losses.dtype) * losses).sum(),
                    [ctx.params[k] for k in rest],
                    allow_unused=True,
                )
            for k, g in zip(rest, grads, strict=True):
                result[k] = torch.zeros_like(ctx.params[k]) if g is None else g.detach()
    return {k: result[k] for k in ctx.params}
