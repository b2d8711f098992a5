"""One writer per output directory: an exclusive `flock` on a lock file inside it.

`directory_lock(path, what)` creates the directory if needed, checks that files can be created in
it (before any expensive work) and holds an exclusive, non-blocking lock on `path/.dersim.lock`
for the body of the `with`. A second writer fails at once with a one-line `OutputError` naming
the holder's PID. The kernel drops the lock when its process ends, even by `kill -9`, so a lock
file left behind never blocks a rerun.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dersim.errors import OutputError

LOCK_FILE = ".dersim.lock"
HOLDER_WAIT_S = 0.5  # how long to wait for a new holder to write its PID into the lock file


def _file_ancestor(directory: Path) -> Path | None:
    """The first existing path on the way to `directory` that is not a directory."""
    for path in (*reversed(directory.parents), directory):
        if path.exists() and not path.is_dir():
            return path
    return None


def prepare_directory(directory: Path) -> Path:
    """Create `directory` (with its parents) and check that a file can be created in it; a
    one-line `OutputError` naming the directory otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = _file_ancestor(directory)
        where = "" if blocker in (None, directory) else f" ({blocker} is a file)"
        raise OutputError(
            f"{directory}: {'not a directory' if where else 'a file, not a directory'}{where}"
        ) from None
    except OSError as exc:
        raise OutputError(f"{directory}: cannot create the directory ({exc.strerror})") from None
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise OutputError(f"{directory}: not writable ({exc.strerror})") from None
    return directory


def _holder(path: Path) -> str:
    """'PID 1234, dersim build' from the lock file (its holder may still be writing it)."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        try:
            pid, _, what = path.read_text(encoding="utf-8").strip().partition(" ")
        except OSError:
            pid, what = "", ""
        if pid or time.monotonic() > deadline:
            return f"PID {pid or 'unknown'}" + (f", dersim {what}" if what else "")
        time.sleep(0.02)


@contextmanager
def directory_lock(directory: str | Path, what: str) -> Iterator[Path]:
    """Hold the exclusive write lock of `directory` (created if needed) while the body runs.

    `what` names the writer in the lock file and in the error a second writer gets, e.g. "build",
    "import", "train". Raises `OutputError` when the directory cannot be created or written, or
    when another process holds the lock."""
    directory = prepare_directory(Path(directory))
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{directory}: not writable ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{directory}: another writer ({_holder(path)}) is using this directory; "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        try:
            yield directory
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
