"""Writing a cache's tables (plain Arrow tables: the builder's `builder/tables.py` and the importers
make them) and its manifest.

The manifest is written last and holds the content
hashes of the three tables, and a marker file flags the rewrite while it runs: a reader can tell a
finished cache from a half-rewritten one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dersim.cache.schema import (
    FORMAT_VERSION,
    MANIFEST,
    QUESTIONS,
    STATES,
    TABLE_FILES,
    TRANSITIONS,
    WRITING_MARKER,
    file_sha256,
    fsync_directory,
    write_json_atomic,
    write_manifest,
    write_parquet_atomic,
)


def embedding_column(embeddings: np.ndarray) -> pa.FixedSizeListArray:
    """float32 [S, d] -> the states table's fixed-size-list embedding column."""
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])


def write_cache(out: Path, tables: dict[str, pa.Table], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the three tables, then the manifest with their hashes; keeps the first `created` time.

    A marker file is present from before the first table is replaced until the manifest is
    written, so a kill in between leaves a cache every reader refuses (and the rerun repairs)."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    created = now
    old = out / MANIFEST
    if old.exists():
        try:
            created = json.loads(old.read_text(encoding="utf-8")).get("created", now)
        except (json.JSONDecodeError, UnicodeDecodeError):
            created = now
    marker = out / WRITING_MARKER
    write_json_atomic({"pid": os.getpid(), "started": now}, marker)
    for name in TABLE_FILES:
        write_parquet_atomic(tables[name], out / name)
    manifest = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "files": {name: file_sha256(out / name) for name in TABLE_FILES},
        "counts": {
            "questions": tables[QUESTIONS].num_rows,
            "states": tables[STATES].num_rows,
            "transitions": tables[TRANSITIONS].num_rows,
        },
        "created": created,
        "updated": now,
    }
    write_manifest(manifest, out)
    marker.unlink()
    fsync_directory(out)
    return manifest
