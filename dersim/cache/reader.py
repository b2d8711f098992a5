"""Opening a cache directory: manifest and tables, with one-line errors naming the broken file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dersim.cache.schema import FORMAT_VERSION, MANIFEST, QUESTIONS, STATES, TRANSITIONS
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


def open_cache(directory: str | Path) -> Cache:
    """Load a cache (manifest and tables); `dersim cache verify` checks it deeply."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    return Cache(directory, manifest, read_table(directory / QUESTIONS), read_table(directory / STATES),
                 read_table(directory / TRANSITIONS))
