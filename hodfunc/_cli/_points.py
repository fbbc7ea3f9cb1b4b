"""Points in and values out for ``hodfunc eval``, and the one safe way the CLI writes a file.

Points are read as float64 of shape ``(N,)``; values are written with shape ``(N, K+1)``, column
``k`` holding the ``k``-th derivative. ``.npy`` is the fast format for millions of points (it is
read with ``allow_pickle=False``, and its shape is checked before the data is loaded); ``.csv``
is for people and spreadsheets, and is read strictly: a UTF-8 byte-order mark is dropped, blank
lines and ``#`` comments are skipped, the first line may be a header (it starts with a letter),
and every other line must be one number, or the file is refused with that line's number.

Every file the command line writes (``--out``, ``--plot``) goes through :func:`atomic_file`: a
temporary file in the target's folder, flushed and synced, then renamed onto the target. A write
that fails (disk full, a file-size limit, an interrupt) leaves the previous file as it was and no
temporary behind. :func:`check_writable` checks the target before anything is computed.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import IO, TYPE_CHECKING, BinaryIO, Literal

from .._errors import ArgumentError, message

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "MAX_POINTS",
    "atomic_file",
    "check_writable",
    "file_format",
    "read_points",
    "write_values",
]

MAX_POINTS = 50_000_000
"""Most points one ``hodfunc eval`` reads (400 MB of float64)."""

Format = Literal["npy", "csv"]

_NUMBER = re.compile(
    r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf(?:inity)?)\s*", re.IGNORECASE
)
"""One CSV cell numpy's ``loadtxt`` reads as a float (Python's ``float`` also takes ``1_000``)."""
_SHOWN = 40
"""Characters of a refused CSV line shown in the message."""


def file_format(path: str, api: str) -> Format:
    """The format named by ``path``'s extension.

    >>> file_format("points.csv", "--points")
    'csv'
    """
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return "npy"
    if ext == ".csv":
        return "csv"
    raise ArgumentError(
        message(api, "the file must end in .npy or .csv", repr(path), "Rename or convert it.")
    )


def _check_count(api: str, path: str, n: int) -> None:
    if n < 1:
        raise ArgumentError(message(api, "the file must hold at least one point", repr(path)))
    if n > MAX_POINTS:
        raise ArgumentError(
            message(
                api,
                f"at most {MAX_POINTS:,} points per run",
                f"{n:,} in {path!r}",
                "Split the file and run several times.",
            )
        )


def _column(api: str, path: str, shape: tuple[int, ...]) -> int:
    """Return N for shape ``(N,)`` or ``(N, 1)``, else raise."""
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        _check_count(api, path, shape[0])
        return shape[0]
    raise ArgumentError(
        message(
            api,
            "points must form one column, shape (N,) or (N, 1)",
            f"shape {shape} in {path!r}",
            "Save one coordinate per point.",
        )
    )


def _read_npy(api: str, path: str) -> NDArray[np.float64]:
    import numpy as np

    try:
        lazy = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ArgumentError(
            message(
                api,
                "the file is not a numeric .npy array",
                f"{path!r} ({err})",
                "Save it with numpy.save(path, array_of_floats).",
            )
        ) from None
    if not isinstance(lazy, np.ndarray) or lazy.dtype.kind not in "fiu":
        kind = getattr(lazy, "dtype", type(lazy).__name__)
        raise ArgumentError(
            message(
                api,
                "the .npy array must hold real numbers",
                f"{kind} in {path!r}",
                "Save it with numpy.save(path, array_of_floats).",
            )
        )
    _column(api, path, tuple(lazy.shape))
    return np.array(lazy, dtype=np.float64).reshape(-1)


def _content(line: str) -> str:
    """A CSV line without its ``#`` comment and surrounding blanks (``loadtxt``'s reading)."""
    return line.split("#", 1)[0].strip()


def _is_number(cell: str) -> bool:
    return _NUMBER.fullmatch(cell) is not None


def _is_header(text: str) -> bool:
    """A header names its column: its first cell starts with a letter (``x``, ``"t"``, ``d0``)."""
    first = text.split(",", 1)[0].strip().strip("\"'")
    return bool(first) and (first[0].isalpha() or first[0] == "_") and not _is_number(first)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _refuse_line(api: str, path: str, lineno: int, text: str) -> ArgumentError:
    if "," in text:
        return ArgumentError(
            message(
                api,
                "points must form one column: one number per line",
                f"{_shown(text)} on line {lineno} of {path!r}",
                "Save one coordinate per point.",
            )
        )
    return ArgumentError(
        message(
            api,
            "the .csv file must hold one number per line, after an optional header that starts "
            "with a letter",
            f"{_shown(text)} on line {lineno} of {path!r}",
            "Fix or remove that line.",
        )
    )


