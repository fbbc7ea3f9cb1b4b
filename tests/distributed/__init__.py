"""hodfunc.distributed on 2 and 3 gloo processes: sharded evaluation, DP-SGD, PINN training."""
