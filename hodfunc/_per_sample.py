"""Per-sample gradients of an ``nn.Module``'s loss, without touching ``.grad``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ._errors import ArgumentError, NonFunctionalModuleError, ShapeError, message
from ._validate import check_chunk_size, check_output

LossFn = Callable[..., Tensor]


def check_per_sample_module(api: str, model: nn.Module) -> None:
    """Raise if a submodule mixes samples, so that per-sample gradients are not defined."""
    for name, module in model.named_modules():
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
    return sizes[0]


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """The model's trainable parameters by name, detached: the variables we differentiate."""
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def per_sample_grads(
    model: nn.Module,
    loss_fn: LossFn,
    *batch: Tensor,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """The gradient of each sample's loss with respect to each trainable parameter.

    Entry ``i`` of ``result[name]`` is the gradient of
    ``loss_fn(model(batch[0][i:i+1]), *(b[i:i+1] for b in batch[1:]))``, computed as
    ``vmap(grad(functional_call))``. ``.grad``, parameters, buffers and the module's mode are left
    as they were. ``chunk_size`` bounds how many samples are processed at once.

    Returns:
        A dict from parameter name to a tensor of shape ``(B, *param.shape)``.

    Raises:
        NonFunctionalModuleError: a BatchNorm layer is in training mode.
        ShapeError: the batch tensors disagree in batch size.

    Example:
        >>> import torch, hodfunc
        >>> model = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> grads = hodfunc.per_sample_grads(model, torch.nn.functional.mse_loss, x, y)
        >>> grads["weight"].shape
        torch.Size([8, 1, 3])
    """
    api = "hodfunc.per_sample_grads"
    chunk = check_chunk_size(api, chunk_size)
    check_per_sample_module(api, model)
    check_batch(api, batch)
    params = trainable(model)
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def sample_loss(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
        one = [s.unsqueeze(0) for s in sample]
        out = functional_call(model, (p, buffers), (one[0],))
        loss = check_output(api, loss_fn(out, *one[1:]))
        if loss.numel() != 1:
            raise ShapeError(
                message(
                    api,
                    "loss_fn must return a single number per sample",
                    f"shape {tuple(loss.shape)}",
                    "Use reduction='sum' or 'mean'.",
                )
            )
        return loss.reshape(())

    in_dims = (None,) + (0,) * len(batch)
    with torch.enable_grad():
        result: dict[str, Tensor] = vmap(grad(sample_loss), in_dims=in_dims, chunk_size=chunk)(
            params, *batch
        )
    return result