def _open_csv(path: str) -> IO[str]:
    # utf-8-sig drops a byte-order mark; bytes that are not UTF-8 become lone surrogates, which
    # no number matches, so they are refused with their line (a header may hold them)
    return open(path, encoding="utf-8-sig", errors="surrogateescape")


def _first_bad_line(path: str, header: int) -> tuple[int, str] | None:
    """The first line (1-based) after the header that is not one number, with its text."""
    with _open_csv(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            text = _content(line)
            if lineno != header and text and not _is_number(text):
                return lineno, text
    return None


def _read_csv(api: str, path: str) -> NDArray[np.float64]:
    import numpy as np

    header = 0  # the header's line number, 0 for none
    with _open_csv(path) as fh:
        lineno = 0
        while True:
            start = fh.tell()
            line = fh.readline()
            if not line:
                _check_count(api, path, 0)  # nothing but blank lines and comments
            lineno += 1
            text = _content(line)
            if not text:
                continue
            if _is_number(text):
                fh.seek(start)
            elif _is_header(text) and not header:
                header = lineno
                continue
            else:
                raise _refuse_line(api, path, lineno, text)
            break
        try:
            data = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError as err:  # includes UnicodeDecodeError
            bad = _first_bad_line(path, header)
            if bad is not None:
                raise _refuse_line(api, path, *bad) from None
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ArgumentError(
                message(
                    api,
                    "the .csv file must hold one number per line (after an optional header)",
                    f"{path!r} ({text})",
                    "Write one point per line.",
                )
            ) from None
    _column(api, path, tuple(data.shape))
    return data.reshape(-1)


def _csv_line(path: str, row: int) -> int:
    """The line number (1-based) of data row ``row`` (0-based) of a ``.csv`` file."""
    seen = -1
    header_done = False
    with _open_csv(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            text = _content(line)
            if not text:
                continue
            if not header_done:
                header_done = True
                if not _is_number(text):
                    continue
            seen += 1
            if seen == row:
                return lineno
    return 0  # unreachable for a row that was read


def read_points(path: str, api: str = "--points") -> NDArray[np.float64]:
    """Read ``N`` points from ``path`` (``.npy`` or one-column ``.csv``) as float64 ``(N,)``.

    In a ``.csv``, blank lines and ``#`` comments are skipped, the first line is a header when it
    starts with a letter, and any other line that is not one number refuses the file.

    Raises:
        ArgumentError: unknown extension, not one column, a line that is not a number, no points
            or too many, a point that is not finite (``nan``, ``inf``).
        OSError: the file cannot be read.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.csv"
        >>> _ = path.write_text("x\\n-2\\n0.5\\n")
        >>> read_points(str(path))
        array([-2. ,  0.5])
    """
    import numpy as np

    kind = file_format(path, api)
    points = _read_npy(api, path) if kind == "npy" else _read_csv(api, path)
    finite = np.isfinite(points)
    if not finite.all():
        row = int(np.argmin(finite))
        where = f"row {row}" if kind == "npy" else f"line {_csv_line(path, row)}"
        raise ArgumentError(
            message(
                api,
                "every point must be a finite number",
                f"{points[row]} at {where} of {path!r}",
                "Remove or fill that row.",
            )
        )
    return points


def check_writable(path: str, api: str) -> None:
    """Raise unless ``path`` can be written: its folder exists and takes a new file, and ``path``
    is not a folder, not a special file and not read-only.

    The folder is probed by creating and removing a temporary file in it, so a read-only file
    system is found even by root.

    >>> import tempfile, os
    >>> check_writable(os.path.join(tempfile.mkdtemp(), "v.npy"), "--out")
    """
    if os.path.isdir(path):
        raise ArgumentError(
            message(api, "the output must be a file, not a folder", repr(path), "Add a file name.")
        )
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ArgumentError(
            message(api, "the folder for the output must exist", repr(folder), "Create it first.")
        )
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise ArgumentError(
                message(api, "the output must be a regular file", repr(path), "Choose another.")
            )
        if not os.access(path, os.W_OK):
            raise ArgumentError(
                message(
                    api,
                    "the output exists and is read-only",
                    repr(path),
                    "Make it writable or choose another file.",
                )
            )
    try:
        fd, probe = tempfile.mkstemp(
            dir=os.path.dirname(os.path.realpath(path)), prefix=".hodfunc-"
        )
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ArgumentError(
            message(
                api,
                "the folder for the output must be writable",
                f"{folder!r} ({err.strerror or type(err).__name__})",
                "Choose another folder.",
            )
        ) from None


@contextmanager
def _file_size_limit_raises() -> Iterator[None]:
    """Ignore SIGXFSZ while writing, so a file-size limit raises OSError(EFBIG) into the cleanup
    instead of killing the process; restored afterwards. Only the main thread may set handlers."""
    xfsz = getattr(signal, "SIGXFSZ", None)
    if xfsz is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(xfsz, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(xfsz, previous)


def _new_file_mode(target: str) -> int:
    """The permission bits ``target`` keeps (when it exists) or gets from the umask."""
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _check_size(fh: BinaryIO) -> None:
    """Raise unless every byte written to ``fh`` reached the file: a library that writes through
    a duplicated descriptor may lose the error of its last bytes (numpy's ``tofile`` does)."""
    written, size = fh.tell(), os.fstat(fh.fileno()).st_size
    if size < written:
        raise OSError(errno.EIO, f"only {size:,} of {written:,} bytes reached the file")


class _Stream:
    """``fh`` as a plain stream, so ``np.save`` writes through Python's ``write`` and a failed
    write raises with its reason; for a real file numpy writes with ``tofile`` on a duplicated
    ``FILE*``, which can lose the error of its last buffered bytes (a file-size limit)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def write(self, data: bytes) -> int:
        return self._fh.write(data)


@contextmanager
def atomic_file(path: str, api: str) -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` only once everything written to it is on disk.

    The data goes to a temporary file in the same folder (the folder of the file a symlink points
    to), is flushed and ``fsync``-ed, and is renamed onto the target with ``os.replace``, so
    readers see the old file or the whole new one, never a part. On any error the temporary file
    is removed and the previous file is left untouched.

    Raises:
        ArgumentError: the file cannot be written (the ``OSError``'s reason in the message).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "v.csv"
        >>> with atomic_file(str(path), "--out") as fh:
        ...     _ = fh.write(b"d0\\n1\\n")
        >>> path.read_bytes()
        b'd0\\n1\\n'
        >>> sorted(p.name for p in path.parent.iterdir())  # no temporary file left
        ['v.csv']
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    existed = os.path.exists(target)
    tmp = ""
    try:
        with _file_size_limit_raises():
            fd, tmp = tempfile.mkstemp(
                dir=folder, prefix=f".{os.path.basename(target)[:100]}.", suffix=".tmp"
            )
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                _check_size(fh)
                os.fsync(fh.fileno())
            os.chmod(tmp, _new_file_mode(target))
            os.replace(tmp, target)
            tmp = ""
    except OSError as err:
        kept = " The previous file is unchanged." if existed else ""
        raise ArgumentError(
            message(
                api,
                "the file cannot be written",
                f"{path!r} ({err.strerror or type(err).__name__})",
                f"Nothing was written.{kept}",
            )
        ) from None
    finally:
        if tmp:
            with suppress(OSError):
                os.unlink(tmp)
    with suppress(OSError):  # make the rename itself durable; not every file system allows it
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_values(path: str, values: NDArray[np.floating], names: Sequence[str], api: str) -> None:
    """Write ``values`` of shape ``(N, K+1)`` to ``path`` atomically (see :func:`atomic_file`);
    a ``.csv`` gets ``names`` as header.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "v.csv"
        >>> write_values(str(path), np.array([[1.0, 0.5], [2.0, -0.25]]), ["d0", "d1"], "--out")
        >>> print(path.read_text(), end="")
        d0,d1
        1,0.5
        2,-0.25
    """
    import numpy as np

    kind = file_format(path, api)
    with atomic_file(path, api) as fh:
        if kind == "npy":
            np.save(_Stream(fh), values, allow_pickle=False)
            return
        digits = 17 if values.dtype == np.float64 else 9
        row = ",".join([f"%.{digits}g"] * values.shape[1]) + "\n"
        step = 65536
        fh.write((",".join(names) + "\n").encode())
        for start in range(0, values.shape[0], step):
            block = (values[start : start + step] + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0
            fh.write("".join(row % tuple(r) for r in block).encode())
