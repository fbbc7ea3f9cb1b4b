"""Per-sample gradients of an ``nn.Module``'s loss, without touching ``.grad``.

Layers with a rule (``_layers``) get their per-sample gradients from one batched forward and
backward (``_capture``); every other parameter falls back to ``vmap(grad(functional_call))``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .._allocator import empty_result
from .._errors import (
    ArgumentError,
    ArgumentTypeError,
    NonFunctionalModuleError,
    ShapeError,
    message,
)
from .._validate import check_chunk_size, check_dense
from . import _capture, _layers
from ._capture import LossFn as LossFn
from ._capture import random_module_error


def check_model(api: str, model: object, loss_fn: object) -> None:
    """Raise unless ``model`` is an ``nn.Module`` and ``loss_fn`` is callable."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(
            message(
                api,
                "model must be a torch.nn.Module (its trainable parameters are differentiated)",
                f"{model!r} of type {type(model).__name__}",
                "Pass the module itself; for a plain function of parameters use "
                "torch.func.vmap(torch.func.grad(f)).",
            )
        )
    if not callable(loss_fn):
        raise ArgumentTypeError(
            message(
                api,
                "loss_fn must be a callable loss_fn(output, *targets) returning one number",
                f"{loss_fn!r} of type {type(loss_fn).__name__}",
                "Pass the function, e.g. torch.nn.functional.mse_loss or torch.nn.MSELoss(), "
                "not its name.",
            )
        )


def check_per_sample_module(api: str, model: nn.Module, loss_fn: object) -> None:
    """Raise if ``model`` is no module, ``loss_fn`` no callable, or a submodule mixes samples or
    draws random numbers, so that per-sample gradients are not defined."""
    check_model(api, model, loss_fn)
    for name, module in model.named_modules():
        random = isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
        if (random or isinstance(module, nn.RReLU)) and module.training:
            raise random_module_error(
                api, f"{name or 'the model'} ({type(module).__name__}, training=True)"
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise NonFunctionalModuleError(
                message(
                    api,
                    "BatchNorm in training mode mixes the samples of a batch, so per-sample "
                    "gradients are undefined",
                    f"{name or 'the model'} ({type(module).__name__}, training=True)",
                    "Call model.eval() to use the running statistics, or replace BatchNorm with "
                    "GroupNorm or LayerNorm.",
                )
            )


def check_batch(api: str, batch: tuple[Tensor, ...]) -> int:
    """Return the common batch size of ``batch``'s tensors, or raise naming every size."""
    if not batch:
        raise ArgumentError(
            message(
                api,
                "pass the batch: per_sample_grads(model, loss_fn, inputs, targets, ...)",
                "no batch tensors",
            )
        )
    sizes = []
    for i, b in enumerate(batch):
        if not isinstance(b, Tensor) or b.dim() == 0:
            raise ShapeError(
                message(
                    api,
                    f"batch tensor {i} must be a tensor with a leading batch dimension",
                    repr(b) if not isinstance(b, Tensor) else "a 0-d tensor",
                )
            )
        check_dense(api, b, f"batch tensor {i}")
        sizes.append(b.shape[0])
    if len(set(sizes)) != 1:
        raise ShapeError(
            message(
                api,
                "every batch tensor must have the same leading batch size",
                sizes,
                "Check that inputs and targets come from the same batch.",
            )
        )
    if sizes[0] == 0:
        raise ShapeError(
            message(
                api,
                "the batch must hold at least one sample",
                f"batch size 0 (shapes {[tuple(b.shape) for b in batch]})",
                "Skip empty batches before the call (e.g. if len(x) == 0: continue).",
            )
        )
    return sizes[0]


def check_functional_module(api: str, model: nn.Module, loss_fn: object) -> None:
    """Raise for modules that write to their own parameters in forward (so cannot run purely),
    and everything ``check_per_sample_module`` refuses."""
    check_per_sample_module(api, model, loss_fn)
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.max_norm is not None:
            raise NonFunctionalModuleError(
                message(
                    api,
                    "Embedding with max_norm renormalises its weight in place during forward",
                    f"{name or 'the model'} (max_norm={module.max_norm})",
                    "Set max_norm=None (renormalise the weight yourself between steps).",
                )
            )


def check_out(
    api: str, out: object, params: Mapping[str, Tensor], size: int
) -> dict[str, Tensor] | None:
    """Return ``out`` if it holds, for every trainable parameter, a writable ``(B, *shape)``
    contiguous tensor of the parameter's dtype and device."""
    if out is None:
        return None
    if not isinstance(out, Mapping):
        raise ArgumentTypeError(
            message(
                api,
                "out must be a dict from parameter name to tensor",
                type(out).__name__,
                "Pass the dict a previous call returned.",
            )
        )
    if set(out) != set(params):
        raise ArgumentError(
            message(
                api,
                "out must have exactly one entry per trainable parameter",
                f"missing {sorted(set(params) - set(out))}, extra {sorted(set(out) - set(params))}",
                "Pass the dict a previous call on the same model returned.",
            )
        )
    for k, p in params.items():
        t = out[k]
        want = (size, *p.shape)
        if not isinstance(t, Tensor):
            raise ArgumentTypeError(message(api, f"out[{k!r}] must be a tensor", type(t).__name__))
        if tuple(t.shape) != want or t.dtype != p.dtype or t.device != p.device:
            raise ShapeError(
                message(
                    api,
                    f"out[{k!r}] must have shape {want}, dtype {p.dtype} and device {p.device}",
                    f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}",
                    "Reuse the result of a call with the same batch size, or pass out=None.",
                )
            )
        if not t.is_contiguous() or t.requires_grad:
            raise ArgumentError(
                message(
                    api,
                    f"out[{k!r}] must be contiguous and must not require grad",
                    f"contiguous={t.is_contiguous()}, requires_grad={t.requires_grad}",
                    "Allocate it with torch.empty(...), or reuse a previous result.",
                )
            )
    return dict(out)


