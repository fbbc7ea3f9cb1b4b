"""``hodfunc.partials``: several partials from one multivariate jet, against independent oracles
(nested torch.func, sympy), composed with the transforms a PINN uses, and the guards around it
(the per-element batch warning, the trace cache across transform objects, a backward that pays
only for the rows it reads)."""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Callable

import pytest
import sympy as sp
import torch
from helpers import assert_close, mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call, vmap

import hodfunc
from hodfunc._taylor import _trace

F64 = torch.float64
NET = mlp(3, 8, 1, "tanh")


def u(z: Tensor) -> Tensor:
    out: Tensor = NET(z)[0]
    return out


def nested(f: Callable[[Tensor], Tensor], wrt: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    return vmap(hodfunc.partial(f, wrt=wrt, method="nested"))


POINTS = torch.rand(16, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

terms = st.lists(
    st.lists(st.integers(0, 2), min_size=0, max_size=4).map(lambda t: tuple(sorted(t))),
    min_size=1,
    max_size=5,
)


@settings(max_examples=25, deadline=None)
@given(terms)
def test_every_term_equals_its_nested_partial(wrt: list[tuple[int, ...]]) -> None:
    got = vmap(hodfunc.partials(u, wrt, method="taylor"))(POINTS)
    assert isinstance(got, tuple)
    assert len(got) == len(wrt)
    for term, value in zip(wrt, got, strict=True):
        assert_close(value, nested(u, term)(POINTS))


def test_a_mapping_gives_a_dict_and_a_vector_output_gives_vectors() -> None:
    net = mlp(3, 8, 3, "sin")
    f = lambda z: net(z)  # noqa: E731
    wrt = {"q": (), "q_x": (0,), "q_xy": (0, 1), "q_tt": (2, 2)}
    got = vmap(hodfunc.partials(f, wrt))(POINTS)
    assert list(got) == list(wrt)
    for name, term in wrt.items():
        assert got[name].shape == (16, 3)
        assert_close(got[name], nested(f, term)(POINTS))


def test_exact_against_sympy_where_interpolation_would_cancel() -> None:
    """The coordinates' derivatives differ by orders of magnitude; each partial is its own row of
    the jet, so nothing cancels (the Griewank-Utke-Walther sum loses digits here)."""
    a, b = sp.symbols("a b")
    expr = sp.exp(sp.Rational(1, 100) * a) * sp.sin(30 * b)
    point = {a: sp.Rational(3, 10), b: sp.Rational(7, 10)}
    f = lambda z: torch.exp(0.01 * z[0]) * torch.sin(30 * z[1])  # noqa: E731
    wrt = [(0, 0, 0, 1), (0, 1, 1, 1), (0, 0, 1, 1), (1, 1, 1, 1)]
    got = hodfunc.partials(f, wrt)(torch.tensor([0.3, 0.7], dtype=F64))
    for term, value in zip(wrt, got, strict=True):
        exact = float(sp.diff(expr, *[(a, b)[i] for i in term]).subs(point))
        assert float(value) == pytest.approx(exact, rel=1e-13, abs=0)


def test_partial_of_a_low_order_mixed_index_is_one_jet_and_exact() -> None:
    f = lambda z: torch.exp(0.01 * z[0]) * torch.sin(3 * z[1])  # noqa: E731
    x = torch.tensor([0.2, 0.4], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = hodfunc.partial(f, wrt=(0, 0, 0, 1))(x)
    exact = 0.01**3 * math.exp(0.002) * 3 * math.cos(1.2)
    assert float(got) == pytest.approx(exact, rel=1e-14, abs=0)


def test_composes_with_batched_grad_over_weights_and_autograd() -> None:
    net = mlp(3, 8, 1, "tanh")
    params = {k: v.detach() for k, v in net.named_parameters()}
    wrt = {"u": (), "u_t": (2,), "u_xx": (0, 0), "u_xy": (0, 1)}

    def loss(p: dict[str, Tensor], method: hodfunc.Method) -> Tensor:
        def f(z: Tensor) -> Tensor:
            out: Tensor = functional_call(net, p, (z,))[0]
            return out

        d = hodfunc.batched(hodfunc.partials(f, wrt, method=method), chunk_size=5)(POINTS)
        return (d["u_t"] - 0.1 * d["u_xx"] + d["u_xy"] * d["u"]).pow(2).mean()

    ref = torch.func.grad(lambda p: loss(p, "nested"))(params)
    got = torch.func.grad(lambda p: loss(p, "taylor"))(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    grads = torch.autograd.grad(loss(leaves, "taylor"), list(leaves.values()))
    for (name, g), a in zip(got.items(), grads, strict=True):
        assert_close(g, ref[name])
        assert_close(a, ref[name])


def test_nested_and_auto_agree_and_auto_falls_back_once() -> None:
    f = lambda z: torch.special.bessel_j0(z[0]) * z[1]  # noqa: E731  (no Taylor rule)
    x = torch.tensor([0.5, 2.0], dtype=F64)
    with pytest.warns(hodfunc.FallbackWarning, match="bessel_j0"):
        got = hodfunc.partials(f, {"a": (0,), "b": (0, 1)})(x)
    ref = hodfunc.partials(f, {"a": (0,), "b": (0, 1)}, method="nested")(x)
    assert_close(got["a"], ref["a"])
    assert_close(got["b"], ref["b"])
    with pytest.raises(hodfunc.UnsupportedOperationError, match="bessel_j0"):
        hodfunc.partials(f, [(0,)], method="taylor")(x)


@pytest.mark.parametrize(
    ("wrt", "error", "match"),
    [
        ({}, hodfunc.ArgumentError, "at least one partial"),
        ([], hodfunc.ArgumentError, "at least one partial"),
        ("u_x", hodfunc.ArgumentTypeError, "mapping from names"),
        ((0, 1), hodfunc.ArgumentTypeError, "sequence of flat indices"),
        ({1: (0,)}, hodfunc.ArgumentTypeError, "names in wrt must be strings"),
        ({"u": (0, -1)}, hodfunc.ArgumentError, "int >= 0"),
    ],
)
def test_bad_wrt_is_refused_with_the_fix(wrt: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=f"hodfunc.partials: .*{match}"):
        hodfunc.partials(u, wrt)  # type: ignore[call-overload]


def test_an_index_out_of_range_is_refused_at_call_time() -> None:
    with pytest.raises(hodfunc.ArgumentError, match=r"hodfunc\.partials"):
        hodfunc.partials(u, [(0,), (5,)])(POINTS[0])


# ------------------------------------------------------------------ the per-element warning


def test_a_batch_without_vmap_warns_with_the_fix() -> None:
    f = lambda z: (z**3).sum(-1)  # noqa: E731  (sums over the last dim: runs on a batch too)
    for transform in (hodfunc.partial(f, wrt=(0, 0)), hodfunc.partials(f, [(), (1,)])):
        with pytest.warns(hodfunc.BatchWarning, match=r"torch.func.vmap\(transform\)"):
            transform(POINTS)


def test_the_batch_warning_stays_quiet_on_a_matrix_argument_and_under_vmap() -> None:
    f = lambda z: (z**3).sum(-1)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vmap(hodfunc.partial(f, wrt=(0, 0)))(POINTS)
        hodfunc.partial(lambda a: torch.linalg.det(a), wrt=(0, 4), method="nested")(
            POINTS[:3].clone()
        )
        hodfunc.partial(lambda a: a @ a.T, wrt=(0,))(POINTS[:3].clone())  # rows 1.. nonzero
        hodfunc.partials(f, [(3,)])(POINTS)  # an index past row 0


# ------------------------------------------------------------------ the trace cache


def _built_in_the_loop(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    return hodfunc.partials(fn, {"d": (0, 1)}, method="taylor")(x)["d"]


def test_a_transform_built_on_every_call_traces_once() -> None:
    net = mlp(3, 8, 1, "tanh")
    before = _trace.TRACES[0]
    for _ in range(4):
        _built_in_the_loop(lambda z: net(z)[0], POINTS[0])
    assert _trace.TRACES[0] - before == 1


def test_the_cache_across_transform_objects_is_never_stale() -> None:
    x = POINTS[0]

    def ref(fn: Callable[[Tensor], Tensor]) -> Tensor:
        return nested(fn, (0, 1))(x.unsqueeze(0))[0]

    scale = 1.0  # a Python number that changes
    for scale in (1.0, 2.0, 3.0):

        def fn(z: Tensor) -> Tensor:
            return torch.sin(scale * z[0] * z[1])  # noqa: B023  (read at call time: the point)

        assert_close(_built_in_the_loop(fn, x), ref(fn))

    net = mlp(3, 8, 1, "tanh")  # a module whose weights change in place

    def of_net(z: Tensor) -> Tensor:
        out: Tensor = net(z)[0]
        return out

    first = _built_in_the_loop(of_net, x)
    with torch.no_grad():
        net.l1.weight.mul_(1.5)
    second = _built_in_the_loop(of_net, x)
    assert not torch.equal(first, second)
    assert_close(second, ref(of_net))

    other = mlp(3, 8, 1, "tanh", seed=1)  # another module of the same class
    for module in (net, other, net):

        def of_module(z: Tensor) -> Tensor:
            out: Tensor = module(z)[0]  # noqa: B023
            return out

        assert_close(_built_in_the_loop(of_module, x), ref(of_module))

    def make(k: float) -> Callable[[Tensor], Tensor]:  # a different function, the same code
        return lambda z: torch.tanh(k * z[0]) * z[1] ** 2

    for k in (0.5, 2.0):
        assert_close(_built_in_the_loop(make(k), x), ref(make(k)))


# ------------------------------------------------------------------ what the backward pays for


def test_the_backward_zero_fills_no_gradient_of_a_whole_jet() -> None:
    """A training step's backward must not allocate or zero-fill full-size gradients for rows
    nobody reads: a select or slice of the jet does (``fill_`` of the whole jet, four rows here,
    once per select). A gradient that reaches some of the first-order rows only (the squares of
    ``u_xx`` read the x row, not the t row) is still zero-filled where it does not reach: that
    costs at most those rows, two here."""
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    params: dict[str, Tensor] = dict(net.named_parameters())
    X = torch.rand(256, 2)

    def f(z: Tensor) -> Tensor:
        out: Tensor = functional_call(net, params, (z,))[0]
        return out

    d = vmap(hodfunc.partials(f, {"u": (), "u_t": (1,), "u_xx": (0, 0)}))(X)
    loss = (d["u_t"] - d["u_xx"] + d["u"] ** 3).pow(2).mean()
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.autograd.grad(loss, list(params.values()))
    jet = 4 * 256 * 64  # rows 1, t, x, xx of the widest layer
    fills = [
        e.input_shapes[0]
        for e in prof.events()
        if e.name in ("aten::fill_", "aten::zero_") and e.input_shapes and e.input_shapes[0]
    ]
    big = [shape for shape in fills if math.prod(shape) >= jet]
    assert not big, big


def test_an_overflowing_partial_warns() -> None:
    f = lambda z: torch.exp(60 * z[0]) * z[1]  # noqa: E731
    with pytest.warns(hodfunc.RangeWarning, match=r"outside float32's range.*wrt=\(0, 0, 1\)"):
        got = hodfunc.partials(f, [(0, 0, 1)])(torch.tensor([1.4, 1.0]))
    assert not torch.isfinite(got[0])


def test_a_closure_the_cache_cannot_see_into_retraces_and_warns_once_with_the_fix() -> None:
    window = collections.deque([2.0])  # unhashable, no attributes to walk: picks the branch
    before = _trace.TRACES[0]

    def f(z: Tensor) -> Tensor:
        return torch.sin(window[0] * z[0]) if window[0] > 1 else torch.cos(z[0])

    d = hodfunc.partials(f, [(0, 0)], method="taylor")
    with pytest.warns(hodfunc.CacheWarning, match=r"Pass that value as an argument"):
        (first,) = d(POINTS[0])
    window[0] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per transform
        (second,) = d(POINTS[0])
    assert_close(first, -4.0 * torch.sin(2.0 * POINTS[0, 0]))
    assert_close(second, -torch.cos(POINTS[0, 0]))
    assert _trace.TRACES[0] - before == 2


# ------------------------------------------------------------------ found in review


def test_a_higher_row_that_overflows_leaves_the_value_and_the_others_right() -> None:
    """Products were summed by a 0/1 matrix, so one infinite coefficient made every row ``nan``
    (``0 * inf``), the value too, and the range check never ran."""
    g = lambda t: torch.exp(80 * t) * torch.sin(t) * 1e-30  # noqa: E731
    got = hodfunc.derivatives(g, order=4)(torch.tensor(1.0))
    ref = hodfunc.derivatives(g, order=4)(torch.tensor(1.0, dtype=F64)).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    f = lambda z: torch.exp(80 * z[0]) * 1e-30 * torch.sin(z[1])  # noqa: E731
    x = torch.tensor([1.0, 1.0])
    (value,) = hodfunc.partials(f, [()])(x)
    assert torch.isfinite(value)


def test_a_call_under_inference_mode_does_not_break_later_training() -> None:
    f = lambda z: torch.tanh(z[0] * z[1])  # noqa: E731
    x = torch.tensor([0.3, 0.7])
    with torch.inference_mode():
        hodfunc.partials(f, [(0, 0, 1)])(x)
    w = torch.tensor(2.0, requires_grad=True)
    (d,) = hodfunc.partials(lambda z: torch.tanh(w * z[0] * z[1]), [(0, 0, 1)])(x)
    (g,) = torch.autograd.grad(d, w)
    assert torch.isfinite(g)


def test_orders_and_sizes_past_the_bound_are_refused_when_built() -> None:
    with pytest.raises(hodfunc.ArgumentError, match=r"orders up to 16.*hodfunc\.derivatives"):
        hodfunc.partials(u, [(0,) * 17])
    with pytest.raises(hodfunc.ArgumentError, match=r"at most 1024 monomials.*Split the terms"):
        hodfunc.partials(mlp(7, 4, 1, "tanh"), [tuple(range(7)) * 2])


def test_results_are_tensors_of_their_own() -> None:
    X = POINTS
    d = vmap(hodfunc.partials(u, {"u": (), "u_t": (2,), "u_x": (0,)}))(X)
    r = d["u_t"]
    r += d["u"] * d["u_x"]  # in place on one result, as residual code does
    ident = hodfunc.partials(lambda z: z, {"a": (), "b": ()})
    x = torch.ones(3)
    got = ident(x)
    got["a"].add_(1)
    assert torch.equal(x, torch.ones(3))
    assert torch.equal(got["b"], torch.ones(3))


def test_the_batch_warning_stays_quiet_on_one_vector_point() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hodfunc.partial(lambda z: z**2, (0,))(torch.tensor([0.5, 1.0, 2.0]))
        hodfunc.partials(lambda z: torch.stack([torch.sin(z[0]), z[1]]), {"u_x": (0,)})(
            torch.tensor([0.3, 0.4])
        )


def test_a_function_that_picks_the_first_point_of_a_batch_warns() -> None:
    net = mlp(2, 8, 1, "tanh")
    X = torch.rand(64, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    with pytest.warns(hodfunc.BatchWarning, match=r"leading dimension 1.*net\(z\)\[0\]"):
        hodfunc.partials(lambda z: net(z)[0], {"u": (), "u_x": (0,)})(X)
    with warnings.catch_warnings():  # a matrix function of one output: a scalar, quiet
        warnings.simplefilter("error")
        hodfunc.partial(lambda a: torch.linalg.det(a), wrt=(0, 1), method="nested")(X[:2].clone())
