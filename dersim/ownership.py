"""Which output directories are dersim's, so that `--overwrite` removes only what dersim wrote.

Every command that writes a directory of results (a cache, a run, a reproduction, a routers
table) marks it with `.dersim-output`, naming the kind of output. `claim_output` is called
inside the directory's write lock once every option is checked: it refuses a directory that
holds another kind of output or files dersim does not write there, and with `overwrite` it
removes only the files of that kind (`OUTPUT_FILES`). So `--out .` in a working tree, or a typo
in an option, never deletes anything.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

from dersim.errors import OutputError
from dersim.locking import LOCK_FILE

MARKER = ".dersim-output"

# What each kind of output directory may hold (names or glob patterns); everything else is the
# user's.
OUTPUT_FILES: dict[str, tuple[str, ...]] = {
    "cache": (
        "manifest.json",
        "manifest.sha256",
        "questions.parquet",
        "states.parquet",
        "transitions.parquet",
        ".writing",
        ".tmp-*",
        "journal",
    ),
    "run": (
        "run.json",
        "checkpoint.msgpack",
        "checkpoint.msgpack.*",
        "curves.parquet",
        "curves.png",
        "judge.json",
        "runs.parquet",
        "summary.md",
        "pareto_*.png",
        ".tmp-*",
    ),
    "reproduction": ("grids", "tables.md", "tables.tex", "results.parquet", "*.png", ".tmp-*"),
    "routers": ("routers.md", "routers.json", "curves.parquet", "routers.png"),
}


def _kind_of(directory: Path) -> str | None:
    """The kind recorded in the directory's marker, or None when it has none (or an unreadable
    one)."""
    try:
        return str(json.loads((directory / MARKER).read_text(encoding="utf-8"))["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_known(name: str, kind: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OUTPUT_FILES[kind])


def claim_output(directory: Path, kind: str, *, overwrite: bool = False) -> list[Path]:
    """Make `directory` (existing, write-locked) this kind's output, or raise a one-line
    `OutputError`.

    Refused: a directory marked as another kind; one holding files that this kind never writes
    (the first is named); with `overwrite`, one not marked as dersim's that has something to
    remove. With `overwrite`, the kind's files are removed. Returns what was there before (after
    removal: nothing of this kind)."""
    if kind not in OUTPUT_FILES:
        raise ValueError(f"unknown output kind {kind!r}")
    entries = sorted(p for p in directory.iterdir() if p.name not in (LOCK_FILE, MARKER))
    marked = _kind_of(directory)
    if marked is not None and marked != kind:
        raise OutputError(
            f"{directory}: holds a dersim {marked}, not a {kind}; choose another --out"
        )
    foreign = [p for p in entries if not _is_known(p.name, kind)]
    if foreign:
        raise OutputError(
            f"{directory}: holds {foreign[0].name}, which dersim does not write in a {kind} "
            "directory; choose an empty or new --out (nothing was changed)"
        )
    if overwrite and entries:
        if marked is None:
            raise OutputError(
                f"{directory}: not marked as a dersim {kind} ({MARKER} is missing: written by an "
                "older dersim, or not by dersim); remove it yourself or choose another --out"
            )
        for path in entries:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        entries = []
    if marked is None and not entries:  # only a fresh directory becomes dersim's
        (directory / MARKER).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
    return entries
