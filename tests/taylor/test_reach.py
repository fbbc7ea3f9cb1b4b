"""The trace cache never returns a stale trace: every Python value a trace baked in is in its key.

Each reproducer here returned the previous value before the key held the function's reachable
values (closure cells, globals, module attributes, ``training``, rebound tensors); each is checked
against nested torch.func, which re-runs the function on every call.
"""

from __future__ import annotations

import collections
import functools
import math
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import hodfunc
from hodfunc._taylor import _trace
from hodfunc._taylor._reach import reach

F64 = torch.float64
X = torch.tensor(0.3, dtype=F64)

SCALE = 2.0
FLIP = False
HELPER_SCALE = 1.5


def _helper(x: Tensor) -> Tensor:
    return torch.sin(HELPER_SCALE * x)


def nested(f: Callable[[Tensor], Tensor], order: int = 2) -> Tensor:
    return hodfunc.derivative(f, order, method="nested")(X)


@pytest.fixture(autouse=True)
def _globals() -> Iterator[None]:
    global SCALE, FLIP, HELPER_SCALE
    saved = SCALE, FLIP, HELPER_SCALE
    yield
    SCALE, FLIP, HELPER_SCALE = saved


def test_a_global_float_read_by_a_lambda_is_part_of_the_key() -> None:
    """The issue's reproducer: ``a = 3.0`` after the first call gave the value for 2.0."""
    global SCALE
    d2 = hodfunc.derivative(lambda x: torch.sin(SCALE * x), order=2)
    assert torch.allclose(d2(X), nested(lambda x: torch.sin(2.0 * x)))
    SCALE = 3.0
    assert torch.allclose(d2(X), -9.0 * torch.sin(3.0 * X))  # was -4 sin(0.6): stale


def test_a_nonlocal_float_is_part_of_the_key() -> None:
    a = 2.0

    def f(x: Tensor) -> Tensor:
        return torch.exp(a * x)

    d = hodfunc.derivative(f, 3, method="taylor")
    first = d(X)
    a = 0.5
    assert torch.allclose(d(X), nested(f, 3))
    assert not torch.allclose(d(X), first)


def test_a_global_flag_that_picks_a_branch_is_part_of_the_key() -> None:
    global FLIP

    def f(x: Tensor) -> Tensor:
        return torch.cos(x) if FLIP else torch.sin(x)

    d = hodfunc.derivative(f, 1, method="taylor")
    assert torch.allclose(d(X), torch.cos(X))
    FLIP = True
    assert torch.allclose(d(X), -torch.sin(X))


def test_a_rebound_global_read_by_a_helper_function_is_part_of_the_key() -> None:
    global HELPER_SCALE
    d = hodfunc.derivative(lambda x: _helper(x), 2, method="taylor")
    d(X)
    HELPER_SCALE = -4.0
    assert torch.allclose(d(X), nested(_helper))


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = 2.0
        self.lin = nn.Linear(1, 4, dtype=F64)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.scale * self.lin(x.reshape(1)))
        if self.training:
            h = h * 2
        return h.sum()


def test_a_float_attribute_of_a_module_is_part_of_the_key() -> None:
    torch.manual_seed(0)
    net = Scaled()
    d = hodfunc.derivative(net, 2, method="taylor")
    d(X)
    net.scale = -0.7
    assert torch.allclose(d(X), nested(net))


def test_the_training_flag_after_eval_is_part_of_the_key() -> None:
    torch.manual_seed(0)
    net = Scaled()
    d = hodfunc.derivative(net, 2, method="taylor")
    train = d(X)
    net.eval()
    assert torch.allclose(d(X), nested(net))
    assert torch.allclose(d(X), train / 2)


def test_a_float_option_of_a_torch_module_is_part_of_the_key() -> None:
    act = nn.Softplus(beta=1.0)
    d = hodfunc.derivative(lambda x: act(x), 2, method="taylor")
    d(X)
    act.beta = 3.0
    assert torch.allclose(d(X), nested(lambda x: act(x)))


def test_a_rebound_tensor_attribute_of_a_namespace_is_lifted_not_baked_in() -> None:
    ns = types.SimpleNamespace(w=torch.tensor(2.0, dtype=F64))
    d = hodfunc.derivative(lambda x: torch.sin(ns.w * x), 2, method="taylor")
    d(X)
    ns.w = torch.tensor(3.0, dtype=F64)
    before = _trace.TRACES[0]
    assert torch.allclose(d(X), -9.0 * torch.sin(3.0 * X))
    assert _trace.TRACES[0] == before  # same shape: the tensor is an input, not a re-trace


