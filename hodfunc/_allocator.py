"""An explicit, opt-in tuning of glibc's malloc for large repeated CPU allocations.

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves requests above its mmap
threshold (128 KiB, adapting up to 32 MiB) with a fresh ``mmap`` and unmaps them on free, so a
loop that allocates the same 200 MB result every step pays the kernel for zeroed fresh pages
every step: for per-sample gradients of an MLP that is most of ``vmap(grad)``'s time. Serving
large blocks from the heap and keeping freed memory (``M_MMAP_MAX = 0``, a large
``M_TRIM_THRESHOLD``) lets the next step reuse the same pages. This is process-wide, so hodfunc
never does it unless asked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

from torch import Tensor

from ._errors import ArgumentError, UnsupportedOperationError, message

# mallopt parameter numbers from glibc's <malloc.h>; madvise advice from <sys/mman.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_MADV_HUGEPAGE = 14
_HUGE_PAGE = 2 << 20
_HUGE_MIN_BYTES = 8 << 20


def empty_result(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A new uninitialised tensor for a large result, backed by huge pages where the OS allows.

    A fresh multi-megabyte CPU tensor is a fresh mapping; first touching it costs one page fault
    per 4 KiB page, which for per-sample gradients takes longer than computing them. Advising
    the kernel (``madvise(MADV_HUGEPAGE)``) that *this tensor's own pages* may be 2 MiB pages cuts
    the faults 512-fold. Only the returned tensor's memory is affected, nothing process-wide; on
    other platforms, small tensors or non-CPU devices this is plain ``torch.empty``.
    """
    out = like.new_empty(shape)
    nbytes = out.numel() * out.element_size()
    libc = _libc()
    if libc is None or out.device.type != "cpu" or nbytes < _HUGE_MIN_BYTES:
        return out
    start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
    end = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE)
    return out


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc on Linux, or None."""
    if not sys.platform.startswith("linux"):
        return None
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    return libc if libc is not None and hasattr(libc, "gnu_get_libc_version") else None


def tune_cpu_allocator(*, keep_freed_bytes: int = 2**31 - 1) -> dict[str, int]:
    """Make glibc's malloc keep and reuse large freed blocks instead of unmapping them.

    Sets ``mallopt(M_MMAP_MAX, 0)`` (large blocks come from the heap, not fresh mappings) and
    ``mallopt(M_TRIM_THRESHOLD, keep_freed_bytes)`` (freed memory up to that much stays with the
    process). Repeated large tensors then reuse warm pages. The cost: the process's resident
    memory no longer shrinks after a peak. This changes the whole process, for good; call it
    once at start-up, and only if you want that. It is the in-process equivalent of starting
    Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<bytes>``. (PyTorch's own switch,
    ``THP_MEM_ALLOC_ENABLE=1`` for transparent huge pages, is read once at start-up and must be
    set in the environment before launch instead.)

    Args:
        keep_freed_bytes: how much freed memory glibc keeps before returning any to the system
            (at most ``2**31 - 1``, mallopt's limit; larger values are clamped).

    Returns:
        The ``mallopt`` settings made, by name.

    Raises:
        ArgumentError: ``keep_freed_bytes`` is not an int >= 0.
        UnsupportedOperationError: the C library is not glibc (macOS, Windows, musl).

    Example:
        >>> import hodfunc
        >>> hodfunc.tune_cpu_allocator()
        {'M_MMAP_MAX': 0, 'M_TRIM_THRESHOLD': 2147483647}
    """
    api = "hodfunc.tune_cpu_allocator"
    if isinstance(keep_freed_bytes, bool) or not isinstance(keep_freed_bytes, int):
        raise ArgumentError(
            message(api, "keep_freed_bytes must be an int >= 0", repr(keep_freed_bytes))
        )
    if keep_freed_bytes < 0:
        raise ArgumentError(message(api, "keep_freed_bytes must be an int >= 0", keep_freed_bytes))
    libc = _glibc(api)
    settings = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": min(keep_freed_bytes, 2**31 - 1)}
    codes = {"M_MMAP_MAX": _M_MMAP_MAX, "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD}
    for name, value in settings.items():
        if libc.mallopt(codes[name], ctypes.c_int(value)) != 1:
            raise UnsupportedOperationError(
                message(api, "glibc refused a malloc setting", f"mallopt({name}, {value})")
            )
    return settings


def _glibc(api: str) -> ctypes.CDLL:
    """The process's C library, if it is glibc (the only one with these mallopt settings)."""
    libc = _libc()
    if libc is None:
        raise UnsupportedOperationError(
            message(
                api,
                "tuning malloc needs glibc (Linux)",
                f"platform {sys.platform}",
                "Use your allocator's own settings (e.g. jemalloc's MALLOC_CONF) instead.",
            )
        )
    return libc
