"""``hodfunc.distributed`` on 2 and 3 gloo processes against one process on everything.

One spawn per world size runs every case (``_workers.work``); the tests below compare what each
rank got with the one-process oracle computed here: bitwise for evaluation in float64, 1e-10
for the clipped sum and for the weights after training. 3 ranks split nothing evenly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest
import torch
from helpers import assert_close
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import hodfunc
import hodfunc.distributed as hd
from hodfunc._distributed._batched import shard_bounds

from . import _workers as w
from ._launch import Results, run_ranks

WORLDS = (2, 3)


@contextmanager
def one_thread() -> Iterator[None]:
    """The oracle with the ranks' thread count (each rank runs one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", params=WORLDS, ids=[f"{n}ranks" for n in WORLDS])
def ranks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[Results]:
    world: int = request.param
    folder: Path = tmp_path_factory.mktemp(f"gloo{world}")
    return run_ranks(w.work, world, folder, timeout=150)


def tensor(value: object) -> Tensor:
    assert isinstance(value, Tensor)
    return value


def grads(value: object) -> dict[str, Tensor]:
    assert isinstance(value, dict)
    return {str(k): tensor(v) for k, v in value.items()}


def max_diff(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ------------------------------------------------------------------ batched evaluation


def test_all_gather_is_bitwise_one_process(ranks: list[Results]) -> None:
    with one_thread():
        ref = hodfunc.batched(w.mlp_derivatives(), chunk_size=w.MLP_CHUNK)(w.mlp_points())
    assert ref.shape == (w.MLP_POINTS, 9)
    for got in ranks:
        assert torch.equal(tensor(got["mlp_all"]), ref)


def test_one_rank_gets_the_result_and_the_others_none(ranks: list[Results]) -> None:
    with one_thread():
        ref = hodfunc.batched(w.mlp_derivatives(), chunk_size=w.MLP_CHUNK)(w.mlp_points())
    *others, last = ranks
    assert torch.equal(tensor(last["mlp_one"]), ref)
    assert all(got["mlp_one"] is None for got in others)


def test_shards_are_contiguous_in_rank_order_and_bitwise(ranks: list[Results]) -> None:
    with one_thread():
        ref = hodfunc.batched(w.mlp_derivatives(), chunk_size=w.MLP_CHUNK)(w.mlp_points())
    shards = [got["mlp_shard"] for got in ranks]
    assert all(isinstance(s, hd.Shard) for s in shards)
    stop = 0
    for got, s in zip(ranks, shards, strict=True):
        assert isinstance(s, hd.Shard)
        assert (s.start, s.total) == (stop, w.MLP_POINTS)
        assert s.start % w.MLP_CHUNK == 0  # cut on the one-process chunk grid
        assert torch.equal(s.values, ref[s.start : s.stop])
        assert got["range"] == range(s.start, s.stop)
        stop = s.stop
    assert stop == w.MLP_POINTS
    sizes = [s.stop - s.start for s in shards if isinstance(s, hd.Shard)]
    assert len(set(sizes)) > 1  # the split is uneven, and still exact


def test_without_chunks_each_rank_evaluates_its_share_in_one_call(ranks: list[Results]) -> None:
    """Bitwise equality needs the chunk grid: a whole-batch Taylor propagation of 1001 points
    and of 501 + 500 points differ in the last bits (90 of the 9009 numbers, by up to 2e-14
    relative), so without chunk_size the result agrees to rounding only."""
    with one_thread():
        ref = hodfunc.batched(w.mlp_derivatives())(w.mlp_points())
    for got in ranks:
        assert_close(tensor(got["mlp_none_all"]), ref, rtol=1e-12)


def test_shared_arguments_keywords_and_other_in_dims(ranks: list[Results]) -> None:
    x, weight = w.hessian_args()
    with one_thread():
        ref = hodfunc.batched(w.hessian_fn(), in_dims=(0, None), chunk_size=2)(x, weight, scale=0.5)
        columns = hodfunc.batched(w.hessian_fn(), in_dims=(1, None), chunk_size=2)(
            x.T.contiguous(), weight
        )
    assert ref.shape == (7, 3, 3)
    for got in ranks:
        assert torch.equal(tensor(got["hessian_all"]), ref)
        assert torch.equal(tensor(got["hessian_columns"]), columns)


def test_a_rank_without_points_still_takes_part(ranks: list[Results]) -> None:
    tiny = torch.linspace(0, 1, 5, dtype=w.F64)
    ref = hodfunc.batched(w.sin4(), chunk_size=4)(tiny)
    *others, last = ranks
    for got in ranks:
        assert torch.equal(tensor(got["tiny_all"]), ref)
    assert torch.equal(tensor(last["tiny_one"]), ref)
    assert all(got["tiny_one"] is None for got in others)
    shards = [got["tiny_shard"] for got in ranks]
    assert [(s.start, s.stop) for s in shards if isinstance(s, hd.Shard)][:2] == [(0, 4), (4, 5)]
    if len(ranks) == 3:
        empty = shards[2]
        assert isinstance(empty, hd.Shard)
        assert (empty.start, empty.stop, tuple(empty.values.shape)) == (5, 5, (0,))


# ------------------------------------------------------------------ DP-SGD


def dp_reference(size: int) -> dict[str, Tensor]:
    x, y = w.dp_batch(w.DP_SIZE)
    return hodfunc.clipped_grad_sum(w.dp_model(), w.dp_loss, x[:size], y[:size], max_norm=w.DP_CLIP)


def test_the_oracle_clips_some_samples_and_not_others() -> None:
    x, y = w.dp_batch(w.DP_SIZE)
    norms = hodfunc.per_sample_grad_norms(w.dp_model(), w.dp_loss, x, y)
    assert bool((norms > w.DP_CLIP).any())
    assert bool((norms < w.DP_CLIP).any())


def test_clipped_sum_over_ranks_is_the_one_process_sum(ranks: list[Results]) -> None:
    ref = dp_reference(w.DP_SIZE)
    for got in ranks:
        assert max_diff(grads(got["dp_plain"]), ref) < 1e-10


def test_noise_is_added_once_from_the_seeded_generator(ranks: list[Results]) -> None:
    ref = dp_reference(w.DP_SIZE)
    noise = w.dp_noise(ref)
    noisy = {k: ref[k] + noise[k] for k in ref}
    for got in ranks:
        assert max_diff(grads(got["dp_noisy"]), noisy) < 1e-10
    assert max_diff(grads(ranks[0]["dp_noisy"]), grads(ranks[-1]["dp_noisy"])) == 0.0


def test_an_empty_share_adds_nothing(ranks: list[Results]) -> None:
    ref = dp_reference(2)
    for got in ranks:
        assert max_diff(grads(got["dp_two"]), ref) < 1e-10


# ------------------------------------------------------------------ PINN training


def test_pinn_training_with_all_reduce_gives_one_process_weights(ranks: list[Results]) -> None:
    with one_thread():
        ref = w.train_alone()
    start = w.pinn_net().state_dict()
    assert max_diff(ref, start) > 1e-3  # the steps moved the weights
    for got in ranks:
        assert max_diff(grads(got["pinn_all_reduce"]), ref) < 1e-10


def test_pinn_training_with_ddp_around_the_residual(ranks: list[Results]) -> None:
    with one_thread():
        ref = w.train_alone()
    for got in ranks:
        assert max_diff(grads(got["pinn_ddp"]), ref) < 1e-10


# ------------------------------------------------------------------ errors on every rank


def test_ranks_with_different_points_all_raise(ranks: list[Results]) -> None:
    for got in ranks:
        kind, text = cast("tuple[str, str]", got["totals"])
        assert kind == "ShapeError"
        assert "every rank must pass the same points" in text
        assert "rank 0: 6, rank 1: 7" in text


def test_one_failing_rank_stops_every_rank(ranks: list[Results]) -> None:
    for r, got in enumerate(ranks):
        kind, text, failed = cast("tuple[str, str, int | None]", got["one_fails"])
        if r == 1:
            assert kind != "RankError"
            assert failed is None
        else:
            assert kind == "RankError"
            assert failed == 1
            assert "rank 1 of the process group failed" in text


def test_ddp_inside_a_transform_and_ddp_in_all_reduce_are_refused(ranks: list[Results]) -> None:
    for got in ranks:
        text = got["ddp_in_transform"]
        assert isinstance(text, str)
        assert text.startswith("hodfunc.distributed.batched: fn must not call a Distributed")
        assert "ddp.module" in text
        text = got["ddp_all_reduce"]
        assert isinstance(text, str)
        assert "not a DistributedDataParallel module" in text
        text = got["ddp_in_plain_transform"]
        assert isinstance(text, str)
        assert text.startswith("hodfunc.laplacian: a DistributedDataParallel module cannot run")


# ------------------------------------------------------------------ one process, no group


def test_without_a_process_group_the_error_says_what_to_do() -> None:
    d1 = hd.batched(hodfunc.derivative(torch.sin, order=1))
    with pytest.raises(hodfunc.ArgumentError, match=r"needs an initialised torch\.distributed"):
        d1(torch.zeros(3))
    with pytest.raises(hodfunc.ArgumentError, match="init_process_group"):
        hd.shard_range(3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"result": "some"}, 'result must be "all"'),
        ({"dst": -1}, "dst must be an int >= 0"),
        ({"chunk_size": 0}, "chunk_size must be None or an int >= 1"),
        ({"in_dims": "0"}, "in_dims must be an int, None, or a tuple"),
    ],
    ids=["result", "dst", "chunk_size", "in_dims"],
)
def test_options_are_checked_when_built(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(hodfunc.HodfuncError, match=match):
        hd.batched(torch.sin, **kwargs)  # type: ignore[call-overload]


def test_noise_needs_a_generator() -> None:
    model, (x, y) = w.dp_model(), w.dp_batch(2)
    with pytest.raises(hodfunc.ArgumentTypeError, match="needs a seeded generator"):
        hd.clipped_grad_sum(model, w.dp_loss, x, y, max_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(hodfunc.ArgumentError, match="noise_multiplier must be a finite number"):
        hd.clipped_grad_sum(model, w.dp_loss, x, y, max_norm=1.0, noise_multiplier=-1.0)


@given(
    total=st.integers(0, 10_000),
    chunk=st.one_of(st.none(), st.integers(1, 3000)),
    world=st.integers(1, 9),
)
def test_the_split_is_contiguous_on_the_chunk_grid_and_balanced(
    total: int, chunk: int | None, world: int
) -> None:
    bounds = shard_bounds(total, chunk, world)
    assert len(bounds) == world
    assert bounds[0][0] == 0
    assert bounds[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    unit = chunk or 1
    assert all(start % unit == 0 or start == total for start, _ in bounds)
    units = [-(-(stop - start) // unit) for start, stop in bounds]
    assert max(units) - min(units) <= 1
    assert units == sorted(units, reverse=True)  # the first ranks take the extra chunks