def test_an_attribute_of_a_user_module_is_part_of_the_key() -> None:
    config = types.ModuleType("hodfunc_test_config")
    config.scale = 2.0  # type: ignore[attr-defined]
    sys.modules[config.__name__] = config
    try:
        space: dict[str, object] = {"torch": torch, "config": config}
        exec("def f(x):\n    return torch.sin(config.scale * x)", space)
        f = space["f"]
        assert callable(f)
        d = hodfunc.derivative(f, 2, method="taylor")
        d(X)
        config.scale = 5.0  # type: ignore[attr-defined]
        assert torch.allclose(d(X), -25.0 * torch.sin(5.0 * X))
    finally:
        del sys.modules[config.__name__]


def test_mutable_containers_and_partial_arguments_are_read_on_every_call() -> None:
    coeffs = [1.0, 2.0]
    options = {"power": 2}

    def f(x: Tensor, *, shift: float) -> Tensor:
        return (coeffs[0] + coeffs[1] * x + shift) ** options["power"]

    g = functools.partial(f, shift=0.5)
    d = hodfunc.derivative(g, 2, method="taylor")
    d(X)
    coeffs[1] = -3.0
    options["power"] = 3
    assert torch.allclose(d(X), nested(g))


def test_a_non_tensor_argument_that_changes_in_place_is_part_of_the_key() -> None:
    def f(x: Tensor, params: list[float]) -> Tensor:
        return torch.sin(params[0] * x)

    params = [2.0]
    d = hodfunc.derivative(f, 2, method="taylor")
    d(X, params)
    params[0] = 3.0
    assert torch.allclose(d(X, params), -9.0 * torch.sin(3.0 * X))


def test_a_module_passed_as_an_argument_has_its_parameters_lifted() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()

    def f(x: Tensor, model: nn.Module) -> Tensor:
        out: Tensor = model(x.reshape(1)).sum()
        return out

    d = hodfunc.derivative(f, 2, method="taylor")
    d(X, net)
    with torch.no_grad():
        net[0].weight = nn.Parameter(torch.randn(4, 1, dtype=F64))  # replaced, not in place
    assert torch.allclose(d(X, net), hodfunc.derivative(f, 2, method="nested")(X, net))


class _Slotted:
    __slots__ = ("scale",)

    def __init__(self, scale: float) -> None:
        self.scale = scale


def test_slots_are_part_of_the_key() -> None:
    holder = _Slotted(2.0)
    d = hodfunc.derivative(lambda x: torch.sin(holder.scale * x), 2, method="taylor")
    d(X)
    holder.scale = 3.0
    assert torch.allclose(d(X), -9.0 * torch.sin(3.0 * X))


def test_a_value_the_walk_cannot_see_into_is_traced_every_call_and_warned_once() -> None:
    window = collections.deque([2.0])  # unhashable, no attributes to walk
    d = hodfunc.derivative(lambda x: torch.sin(window[0] * x), 2, method="taylor")
    with pytest.warns(hodfunc.CacheWarning, match=r"cannot look into.*Pass that value"):
        d(X)
    window[0] = 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert torch.allclose(d(X), -9.0 * torch.sin(3.0 * X))


def test_the_cache_outlives_the_transform_object() -> None:
    """A transform built inside the loss on every step, as tutorials write it, re-uses one
    trace; a different closure with the same code gets its own values."""
    w = torch.tensor(1.5, dtype=F64)
    before = _trace.TRACES[0]
    for _ in range(3):
        hodfunc.derivative(lambda x: torch.tanh(w * x), 2, method="taylor")(X)
    assert _trace.TRACES[0] - before == 1

    def make(a: float) -> Callable[[Tensor], Tensor]:
        return lambda x: torch.sin(a * x)

    for a in (1.0, 2.0, 1.0):
        got = hodfunc.derivative(make(a), 2, method="taylor")(X)
        assert torch.allclose(got, -(a**2) * torch.sin(a * X))


def test_clear_cache_forgets_every_trace() -> None:
    d = hodfunc.derivative(torch.sin, 2, method="taylor")
    d(X)
    hodfunc.clear_cache()
    assert len(_trace.SHARED) == 0
    before = _trace.TRACES[0]
    d(X)
    assert _trace.TRACES[0] - before == 1


def test_the_walk_sees_a_function_that_is_a_hodfunc_transform() -> None:
    """Taylor inside Taylor: the inner transform's closure (its function, order) is walked, its
    engine is not."""
    a = 2.0
    inner = hodfunc.derivative(lambda x: torch.sin(a * x), 1, method="taylor")
    outer = hodfunc.derivative(inner, 1, method="taylor")
    outer(X)
    a = 3.0
    assert torch.allclose(outer(X), -9.0 * torch.sin(3.0 * X))
    assert not reach(inner).uncacheable


