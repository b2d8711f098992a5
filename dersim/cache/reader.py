"""Opening a cache directory: manifest and tables, with one-line errors naming the broken file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from dersim.cache.schema import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_HASH,
    QUESTIONS,
    QUESTIONS_SCHEMA,
    STATES,
    TRANSITIONS,
    TRANSITIONS_SCHEMA,
    WRITING_MARKER,
    manifest_hash_line,
    states_schema,
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
    """The manifest of the cache in `directory`; checks that it is JSON of a known format version and
    that no write of the tables is unfinished (see `writer.write_cache`)."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise CacheFormatError(f"{directory}: not a cache directory")
    if (directory / WRITING_MARKER).exists():
        raise CacheFormatError(f"{directory}: its tables are being written, or their last write was interrupted "
                               "(killed?); if no build or import is running, rerun the one that wrote it")
    raw = _read_bytes(path, f"is {directory} a finished cache?")
    if _read_bytes(directory / MANIFEST_HASH, "written by an older dersim? rebuild or re-import the cache") \
            != manifest_hash_line(raw).encode():
        raise CacheFormatError(f"{path}: does not match {MANIFEST_HASH} (edited or damaged since it was written; "
                               "rebuild or re-import the cache)")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise CacheFormatError(f"{path}: format_version {found!r} is not {FORMAT_VERSION}")
    for key in ("experts", "depth", "metric_columns", "files"):
        if key not in manifest:
            raise CacheFormatError(f"{path}: missing key '{key}'")
    return manifest


def _read_bytes(path: Path, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CacheFormatError(f"{path}: missing ({hint})") from None
    except OSError as exc:
        raise CacheFormatError(f"{path}: unreadable ({exc.strerror})") from None


def manifest_digest(directory: Path) -> str:
    """The cache's identity: the sha256 of its manifest (which holds the hashes of its tables), as
    recorded beside it; checked against the manifest's bytes first."""
    read_manifest(directory)
    return (directory / MANIFEST_HASH).read_text(encoding="utf-8").split()[0]


def describe_error(exc: Exception) -> str:
    """The error's type and the first line of its message (e.g. 'ArrowInvalid: ...'), for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def read_columns(path: Path, columns: Sequence[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """`columns` of the Parquet file `path` (all when None) as an Arrow table, or a one-line
    `CacheFormatError` naming the file: missing, unreadable (truncated, damaged), lacking a column,
    or (when `schema` is given) holding one of `schema`'s columns it reads with another type."""
    try:
        found = pq.read_schema(path)
    except FileNotFoundError:
        raise CacheFormatError(f"{path}: missing") from None
    except Exception as exc:  # pyarrow raises several error types for damaged files
        raise CacheFormatError(f"{path}: unreadable Parquet ({describe_error(exc)})") from None
    for name in columns or ():
        if name not in found.names:
            raise CacheFormatError(f"{path}: missing column '{name}' (written by another dersim version? "
                                   "rebuild or re-import it)")
    for field in schema or ():
        if field.name in found.names and (columns is None or field.name in columns) \
                and not found.field(field.name).type.equals(field.type):
            raise CacheFormatError(f"{path}: column '{field.name}' has type {found.field(field.name).type}, "
                                   f"expected {field.type}")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except Exception as exc:  # a damaged page shows only when it is decoded
        raise CacheFormatError(f"{path}: unreadable Parquet ({describe_error(exc)})") from None


def open_cache(directory: str | Path, *, check: bool = True, verify_hashes: bool = True) -> Cache:
    """Load a cache: manifest and tables, with their columns and types checked. With `check` (the
    default) the table files are also checked as `dersim.cache.check.check_cache` does (hashes
    unless `verify_hashes` is False, ids, scores); `dersim cache verify` checks it deeply."""
    from dersim.cache.check import content_problems, hash_problems, raise_first  # check imports this module

    directory = Path(directory)
    manifest = read_manifest(directory)
    if check and verify_hashes:
        raise_first(hash_problems(directory, manifest))
    metrics = list(manifest["metric_columns"])
    schemas = {QUESTIONS: QUESTIONS_SCHEMA, STATES: states_schema(metrics, int(manifest.get("embedding", {})
                                                                               .get("dim", 0) or 0)),
               TRANSITIONS: TRANSITIONS_SCHEMA}
    frames = {name: pl.from_arrow(read_columns(directory / name, schema.names, schema if check else None))
              for name, schema in schemas.items()}
    if check:
        raise_first(content_problems(directory, manifest, frames, metrics))  # type: ignore[arg-type]
    return Cache(directory, manifest, *(frames[name] for name in (QUESTIONS, STATES, TRANSITIONS)))  # type: ignore[arg-type]
