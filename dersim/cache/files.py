"""The cache's files read with one-line errors naming the broken file: the manifest, its digest,
Parquet columns, and the table schemas a manifest implies. A leaf: the checker (`check.py`) and
the reader (`reader.py`) both build on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dersim.cache.schema import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_HASH,
    QUESTIONS,
    QUESTIONS_SCHEMA,
    SAMPLED_TRANSITIONS_SCHEMA,
    STATES,
    TRANSITIONS,
    TRANSITIONS_SCHEMA,
    WRITING_MARKER,
    is_sampled,
    manifest_hash_line,
    states_schema,
)
from dersim.errors import CacheFormatError


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the cache in `directory`; checks that it is JSON of a known format version
    and that no write of the tables is unfinished (see `writer.write_cache`)."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise CacheFormatError(f"{directory}: not a cache directory")
    if (directory / WRITING_MARKER).exists():
        raise CacheFormatError(
            f"{directory}: its tables are being written, or their last write was interrupted "
            "(killed?); if no build or import is running, rerun the one that wrote it"
        )
    raw = _read_bytes(path, f"is {directory} a finished cache?")
    if (
        _read_bytes(
            directory / MANIFEST_HASH, "written by an older dersim? rebuild or re-import the cache"
        )
        != manifest_hash_line(raw).encode()
    ):
        raise CacheFormatError(
            f"{path}: does not match {MANIFEST_HASH} (edited or damaged since it was written; "
            "rebuild or re-import the cache)"
        )
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
    """The error's type and the first line of its message (e.g. 'ArrowInvalid: ...'), for one-line
    errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def missing_column(path: Path, name: str) -> str:
    return (
        f"{path}: missing column '{name}' (written by another dersim version? rebuild or "
        "re-import it)"
    )


def read_columns(
    path: Path, columns: Sequence[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
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
            raise CacheFormatError(missing_column(path, name))
    for field in schema or ():
        if (
            field.name in found.names
            and (columns is None or field.name in columns)
            and not found.field(field.name).type.equals(field.type)
        ):
            raise CacheFormatError(
                f"{path}: column '{field.name}' has type {found.field(field.name).type}, "
                f"expected {field.type}"
            )
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except Exception as exc:  # a damaged page shows only when it is decoded
        raise CacheFormatError(f"{path}: unreadable Parquet ({describe_error(exc)})") from None


def table_schemas(
    manifest: dict[str, Any], metrics: Iterable[str] | None = None
) -> dict[str, pa.Schema]:
    """Table file name -> the schema the manifest implies (states with the `metrics` columns,
    default all of the manifest's, and its embedding dimension)."""
    metrics = list(manifest["metric_columns"] if metrics is None else metrics)
    dim = int(manifest.get("embedding", {}).get("dim", 0) or 0)
    return {
        QUESTIONS: QUESTIONS_SCHEMA,
        STATES: states_schema(metrics, dim),
        TRANSITIONS: SAMPLED_TRANSITIONS_SCHEMA if is_sampled(manifest) else TRANSITIONS_SCHEMA,
    }


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """float32 [S, d]: the fixed-size-list `embedding` column of `table` as one array."""
    column = table["embedding"].combine_chunks()
    return (
        column.flatten()
        .to_numpy()
        .astype(np.float32)
        .reshape(table.num_rows, column.type.list_size)
    )