def test_threads_calling_one_transform_get_right_answers() -> None:
    """Four threads share a transform (each method): tracing is locked, results are right."""
    points = [torch.tensor(0.1 * i, dtype=F64) for i in range(8)]
    for method in ("taylor", "auto", "nested"):
        hodfunc.clear_cache()
        d = hodfunc.derivative(lambda x: torch.sin(2 * x) * x, 3, method=method)
        results: dict[int, Tensor] = {}
        errors: list[BaseException] = []

        def work(
            i: int,
            d: Callable[[Tensor], Tensor] = d,
            results: dict[int, Tensor] = results,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                results[i] = d(points[i])
            except BaseException as error:  # re-raised below
                errors.append(error)

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, (method, errors)
        for i, x in enumerate(points):
            s, c = torch.sin(2 * x), torch.cos(2 * x)
            want = -12 * s - 8 * x * c  # d3/dx3 of x sin(2x)
            assert torch.allclose(results[i], want), method


# ------------------------------------------------------------- property: mutate, compare fresh

state = {"a": 1.0}
LEVEL = 1


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = 1.0

    def forward(self, x: Tensor) -> Tensor:
        y = torch.tanh(self.gain * x)
        return y * 2 if self.training else y


GATE = Gate()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["closure", "global", "dict", "gain", "training"]),
            st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_mutating_reachable_values_between_calls_always_equals_a_fresh_transform(
    mutations: list[tuple[str, float]],
) -> None:
    global LEVEL
    scale = 1.0

    def f(x: Tensor) -> Tensor:
        gated: Tensor = GATE(scale * x)
        return gated * state["a"] + torch.sin(LEVEL * x)

    cached = hodfunc.derivatives(f, 3, method="taylor")
    try:
        for what, value in mutations:
            if what == "closure":
                scale = value
            elif what == "global":
                LEVEL = int(value)
            elif what == "dict":
                state["a"] = value
            elif what == "gain":
                GATE.gain = value
            else:
                GATE.train(value > 0)
            got = cached(X)
            hodfunc.clear_cache()
            fresh = hodfunc.derivatives(f, 3, method="taylor")(X)
            assert torch.equal(got, fresh), (what, value)
            assert torch.allclose(got, hodfunc.derivatives(f, 3, method="nested")(X))
    finally:
        LEVEL, state["a"], GATE.gain = 1, 1.0, 1.0
        GATE.train()


# ------------------------------------------------ found in review: values the walk missed before

RMUL = 2.0


class _Scaler:
    def __rmul__(self, other: Tensor) -> Tensor:
        return other * RMUL


class _Coeffs(list[float]):
    def __init__(self, values: list[float], gain: float) -> None:
        super().__init__(values)
        self.gain = gain


class _Base:
    __slots__ = ("scale",)


class _Mixed(_Base):
    def __init__(self) -> None:
        self.scale = 2.0
        self.note = "has a __dict__ too"


def _stale_cases() -> list[tuple[str, Callable[[Tensor], Tensor], Callable[[], None]]]:
    global RMUL
    scaler = _Scaler()
    coeffs = _Coeffs([1.0], gain=2.0)
    mixed = _Mixed()
    w = torch.tensor(1.0, dtype=F64)
    w.scale = 2.0  # type: ignore[attr-defined]
    config = types.ModuleType("hodfunc_test_config2")
    config.scale = 2.0  # type: ignore[attr-defined]
    holder = type("Holder", (), {"cfg": config})()
    zero = [np.float64(0.0)]
    imag = [complex(0.0, 0.0)]

    def set_rmul() -> None:
        global RMUL
        RMUL = 5.0

    return [
        ("a global read in a dunder method", lambda x: torch.sin(x) * scaler, set_rmul),
        (
            "an attribute of a list subclass",
            lambda x: torch.sin(coeffs.gain * x) * coeffs[0],
            lambda: setattr(coeffs, "gain", 4.0),
        ),
        (
            "a slot of an object that also has a __dict__",
            lambda x: torch.sin(mixed.scale * x),
            lambda: setattr(mixed, "scale", 4.0),
        ),
        (
            "a Python attribute on a tensor",
            lambda x: torch.sin(w.scale * x),  # type: ignore[attr-defined]
            lambda: setattr(w, "scale", 4.0),
        ),
        (
            "a user module held by an object, read by getattr with a string",
            lambda x: torch.sin(getattr(holder.cfg, "scale") * x),  # noqa: B009
            lambda: setattr(config, "scale", 4.0),
        ),
        (
            "the sign of a NumPy zero",
            lambda x: torch.sin(x) * math.copysign(1.0, float(zero[0])),
            lambda: zero.__setitem__(0, np.float64(-0.0)),
        ),
        (
            "the sign of a complex zero",
            lambda x: torch.sin(x) * math.copysign(1.0, imag[0].imag),
            lambda: imag.__setitem__(0, complex(0.0, -0.0)),
        ),
    ]


@pytest.mark.parametrize("case", range(7))
def test_values_found_in_review_are_part_of_the_key(case: int) -> None:
    global RMUL
    name, f, mutate = _stale_cases()[case]
    try:
        hodfunc.derivative(f, 2, method="taylor")(X)
        mutate()
        got = hodfunc.derivative(f, 2, method="taylor")(X)
        assert torch.allclose(got, nested(f)), name
    finally:
        RMUL = 2.0
