"""What a trace may have baked in: everything a function can reach without being passed it.

A ``make_fx`` trace runs the function once and keeps only the ATen ops it issued. Every Python
value the function read on the way (a float in a closure cell, a global flag picking a branch, a
module's ``training`` or ``negative_slope``, a tensor on a namespace) is frozen into that trace. A
cached trace is therefore only sound when all of those values are part of its key.

Three designs were weighed:

- *Guards recorded while tracing* (torch.compile's way) see exactly what was read, but recording
  Python-level reads needs a bytecode-level tracer; ``make_fx`` sees only tensor ops.
- *A record of the frames that ran* (``sys.settrace`` during the trace) still has to turn frames
  into values to compare on the next call, which is the walk below with extra cost.
- *A key built from code objects and the values they can reach* (chosen). On every call we walk,
  from the function: its code objects, closure cells, defaults, the globals its code names (and
  the attributes of user modules it names), and, through those, containers, functions, bound
  methods, ``functools.partial`` and the attribute dictionaries of objects and ``nn.Module``s. The
  walk collects immutable atoms (numbers, strings, flags, dtypes, code objects, identities of
  library objects) into the key and the tensors it meets into the list of tensors to lift to graph
  inputs. It reads no tensor data, so it costs microseconds per call.

The key is sound by construction for everything the walk can see; what it cannot see makes the
function *uncacheable* (``Reach.uncacheable`` says why), and such a function is traced on every
call instead (``CacheWarning`` once). What no walk can see is documented in the README: values a
function obtains by *calling* library code (the environment, a file, ``random``), and the state of
library objects keyed by identity.

Because the key holds code objects (compared by value) and not the function object, two transforms
of the same code over the same values share one trace: that makes the cache safe to share across
transform objects, and a transform rebuilt inside a loss on every step reuses its trace.
"""

from __future__ import annotations

import enum
import functools
import os
import sys
import sysconfig
import types
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Opaque", "Reach", "reach"]

_LIBRARIES = frozenset({"torch", "numpy", "builtins", "typing_extensions", "_operator"})
"""Packages keyed by identity wherever they are installed (besides ``_library_paths``)."""


def _library_paths() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(
        {
            os.path.realpath(paths[k]) + os.sep
            for k in ("stdlib", "platstdlib", "purelib", "platlib")
        }
    )


@functools.lru_cache(maxsize=1024)
def _library_module(name: str) -> bool:
    """Whether module ``name`` is installed library code (the standard library, site-packages,
    torch, numpy, hodfunc itself), whose functions, classes and modules are keyed by identity:
    their code does not change between calls, and walking into them would cost more than every
    user value. (The closure of a hodfunc function is still walked: a transform's closure holds
    the user's function, ``_Walk._function``.)"""
    top = name.partition(".")[0]
    if top in _LIBRARIES or top == "hodfunc" or top in sys.builtin_module_names:
        return True
    module = sys.modules.get(name) or sys.modules.get(top)
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return False
    return os.path.realpath(file).startswith(_library_paths())


_ATOMS = (
    int,
    float,
    complex,
    str,
    bytes,
    type(None),
    type(Ellipsis),
    type(NotImplemented),
    range,
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
    enum.Enum,
    types.CodeType,
    types.GenericAlias,
)
"""Immutable values that enter the key as they are (``bool`` is an ``int``)."""

_BY_IDENTITY = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.MethodWrapperType,
    torch._ops.OpOverload,
    torch._ops.OpOverloadPacket,
)

_CONTAINERS = frozenset({dict, OrderedDict, set, list, tuple})
_PLAIN_CONTAINERS = frozenset({list, tuple, dict, OrderedDict, torch.Size})
_MISSING = object()
"""Stands for an empty slot."""

_MAX_NODES = 20_000
"""A walk that meets more objects than this gives up: the function is not cached."""


class Opaque:
    """A base for hodfunc's own objects that a user's function may hold (engines, caches): the
    walk keys them by type and does not look inside. Their state never changes an answer."""


@dataclass(frozen=True)
class Reach:
    """What one call's function (and non-tensor arguments) can reach."""

    key: tuple[object, ...]
    """The atoms, in walk order: equal keys mean a trace may be reused."""
    tensors: tuple[Tensor, ...]
    """The tensors met, each once, in walk order: they are lifted to graph inputs."""
    uncacheable: str
    """Why a trace must not be cached (empty when it may be)."""
    ddp: str = ""
    """The path to a ``DistributedDataParallel`` module the function calls, if any: DDP's
    forward prepares its gradient all-reduce on real tensors, so it cannot run inside a
    transform (``hodfunc.distributed``), and a cached trace would silently skip it."""


def _library(obj: object) -> bool:
    """Whether ``obj`` (a function or class) comes from library code."""
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and _library_module(module)