def per_sample_grads(
    model: nn.Module,
    loss_fn: LossFn,
    *batch: Tensor,
    chunk_size: int | None = None,
    out: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The gradient of each sample's loss with respect to each trainable parameter.

    Entry ``i`` of ``result[name]`` is ``d loss_i / d param`` with
    ``loss_i = loss_fn(model(batch[0][i:i+1]), *(b[i:i+1] for b in batch[1:]))``. For Linear,
    Conv1d/2d/3d (``groups=1``), Embedding, LayerNorm, RMSNorm, GroupNorm and
    MultiheadAttention (its packed or separate in-projections and its out-projection, so also
    TransformerEncoderLayer and TransformerDecoderLayer) it is read off one batched forward and
    backward: ``grad W_i = sum_t delta_it a_it^T`` from the layer's input ``a`` and output
    gradient ``delta``. Every other parameter (BatchNorm's affine, weights shared between layers,
    custom parameters) falls back to ``vmap(grad(functional_call))``, for those parameters
    only. The batched pass assumes the
    model treats samples independently and checks it against a forward of sample 0 alone (it
    falls back if not). ``.grad``, parameters, buffers, the module's mode and the RNG state are
    left as they were; large results are allocated on huge pages where the OS allows, which
    changes nothing outside them.

    Args:
        model: the module; BatchNorm layers must be in eval mode.
        loss_fn: ``loss_fn(output, *targets)`` returning one number for a batch of one.
        *batch: the model input first, then the loss's extra tensors, all with leading size B.
        chunk_size: samples per batched pass and per vmap call. Peak memory is the result
            (``B`` times the trainable parameters) plus what one batched forward and backward of
            ``chunk_size`` samples holds (activations, output gradients, for convolutions one
            chunk of per-sample weight gradients), plus vmap's working set for ``chunk_size``
            samples when some parameters fall back. ``None``: the whole batch at once.
        out: a previous result (or tensors laid out like it) to write into, so that a training
            loop allocates the ``(B, *param.shape)`` buffers once. They are overwritten; this is
            the one argument hodfunc writes to.

    Returns:
        A dict from parameter name to a tensor of shape ``(B, *param.shape)`` (``out``'s tensors
        when given).

    Raises:
        NonFunctionalModuleError: a BatchNorm layer is in training mode.
        ShapeError: the batch tensors disagree in batch size, or ``out`` does not fit.
        ArgumentError: a bad ``chunk_size`` or ``out``.

    Example:
        >>> import torch, hodfunc
        >>> model = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> grads = hodfunc.per_sample_grads(model, torch.nn.functional.mse_loss, x, y)
        >>> grads["weight"].shape
        torch.Size([8, 1, 3])
        >>> grads = hodfunc.per_sample_grads(model, torch.nn.functional.mse_loss, x, y, out=grads)
        >>> grads["bias"].shape
        torch.Size([8, 1])
    """
    api = "hodfunc.per_sample_grads"
    chunk = check_chunk_size(api, chunk_size)
    check_functional_module(api, model, loss_fn)
    size = check_batch(api, batch)
    ctx = _capture.make_context(api, model, loss_fn)
    buffers = check_out(api, out, ctx.params, size)
    result: dict[str, Tensor] = {}
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # also under a caller's no_grad
        done = _batched_grads(ctx, batch, size, chunk, buffers, result)
        rest = [k for k in ctx.params if k not in done]
        for k, g in _capture.vmap_grads(ctx, rest, batch, chunk).items():
            result[k] = g if buffers is None else buffers[k].copy_(g)
    return {k: result[k] for k in ctx.params}


def _batched_grads(
    ctx: _capture.Context,
    batch: tuple[Tensor, ...],
    size: int,
    chunk: int | None,
    buffers: dict[str, Tensor] | None,
    result: dict[str, Tensor],
) -> set[str]:
    """Fill ``result`` for the parameters the batched pass covers; return their names."""
    if not ctx.layers:
        return set()
    covered: set[str] = set()
    for done in _capture.passes(ctx, batch, chunk or size):
        if done.mixes or not done.covered:
            return set()
        if done.start == 0:
            covered = _capture.covered_params(ctx, done.covered)
            for k in covered:
                p = ctx.params[k]
                result[k] = buffers[k] if buffers is not None else empty_result((size, *p.shape), p)
        rows = slice(done.start, done.start + done.size)
        for name, form in done.forms.items():
            layer = ctx.layers[name]
            w, b = layer.param("weight"), layer.param("bias")
            _layers.write(
                form,
                None if w is None else layer.part("weight", result[w][rows], 1),
                None if b is None else layer.part("bias", result[b][rows], 1),
            )
    return covered
