"""The command line never loses data: strict ``.csv`` reading, output checked before computing,
outputs written atomically, ``--out`` never the input.

In-process runs through ``main`` cover the rules; a few subprocesses run under a real file-size
limit (``RLIMIT_FSIZE``) to show that a failed write leaves the previous file byte for byte.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import hodfunc._cli._main
from hodfunc._cli import main
from hodfunc._cli._points import atomic_file, read_points

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(status: int, out: str, err: str) -> str:
    assert status == 2, (status, out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hodfunc: error: ")
    return lines[0]


def eval_argv(points: str, out: str, *more: str) -> list[str]:
    return ["eval", "x", "--points", points, "--order", "1", "--out", out, "--quiet", *more]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- reading .csv strictly ----------------------------------------------------------------------

GOOD_CSV: dict[str, tuple[bytes, list[float]]] = {
    "bom": (b"\xef\xbb\xbf1\n2\n3\n", [1.0, 2.0, 3.0]),
    "bom-header": (b"\xef\xbb\xbfx\n1\n2\n", [1.0, 2.0]),
    "header": (b"x\n-2\n0.5\n", [-2.0, 0.5]),
    "quoted-header": (b'"x"\n1\n', [1.0]),
    "latin1-header": (b"temp\xe9rature\n1\n", [1.0]),
    "comment-then-header": (b"# made by hand\nx\n1\n", [1.0]),
    "crlf": (b"x\r\n1\r\n2\r\n", [1.0, 2.0]),
    "blanks-comments-spaces": (b"\n  1.5 \n\n# two\n\t2 # last\n", [1.5, 2.0]),
    "no-final-newline": (b"1\n2", [1.0, 2.0]),
    "number-forms": (b"1e2\n.5\n5.\n+3\n-0.25E-1\n", [100.0, 0.5, 5.0, 3.0, -0.025]),
}


@pytest.mark.parametrize(("content", "want"), GOOD_CSV.values(), ids=GOOD_CSV.keys())
def test_csv_keeps_every_row(in_tmp: Path, content: bytes, want: list[float]) -> None:
    (in_tmp / "p.csv").write_bytes(content)
    np.testing.assert_array_equal(read_points("p.csv"), want)


def test_csv_with_byte_order_mark_keeps_its_first_row(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    # issue 10, item 6: the first row was taken for a header and dropped, exit 0
    (in_tmp / "p.csv").write_bytes(b"\xef\xbb\xbf1\n2\n3\n")
    status, out, err = run(capsys, *eval_argv("p.csv", "v.csv"))
    assert (status, out, err) == (0, "", "")
    lines = (in_tmp / "v.csv").read_text().splitlines()
    assert lines == ["d0,d1", "1,1", "2,1", "3,1"]


BAD_CSV: dict[str, tuple[bytes, str]] = {
    "number-with-letters-first": (b"1.5abc\n2\n3\n", "'1.5abc' on line 1"),  # issue 10, item 6
    "number-with-letters-later": (b"x\n1\n1.5abc\n", "'1.5abc' on line 3"),
    "word-later": (b"1\n2\nfoo\n", "'foo' on line 3"),
    "two-headers": (b"x\ny\n1\n", "'y' on line 2"),
    "header-starts-with-digit": (b"1st point\n1\n", "'1st point' on line 1"),
    "ragged": (b"1\n\n# c\n2,3\n", "'2,3' on line 4"),
    "trailing-comma": (b"1,\n2,\n", "'1,' on line 1"),
    "underscore-digits": (b"1\n1_000\n", "'1_000' on line 2"),
    "hex": (b"1\n0x10\n", "'0x10' on line 2"),
    "quoted-number": (b'1\n"2"\n', "on line 2"),
    "semicolons": (b"1;2\n", "'1;2' on line 1"),
    "not-utf8": (b"1\n2\xe9\n", "on line 2"),
    "utf16": ("x\n1\n".encode("utf-16"), "on line 1"),
    "npy-renamed": (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}\n", "on line 1"),
}


@pytest.mark.parametrize(("content", "match"), BAD_CSV.values(), ids=BAD_CSV.keys())
def test_csv_row_that_is_not_a_number_refuses_the_file(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, content: bytes, match: str
) -> None:
    (in_tmp / "p.csv").write_bytes(content)
    line = one_error_line(*run(capsys, *eval_argv("p.csv", "v.csv")))
    assert line.startswith("hodfunc: error: --points: ")
    assert match in line, line
    assert "'p.csv'" in line
    assert not (in_tmp / "v.csv").exists()


def test_csv_long_bad_line_is_shortened(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    (in_tmp / "p.csv").write_text("1\n" + "z" * 10_000 + "\n")
    line = one_error_line(*run(capsys, *eval_argv("p.csv", "v.csv")))
    assert "line 2" in line
    assert len(line) < 400


@pytest.mark.parametrize(
    "content", [b"", b"\n\n", b"# only a comment\n", b"x\n", b"\xef\xbb\xbf", b"x\n\n# c\n"]
)
def test_csv_without_points_is_refused(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, content: bytes
) -> None:
    (in_tmp / "p.csv").write_bytes(content)
    line = one_error_line(*run(capsys, *eval_argv("p.csv", "v.csv")))
    assert "at least one point" in line


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity"])
def test_csv_nonfinite_point_is_refused_with_its_line(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, text: str
) -> None:
    (in_tmp / "p.csv").write_text(f"x\n\n1\n# c\n{text}\n2\n")
    line = one_error_line(*run(capsys, *eval_argv("p.csv", "v.csv")))
    assert "finite" in line
    assert "line 5 of 'p.csv'" in line, line


def test_npy_nonfinite_point_names_its_row(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    np.save(in_tmp / "p.npy", np.array([0.0, 1.0, np.inf]))
    assert "row 2 of 'p.npy'" in one_error_line(*run(capsys, *eval_argv("p.npy", "v.npy")))


# --- --out is checked first and is never the input ----------------------------------------------


def _same_path(folder: Path) -> tuple[str, str]:
    return "in.npy", "in.npy"


def _dot_path(folder: Path) -> tuple[str, str]:
    (folder / "sub").mkdir()
    return "in.npy", "sub/../in.npy"


def _absolute(folder: Path) -> tuple[str, str]:
    return "in.npy", str(folder / "in.npy")


def _symlink(folder: Path) -> tuple[str, str]:
    (folder / "link.npy").symlink_to("in.npy")
    return "in.npy", "link.npy"


def _hardlink(folder: Path) -> tuple[str, str]:
    os.link(folder / "in.npy", folder / "hard.npy")
    return "in.npy", "hard.npy"


SAME_FILE: dict[str, Callable[[Path], tuple[str, str]]] = {
    "same": _same_path,
    "dotdot": _dot_path,
    "absolute": _absolute,
    "symlink": _symlink,
    "hardlink": _hardlink,
}


@pytest.mark.parametrize("paths", SAME_FILE.values(), ids=SAME_FILE.keys())
def test_out_equal_to_points_is_refused(
    capsys: pytest.CaptureFixture[str],
    in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    paths: Callable[[Path], tuple[str, str]],
) -> None:
    # issue 10, item 7: `--points in.npy --out in.npy` replaced the points by the values
    np.save(in_tmp / "in.npy", np.linspace(0.0, 1.0, 5))
    before = (in_tmp / "in.npy").read_bytes()
    points, out = paths(in_tmp)
    monkeypatch.setattr(hodfunc._cli._main, "_evaluate", _must_not_compute)
    line = one_error_line(*run(capsys, *eval_argv(points, out)))
    assert "must not overwrite the input" in line
    assert f"--out {out!r}" in line
    assert f"--points {points!r}" in line
    assert (in_tmp / "in.npy").read_bytes() == before


def _must_not_compute(*args: object, **kwargs: object) -> object:
    raise AssertionError("the output should have been refused before any computing")


def _missing_folder(folder: Path) -> str:
    return "no/such/folder/v.npy"


def _folder_target(folder: Path) -> str:
    (folder / "v.npy").mkdir()
    return "v.npy"


def _folder_target_slash(folder: Path) -> str:
    (folder / "v.npy").mkdir()
    return "v.npy/"


def _file_as_folder(folder: Path) -> str:
    (folder / "notes.txt").write_text("a file, not a folder")
    return "notes.txt/v.npy"


def _fifo_target(folder: Path) -> str:
    os.mkfifo(folder / "v.npy")
    return "v.npy"


def _no_write_permission(folder: Path) -> str:
    (folder / "v.npy").write_bytes(b"old")
    (folder / "v.npy").chmod(0o444)
    return "v.npy"


def _unwritable_filesystem(folder: Path) -> str:
    return "/proc/v.npy"  # even root cannot create files there


UNWRITABLE: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing-folder": (_missing_folder, "folder for the output must exist, got 'no/such/folder'"),
    "folder": (_folder_target, "must be a file, not a folder"),
    "folder-slash": (_folder_target_slash, "must end in .npy or .csv"),
    "file-as-folder": (_file_as_folder, "folder for the output must exist"),
    "fifo": (_fifo_target, "must be a regular file"),
    "read-only-file": (_no_write_permission, "read-only"),
    "proc": (_unwritable_filesystem, "folder for the output must be writable"),
}


@pytest.mark.parametrize(("target", "match"), UNWRITABLE.values(), ids=UNWRITABLE.keys())
def test_out_is_checked_before_computing(
    capsys: pytest.CaptureFixture[str],
    in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: Callable[[Path], str],
    match: str,
) -> None:
    # issue 10, item 8: the folder was checked only after all the computing
    if target is _no_write_permission and os.geteuid() == 0:
        pytest.skip("root may write any file")
    np.save(in_tmp / "p.npy", np.zeros(3))
    out = target(in_tmp)
    monkeypatch.setattr(hodfunc._cli._main, "_evaluate", _must_not_compute)
    line = one_error_line(*run(capsys, *eval_argv("p.npy", out)))
    assert line.startswith("hodfunc: error: --out: "), line
    assert match in line, line
    assert [p.name for p in in_tmp.iterdir() if p.name.startswith(".")] == []


def test_plot_target_is_checked_before_computing(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hodfunc._cli._main, "_evaluate", _must_not_compute)
    (in_tmp / "f.png").mkdir()
    for plot, match in [
        ("f.png", "must be a file, not a folder"),
        ("none/f.png", "folder for the output must exist"),
        ("/proc/f.png", "must be writable"),
        ("f.gif", ".png, .svg, .pdf"),
    ]:
        line = one_error_line(
            *run(capsys, "derive", "sin(x)", "--at", "0", "--order", "1", "--plot", plot)
        )
        assert line.startswith("hodfunc: error: --plot: "), line
        assert match in line, line
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    line = one_error_line(*run(capsys, "derive", "sin(x)", "--order", "1", "--plot", "g.png"))
    assert 'pip install "hodfunc[plot]"' in line


# --- atomic writes ------------------------------------------------------------------------------


class _FullDisk(io.BufferedIOBase):
    """A file that takes ``room`` bytes and then fails like a full disk, partway into a write."""

    def __init__(self, fd: int, room: int) -> None:
        self._file = io.FileIO(fd, "wb")
        self._room = room

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        if len(view) > self._room:
            self._file.write(view[: self._room])  # a partial write, then the error
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(view)
        return self._file.write(view) or 0

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        super().close()


def _full_disk_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    real = os.fdopen

    def fdopen(fd: int, mode: str = "r", *args: object, **kwargs: object) -> object:
        if mode == "wb":
            return _FullDisk(fd, room)
        return real(fd, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "fdopen", fdopen)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("out", ["v.npy", "v.csv"])
def test_failed_write_leaves_the_previous_file(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    # issue 10, item 8: a failed write destroyed the old file and left a truncated one
    np.save(in_tmp / "p.npy", np.linspace(-1.0, 1.0, 20_000))
    old = b"previous results\n" * 100
    (in_tmp / out).write_bytes(old)
    _full_disk_after(monkeypatch, room=50_000)  # the output is about 320 kB (npy) or 800 kB (csv)
    line = one_error_line(*run(capsys, *eval_argv("p.npy", out)))
    assert f"--out: the file cannot be written, got {out!r} (No space left on device)" in line
    assert "The previous file is unchanged." in line
    assert (in_tmp / out).read_bytes() == old
    assert _leftovers(in_tmp, {"p.npy", out}) == []


def test_failed_write_of_a_new_file_leaves_nothing(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.save(in_tmp / "p.npy", np.linspace(-1.0, 1.0, 20_000))
    _full_disk_after(monkeypatch, room=1000)
    line = one_error_line(*run(capsys, *eval_argv("p.npy", "v.csv")))
    assert "No space left on device" in line
    assert "previous" not in line
    assert _leftovers(in_tmp, {"p.npy"}) == []


def test_failed_plot_leaves_the_previous_picture(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = b"\x89PNG an older picture"
    (in_tmp / "f.png").write_bytes(old)
    _full_disk_after(monkeypatch, room=2000)
    line = one_error_line(*run(capsys, "derive", "sin(x)", "--order", "2", "--plot", "f.png"))
    assert "--plot: the file cannot be written, got 'f.png' (No space left on device)" in line
    assert (in_tmp / "f.png").read_bytes() == old
    assert _leftovers(in_tmp, {"f.png"}) == []


def test_interrupted_write_leaves_the_previous_file(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.save(in_tmp / "p.npy", np.zeros(10))
    (in_tmp / "v.npy").write_bytes(b"old")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted)
    status, out, err = run(capsys, *eval_argv("p.npy", "v.npy"))
    assert (status, out, err) == (130, "", "hodfunc: interrupted\n")
    assert (in_tmp / "v.npy").read_bytes() == b"old"
    assert _leftovers(in_tmp, {"p.npy", "v.npy"}) == []


def test_write_keeps_symlinks_and_permissions(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    np.save(in_tmp / "p.npy", np.array([1.0, 2.0]))
    (in_tmp / "real.csv").write_text("old\n")
    (in_tmp / "real.csv").chmod(0o640)
    (in_tmp / "link.csv").symlink_to("real.csv")
    status, _, err = run(capsys, *eval_argv("p.npy", "link.csv"))
    assert (status, err) == (0, "")
    assert (in_tmp / "link.csv").is_symlink()  # the link still points at the file it named
    assert (in_tmp / "real.csv").read_text() == "d0,d1\n1,1\n2,1\n"
    assert stat.S_IMODE((in_tmp / "real.csv").stat().st_mode) == 0o640
    status, _, err = run(capsys, *eval_argv("p.npy", "new.npy"))
    assert (status, err) == (0, "")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((in_tmp / "new.npy").stat().st_mode) == 0o666 & ~umask  # not mkstemp's
    assert _leftovers(in_tmp, {"p.npy", "real.csv", "link.csv", "new.npy"}) == []


def test_bytes_lost_behind_python_s_back_are_found(tmp_path: Path) -> None:
    # numpy's tofile writes through a duplicated FILE* and can lose the error of its last
    # buffered bytes; atomic_file compares the file's size with what was written
    from hodfunc import ArgumentError

    path = tmp_path / "v.npy"
    path.write_bytes(b"old")

    def write_then_lose_half() -> None:
        with atomic_file(str(path), "--out") as fh:
            fh.write(b"0123456789")
            fh.flush()
            os.ftruncate(fh.fileno(), 5)

    with pytest.raises(ArgumentError, match=r"only 5 of 10 bytes reached the file"):
        write_then_lose_half()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]


def test_atomic_file_error_names_the_api(tmp_path: Path) -> None:
    from hodfunc import ArgumentError

    opened = atomic_file(str(tmp_path / "gone" / "v.npy"), "--out")  # the folder does not exist
    with pytest.raises(ArgumentError, match=r"^--out: the file cannot be written, got '.*' \("):
        opened.__enter__()


# --- a real file-size limit, in subprocesses ----------------------------------------------------

_LIMITED = """\
import resource, runpy, sys
import matplotlib.font_manager  # builds matplotlib's font cache, if missing, before the limit
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["hodfunc", *sys.argv[2:]]
runpy.run_module("hodfunc", run_name="__main__")
"""


def _hodfunc_with_file_limit(limit: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``hodfunc ARGS`` with ``RLIMIT_FSIZE`` set to ``limit`` bytes and SIGXFSZ at its default
    (which kills a process that writes past the limit unless the write ignores it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTHONWARNINGS", None)
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-c", _LIMITED, str(limit), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_file_size_limit_leaves_the_previous_file_byte_for_byte(tmp_path: Path) -> None:
    points = np.linspace(-3.0, 3.0, 100_000)
    cases = {
        "npy": ("values.npy", ("eval", "sin(x)", "--points", "p.npy", "--order", "4")),
        "csv": ("values.csv", ("eval", "sin(x)", "--points", "p.npy", "--order", "4")),
        "png": ("f.png", ("derive", "sin(x)", "--order", "4", "--at", "0")),
    }
    old = {name: os.urandom(3000) + b"\n1,2,3,4,5\n" for name in cases}
    for name, (out, _) in cases.items():
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "p.npy", points)
        (tmp_path / name / out).write_bytes(old[name])

    def one(name: str) -> subprocess.CompletedProcess[str]:
        out, args = cases[name]
        flag = "--plot" if name == "png" else "--out"
        # 4 MB (npy, csv: 4 and 9 MB of values) and 10 kB (png: about 50 kB) are below the output
        limit = 10_000 if name == "png" else 4_000_000
        return _hodfunc_with_file_limit(limit, *args, flag, out, cwd=tmp_path / name)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(cases, pool.map(one, cases), strict=True))
    for name, (out, _) in cases.items():
        result = results[name]
        assert result.returncode == 2, (name, result.returncode, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("hodfunc: error: "), lines[0]
        assert "cannot be written" in lines[0]
        assert "File too large" in lines[0]
        assert "The previous file is unchanged." in lines[0]
        assert (tmp_path / name / out).read_bytes() == old[name], name
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(["p.npy", out])