@functools.lru_cache(maxsize=4096)
def _names(code: types.CodeType) -> tuple[str, ...]:
    """The global and attribute names ``code`` and the code nested in it refer to, sorted."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_names(const))
        elif isinstance(const, str) and const.isidentifier():
            names.add(const)  # getattr(config, "scale") reads an attribute by a string
    return tuple(sorted(names))


class _Walk:
    """One walk: ``atoms`` for the key, ``tensors`` to lift, ``why`` if it gave up."""

    def __init__(self) -> None:
        self.atoms: list[object] = [torch.get_default_dtype()]
        self.tensors: list[Tensor] = []
        self.tensor_index: dict[int, int] = {}
        self.seen: dict[int, int] = {}
        self.keep: list[object] = []  # holds what ``seen`` names by id alive for the walk
        self.pending: list[tuple[bool, object, tuple[str, ...]]] = []
        self.why = ""
        self.ddp = ""

    def give_up(self, why: str) -> None:
        if not self.why:
            self.why = why

    def walk(self, root: object) -> None:
        """Add ``root`` and everything it reaches to the key, depth first, without recursion (a
        parsed expression may nest closures hundreds deep)."""
        stack: list[tuple[bool, object, tuple[str, ...]]] = [(False, root, ())]
        while stack and not self.why:
            is_atom, obj, names = stack.pop()
            if is_atom:
                self.atoms.append(obj)
                continue
            self.pending = []
            self._process(obj, names)
            stack.extend(reversed(self.pending))

    def visit(self, obj: object, names: tuple[str, ...] = ()) -> None:
        """From a handler: walk ``obj`` next. ``names``: the names the code that reached it
        refers to (the attributes of a user module that may be read)."""
        self.pending.append((False, obj, names))

    def emit(self, atom: object) -> None:
        """From a handler: add ``atom`` to the key in walk order."""
        self.pending.append((True, atom, ()))

    def _process(self, obj: object, names: tuple[str, ...]) -> None:
        atoms = self.atoms
        if isinstance(obj, Tensor):
            index = self.tensor_index.get(id(obj))
            if index is None:
                index = self.tensor_index[id(obj)] = len(self.tensors)
                self.tensors.append(obj)
                atoms.append(("T", tuple(obj.shape), obj.dtype, obj.device, obj.layout))
                extra = obj.__dict__
                if extra:  # Python attributes on a tensor (``w.scale = 2.0``)
                    self.visit(extra)
            else:
                atoms.append(("T=", index))
            return
        if isinstance(obj, float):  # hex tells -0.0 from 0.0 (np.float64 too), nan equals nan
            atoms.append((type(obj), obj.hex()))
            return
        if type(obj) is complex:
            atoms.append((complex, obj.real.hex(), obj.imag.hex()))
            return
        if isinstance(obj, _ATOMS):
            atoms.append((type(obj), obj))
            return
        if isinstance(obj, _BY_IDENTITY):
            atoms.append(obj)
            return
        seen = self.seen.get(id(obj))
        if seen is not None:
            atoms.append(("seen", seen))
            return
        if len(self.seen) >= _MAX_NODES:
            self.give_up(f"it reaches more than {_MAX_NODES} Python objects")
            return
        self.seen[id(obj)] = len(self.seen)
        self.keep.append(obj)
        self._visit_new(obj, names)

    def _visit_new(self, obj: object, names: tuple[str, ...]) -> None:
        if isinstance(obj, (list, tuple, dict)) and type(obj) not in _PLAIN_CONTAINERS:
            # a subclass: its methods (an overridden __getitem__) and attributes count too
            self.visit(type(obj), names)
            if hasattr(obj, "__dict__"):
                self.visit(vars(obj), names)
        if isinstance(obj, (list, tuple)):
            self.emit((type(obj), len(obj)))
            for item in obj:
                self.visit(item, names)
        elif isinstance(obj, dict):
            self.emit((type(obj), len(obj)))
            for k, v in obj.items():
                self.visit(k, names)
                self.visit(v, names)
        elif isinstance(obj, (set, frozenset)):
            items = sorted(obj, key=repr) if len(obj) < 64 else list(obj)
            self.emit((type(obj), len(obj)))
            for item in items:
                self.visit(item, names)
        elif isinstance(obj, types.FunctionType):
            self._function(obj)
        elif isinstance(obj, types.MethodType):
            self.emit(types.MethodType)
            self.visit(obj.__self__, names)
            self.visit(obj.__func__, names)
        elif isinstance(obj, functools.partial):
            self.emit(functools.partial)
            self.visit(obj.func, names)
            self.visit(obj.args, names)
            self.visit(obj.keywords, names)
        elif isinstance(obj, types.ModuleType):
            self.emit(obj)
            if not _library_module(obj.__name__):
                space = vars(obj)
                # reached from code that names what it reads, those attributes; reached otherwise
                # (a class or module attribute holding the module), every public one
                wanted = names or tuple(
                    k for k, v in space.items() if not k.startswith("_") and not _foreign(v, obj)
                )
                for name in wanted:
                    if name in space:
                        self.emit(name)
                        self.visit(space[name], names)
        elif isinstance(obj, type):
            self.emit(obj)
            if not _library(obj):
                self._class(obj)
        elif isinstance(obj, Opaque):
            self.emit(type(obj))
        elif isinstance(obj, nn.Module):
            self._module(obj)
        elif _library(type(obj)) and _numpy(obj):
            self._array(obj)
        elif isinstance(obj, torch.Generator):
            self.emit(obj)  # randomness is refused elsewhere; the trace holds no state of it
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            self._object(obj, names)
        else:
            try:
                hash(obj)
            except TypeError:
                self.give_up(f"it reaches an unhashable {type(obj).__name__} it cannot look into")
                return
            if _library(type(obj)):
                # a library object without attributes: hashed by value (a sympy symbol, a
                # Fraction), whose contract is that it does not change, or else by identity
                self.emit((type(obj), obj))
            elif any("__slots__" in vars(klass) for klass in type(obj).__mro__[:-1]):
                self.visit(type(obj))
                self._slots(obj)
            else:
                self.give_up(f"it reaches a {type(obj).__name__} it cannot look into")

    def _function(self, fn: types.FunctionType) -> None:
        if _library(fn):
            self.emit(fn)
            if getattr(fn, "__module__", "").startswith("hodfunc"):
                self._closure(fn, ())  # a transform: hodfunc's code, the user's closure
            return
        code = fn.__code__
        self.emit(code)
        names = _names(code)
        if fn.__defaults__:
            self.visit(fn.__defaults__, names)
        if fn.__kwdefaults__:
            self.visit(fn.__kwdefaults__, names)
        self._closure(fn, names)
        space = fn.__globals__
        for name in names:
            if name in space:
                self.emit(name)
                self.visit(space[name], names)

    def _closure(self, fn: types.FunctionType, names: tuple[str, ...]) -> None:
        for cell in fn.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                self.emit("empty cell")
                continue
            self.visit(content, names)

    def _class(self, cls: type) -> None:
        for klass in cls.__mro__:
            if _library(klass) or klass is object:
                continue
            for name, value in vars(klass).items():
                if name in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"):
                    continue  # a dunder method (__rmul__, __getitem__) is code like any other
                self.emit(name)
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                elif isinstance(value, property):
                    value = (value.fget, value.fset)
                self.visit(value)

    def _module(self, module: nn.Module) -> None:
        """``_object`` for the dictionary of an ``nn.Module``, written out for speed: most
        entries are empty hook dictionaries, flags and numbers, and a network has many modules.
        An empty container adds nothing (once filled, it adds its name and contents)."""
        cls = type(module)
        if cls.__name__ == "DistributedDataParallel" and cls.__module__.startswith("torch.nn"):
            self.ddp = self.ddp or cls.__name__
        if _library(cls):
            self.emit(cls)
        else:
            self.visit(cls)
        for name, value in vars(module).items():
            kind = type(value)
            if kind in _CONTAINERS:
                if not value:
                    continue
                if name in ("_parameters", "_buffers", "_modules"):
                    self.emit((name, len(value)))
                    for key, item in value.items():
                        self.emit(key)
                        self.visit(item)
                    continue
            elif kind is bool or kind is int or kind is str or value is None:
                self.emit((name, kind, value))
                continue
            elif kind is float:
                self.emit((name, value.hex()))
                continue
            self.emit(name)
            self.visit(value)

    def _object(self, obj: object, names: tuple[str, ...]) -> None:
        cls = type(obj)
        self.visit(cls, names)
        if hasattr(obj, "__dict__"):
            self.visit(vars(obj), names)
        self._slots(obj)

    def _slots(self, obj: object) -> None:
        """The values in ``obj``'s ``__slots__``, which ``__dict__`` does not hold."""
        for klass in type(obj).__mro__:
            slots = vars(klass).get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name in ("__dict__", "__weakref__"):
                    continue
                self.emit(name)
                self.visit(getattr(obj, name, _MISSING))

    def _array(self, array: object) -> None:
        import numpy as np

        if isinstance(array, np.generic):
            self.emit((type(array), array.tobytes()))  # tells -0.0 from 0.0
        elif isinstance(array, np.ndarray):
            if array.size > 100_000 or array.dtype == object:
                self.give_up(f"it reaches a NumPy array of {array.size} elements")
                return
            self.emit(("nd", array.shape, array.dtype.str, array.tobytes()))
        else:
            self.give_up(f"it reaches a {type(array).__name__} it cannot look into")


def _foreign(value: object, module: types.ModuleType) -> bool:
    """Whether a module attribute is something the module imported rather than defined (another
    module, or a function or class of another module): walked only when code names it."""
    if isinstance(value, types.ModuleType):
        return True
    if isinstance(value, (types.FunctionType, type)):
        return getattr(value, "__module__", None) != module.__name__
    return False


def _numpy(obj: object) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, (np.ndarray, np.generic))


def reach(fn: object, others: Iterable[object] = ()) -> Reach:
    """Walk ``fn`` and the non-tensor arguments ``others``; see the module docstring."""
    walk = _Walk()
    walk.walk(fn)
    for other in others:
        walk.walk(other)
    return Reach(tuple(walk.atoms), tuple(walk.tensors), walk.why, walk.ddp)
