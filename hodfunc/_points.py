"""Points in and values out for ``hodfunc eval``: ``.npy`` or one-column ``.csv`` files.

Points are read as float64 of shape ``(N,)``; values are written with shape ``(N, K+1)``, column
``k`` holding the ``k``-th derivative. ``.npy`` is the fast format for millions of points (it is
read with ``allow_pickle=False``, and its shape is checked before the data is loaded); ``.csv``
is for people and spreadsheets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ._errors import ArgumentError, message

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["MAX_POINTS", "file_format", "read_points", "write_values"]

MAX_POINTS = 50_000_000
"""Most points one ``hodfunc eval`` reads (400 MB of float64)."""

Format = Literal["npy", "csv"]


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


def _read_csv(api: str, path: str) -> NDArray[np.float64]:
    import numpy as np

    with open(path, encoding="utf-8", errors="replace") as fh:
        first = next((line for line in fh if line.strip() and not line.startswith("#")), "")
    try:
        float(first.split(",")[0])
        skip = 0
    except ValueError:
        skip = 1  # a header line
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
    except ValueError as err:
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


def read_points(path: str, api: str = "--points") -> NDArray[np.float64]:
    """Read ``N`` points from ``path`` (``.npy`` or one-column ``.csv``) as float64 ``(N,)``.

    Raises:
        ArgumentError: unknown extension, not one column, no points or too many, non-finite.
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
        raise ArgumentError(
            message(
                api,
                "every point must be a finite number",
                f"{points[row]} at row {row} of {path!r}",
                "Remove or fill that row.",
            )
        )
    return points


def write_values(path: str, values: NDArray[np.floating], names: Sequence[str], api: str) -> None:
    """Write ``values`` of shape ``(N, K+1)`` to ``path``; a ``.csv`` gets ``names`` as header.

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
    if kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, values, allow_pickle=False)
        return
    digits = 17 if values.dtype == np.float64 else 9
    row = ",".join([f"%.{digits}g"] * values.shape[1]) + "\n"
    step = 65536
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(",".join(names) + "\n")
        for start in range(0, values.shape[0], step):
            block = (values[start : start + step] + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0
            fh.write("".join(row % tuple(r) for r in block))
