"""Gradients over the ranks: the DP-SGD clipped sum, and the plain gradient sum of a training
step whose loss uses hodfunc transforms (a PINN residual) on a network without DDP."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributed import ProcessGroup

from .._errors import ArgumentError, ArgumentTypeError, ShapeError, message
from .._per_sample._capture import LossFn
from .._per_sample._grads import check_functional_module
from .._per_sample._norms import check_max_norm
from .._per_sample._norms import clipped_grad_sum as local_clipped_grad_sum
from ._ddp import refuse_ddp_model
from ._group import agree, resolve, sum_in_place


def _check_noise(api: str, noise_multiplier: object, generator: object) -> float:
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)):
        raise ArgumentTypeError(
            message(api, "noise_multiplier must be a number >= 0", repr(noise_multiplier))
        )
    sigma = float(noise_multiplier)
    if not math.isfinite(sigma) or sigma < 0:
        raise ArgumentError(
            message(api, "noise_multiplier must be a finite number >= 0", noise_multiplier)
        )
    if sigma > 0 and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(
            message(
                api,
                "noise_multiplier > 0 needs a seeded generator, so the noise can be reproduced",
                f"generator={generator!r}",
                "Pass generator=torch.Generator().manual_seed(seed) (only rank 0 draws from it).",
            )
        )
    return sigma


def _signature(grads: dict[str, Tensor]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((k, tuple(g.shape), str(g.dtype)) for k, g in grads.items())


def clipped_grad_sum(
    model: nn.Module,
    loss_fn: LossFn,
    *batch: Tensor,
    max_norm: float,
    noise_multiplier: float = 0.0,
    generator: torch.Generator | None = None,
    group: ProcessGroup | None = None,
) -> dict[str, Tensor]:
    """The DP-SGD clipped gradient sum of a batch split over the ranks, noise added once.

    Each rank passes its own share of the batch (``hodfunc.distributed.shard_range`` splits
    one; a share may be empty) and the same model. Rank ``r`` computes
    ``hodfunc.clipped_grad_sum`` of its share, and one all-reduce sums the shares, so every
    rank gets ``sum_i min(1, C / ||g_i||) g_i`` over the whole batch, as one process would
    (clipping is per sample, so the split does not change it). With ``noise_multiplier``
    sigma > 0, group rank 0 adds ``sigma * C * N(0, I)`` to its share before the sum, drawing
    ``torch.randn(p.shape, generator=generator)`` for each parameter in the order of
    ``model.named_parameters()`` (on the generator's device, then moved): the noise enters the
    sum exactly once, and the same seed reproduces it in one process. Divide by the batch size
    and step the optimizer yourself; the result is the same on every rank.

    Args:
        model: the module (the plain network, not a DDP wrapper), the same on every rank.
        loss_fn: ``loss_fn(output, *targets)``, as for ``hodfunc.clipped_grad_sum``.
        *batch: this rank's share: the model input first, then the loss's extra tensors.
        max_norm: the clipping threshold C > 0.
        noise_multiplier: sigma >= 0; the noise's standard deviation is ``sigma * C``.
        generator: a seeded ``torch.Generator``, needed when sigma > 0 (only rank 0 uses it).
        group: the process group (default: the default group).

    Returns:
        A dict from parameter name to a tensor of the parameter's shape, equal on every rank.

    Raises:
        ArgumentError: no process group, ``max_norm`` or ``noise_multiplier`` out of range.
        ArgumentTypeError: ``model`` is a ``DistributedDataParallel`` module, or sigma > 0
            without a generator.
        ShapeError: the whole batch (over all ranks) is empty, or a share is malformed.
        RankError: another rank failed on its share (every rank raises, none hangs).

    Example:
        >>> import tempfile, torch, torch.distributed as dist, hodfunc.distributed as hd
        >>> store = dist.FileStore(tempfile.mktemp(), 1)
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = model.weight.data.fill_(1.0)
        >>> x, y = torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.zeros(2, 1)
        >>> hd.clipped_grad_sum(model, torch.nn.functional.mse_loss, x, y, max_norm=1.0)
        {'weight': tensor([[0.6000, 1.8000]])}
        >>> dist.destroy_process_group()
    """
    api = "hodfunc.distributed.clipped_grad_sum"
    clip = check_max_norm(api, max_norm)
    sigma = _check_noise(api, noise_multiplier, generator)
    refuse_ddp_model(api, model)
    g = resolve(api, group)
    error: Exception | None = None
    local: dict[str, Tensor] = {}
    size = 0
    try:
        size = batch[0].shape[0] if batch and isinstance(batch[0], Tensor) else -1
        if size == 0:  # an empty share adds nothing (hodfunc.clipped_grad_sum refuses it)
            check_functional_module(api, model, loss_fn)
            local = {k: torch.zeros_like(p) for k, p in model.named_parameters() if p.requires_grad}
        else:
            local = local_clipped_grad_sum(model, loss_fn, *batch, max_norm=clip)
    except Exception as e:
        error = e
    shares = agree(api, g, error, (size, _signature(local)))
    if sum(s for s, _ in shares) == 0:
        raise ShapeError(
            message(
                api,
                "the batch over all ranks must hold at least one sample",
                f"every one of the {g.size} ranks passed an empty share",
                "Skip empty batches before the call.",
            )
        )
    if len({sig for _, sig in shares}) != 1:
        raise ShapeError(
            message(
                api,
                "every rank must pass the same model (same trainable parameters and shapes)",
                ", ".join(f"rank {r}: {len(sig)} parameters" for r, (_, sig) in enumerate(shares)),
                "Build the model the same way on every rank.",
            )
        )
    if sigma > 0 and g.rank == 0:
        assert generator is not None
        std = sigma * clip
        for value in local.values():
            noise = torch.randn(
                value.shape, generator=generator, dtype=value.dtype, device=generator.device
            )
            value.add_(noise.to(value.device), alpha=std)
    sum_in_place(g, list(local.values()))
    return local


def all_reduce_grads(model: nn.Module, *, group: ProcessGroup | None = None) -> None:
    """Sum every parameter's ``.grad`` over the ranks, in place (one all-reduce per dtype).

    The gradient all-reduce of a training step without DDP, for a loss that calls hodfunc
    transforms on ``model`` (a DDP module cannot be called inside them). Each rank computes its
    share of the loss, normalised by the *global* number of points (``sum_local / N``, not the
    local mean, so uneven shares are exact), calls ``backward()``, then this; every rank then
    holds the gradient of the whole loss and takes the same optimizer step. Parameters without
    a gradient on every rank are left alone; every rank must have the same ones.

    Args:
        model: the plain network (not a ``DistributedDataParallel`` module), the same on every
            rank.
        group: the process group (default: the default group).

    Raises:
        ArgumentError: no process group is initialised.
        ArgumentTypeError: ``model`` is a DDP module (whose backward already averaged).
        ShapeError: the ranks disagree on which parameters have a gradient, or their shapes.

    Example:
        >>> import tempfile, torch, torch.distributed as dist, hodfunc.distributed as hd
        >>> store = dist.FileStore(tempfile.mktemp(), 1)
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = model.weight.data.fill_(2.0)
        >>> model(torch.tensor([[3.0]])).sum().backward()
        >>> hd.all_reduce_grads(model)  # one rank: the sum of one gradient
        >>> model.weight.grad
        tensor([[3.]])
        >>> dist.destroy_process_group()
    """
    api = "hodfunc.distributed.all_reduce_grads"
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(
            message(api, "model must be an nn.Module", type(model).__name__, "Pass the network.")
        )
    refuse_ddp_model(api, model)
    g = resolve(api, group)
    present = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    views = agree(api, g, None, _signature(present))
    if len(set(views)) != 1:
        raise ShapeError(
            message(
                api,
                "every rank must have gradients for the same parameters, of the same shapes",
                ", ".join(f"rank {r}: {[k for k, _, _ in v]}" for r, v in enumerate(views)),
                "Run the same loss on every rank (an empty share still needs a backward "
                "through every parameter, e.g. of 0 * model(x).sum()).",
            )
        )
    sum_in_place(g, list(present.values()))
