"""Opening a cache directory: manifest and tables, with one-line errors naming the broken file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dersim.cache.schema import (
    FORMAT_VERSION,
    MANIFEST,
    QUESTIONS,
    QUESTIONS_SCHEMA,
    STATES,
    TRANSITIONS,
    TRANSITIONS_SCHEMA,
)
from dersim.errors import CacheFormatError


@dataclass(frozen=True)
class Cache:
    """A loaded cache: its manifest and its three tables as polars frames."""

    path: Path
    manifest: dict[str, Any]
    questions: pl.DataFrame
    states: pl.DataFrame
    transitions: pl.DataFrame

    @property
    def expert_names(self) -> list[str]:
        return [e["name"] for e in self.manifest["experts"]]

    @property
    def depth(self) -> int:
        return int(self.manifest["depth"])

    @property
    def metric_columns(self) -> list[str]:
        return list(self.manifest["metric_columns"])


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the cache in `directory`; checks that it is JSON of a known format version."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise CacheFormatError(f"{directory}: not a cache directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheFormatError(f"{path}: missing (is {directory} a finished cache?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise CacheFormatError(f"{path}: format_version {found!r} is not {FORMAT_VERSION}")
    for key in ("experts", "depth", "metric_columns", "files"):
        if key not in manifest:
            raise CacheFormatError(f"{path}: missing key '{key}'")
    return manifest


def read_table(path: Path) -> pl.DataFrame:
    """One Parquet table of a cache, or a one-line error naming the file."""
    try:
        return pl.read_parquet(path)
    except FileNotFoundError:
        raise CacheFormatError(f"{path}: missing") from None
    except Exception as exc:  # polars/arrow raise several error types for damaged files
        raise CacheFormatError(f"{path}: unreadable Parquet ({type(exc).__name__})") from None


def _require_columns(frame: pl.DataFrame, columns: list[str], path: Path) -> pl.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CacheFormatError(f"{path}: missing column '{missing[0]}' (written by another dersim version? "
                               "rebuild or re-import it)")
    return frame


def open_cache(directory: str | Path) -> Cache:
    """Load a cache (manifest and tables, with their columns checked); `dersim cache verify` checks
    it deeply."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    state_columns = ["state_id", "question_id", "answer", "depth", *manifest["metric_columns"], "embedding"]
    tables = [_require_columns(read_table(directory / name), columns, directory / name)
              for name, columns in ((QUESTIONS, QUESTIONS_SCHEMA.names), (STATES, state_columns),
                                    (TRANSITIONS, TRANSITIONS_SCHEMA.names))]
    return Cache(directory, manifest, *tables)
