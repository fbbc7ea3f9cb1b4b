"""hodfunc on ``torch.distributed``: sharded batch evaluation, gradient sums, the DP-SGD step.

``_group`` holds every ``torch.distributed`` call; ``_batched`` the sharded ``batched``;
``_grads`` the clipped sum and the gradient all-reduce; ``_ddp`` the DDP guard. The public
names are re-exported by ``hodfunc.distributed``.
"""
