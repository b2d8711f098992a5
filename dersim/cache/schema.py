"""The cache format: file names, Parquet schemas and atomic writes.

A cache is a directory with `manifest.json`, `questions.parquet`, `states.parquet` and
`transitions.parquet` (see DESIGN.md, "Cache format"). Metric columns of `states` vary with the
recipe; every other column is fixed here. Files are written to a temporary name, fsynced and
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# sha256 of manifest.json's bytes, in `sha256sum` format: every reader checks the manifest against
# it.
MANIFEST_HASH = "manifest.sha256"
QUESTIONS = "questions.parquet"
STATES = "states.parquet"
TRANSITIONS = "transitions.parquet"
TABLE_FILES = (QUESTIONS, STATES, TRANSITIONS)
# Present while the tables are rewritten: a reader refuses a half-rewritten cache.
WRITING_MARKER = ".writing"

SPLITS = ("train", "test")
# manifest "dedup": built caches merge answers by normalised text; imported ones keep one state
# per (question, model) answer, because the imported scores belong to the model, not the text.
DEDUP_BY_ANSWER = "normalised_answer"
DEDUP_NONE = "none"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

QUESTIONS_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("split", pa.string()),
        ("question", pa.string()),
        ("reference", pa.string()),
        ("references", pa.list_(pa.string())),
        ("label", pa.string()),
        ("root_state_id", pa.int32()),
    ]
)

TRANSITIONS_SCHEMA = pa.schema(
    [
        ("state_id", pa.int32()),
        ("expert_id", pa.int16()),
        ("next_state_id", pa.int32()),  # null when the call failed
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float32()),
        ("cost_usd", pa.float32()),  # from the expert's token prices, or as imported
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
# A cache whose recipe samples (some expert's `samples` k > 1) records which of the k calls of a
# (state, expert) each transition is: rows are then unique per (state, expert, sample).
SAMPLE = "sample"
SAMPLED_TRANSITIONS_SCHEMA = TRANSITIONS_SCHEMA.append(pa.field(SAMPLE, pa.int16()))


def expert_samples(manifest: dict[str, Any]) -> list[int]:
    """Each expert's samples per call k (1 for a greedy expert, or a cache from before sampling)."""
    return [int(e.get("samples", 1)) for e in manifest.get("experts", [])]


def is_sampled(manifest: dict[str, Any]) -> bool:
    """Whether the cache of `manifest` records sampled transitions (a `sample` column)."""
    return max(expert_samples(manifest), default=1) > 1


def not_replayable(directory: Path | str, manifest: dict[str, Any]) -> str | None:
    """Why routes cannot be replayed on the cache of `manifest` by this version (a sampled cache
    needs draws over each call's children), or None."""
    if not is_sampled(manifest):
        return None
    return (
        f"{directory}: a sampled cache ({max(expert_samples(manifest))} samples per call): "
        "replaying routes over its children is not built yet; `dersim cache info` shows its "
        "sampling baselines"
    )


def is_imported(manifest: dict[str, Any]) -> bool:
    """Whether the cache of `manifest` was imported (`dersim cache import`) rather than built."""
    return "import" in manifest or manifest.get("dedup") == DEDUP_NONE


def states_schema(metric_columns: list[str], dim: int) -> pa.Schema:
    """`states.parquet`: fixed columns, then one float32 column per metric, then the embedding."""
    return pa.schema(
        [
            ("state_id", pa.int32()),
            ("question_id", pa.string()),
            ("answer", pa.string()),
            ("depth", pa.int16()),
            *[(name, pa.float32()) for name in metric_columns],
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


def file_sha256(path: Path) -> str:
    """Content hash of a file, recorded in the manifest and checked by `cache verify`."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_replace(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    fsync_directory(final.parent)


def fsync_directory(directory: Path) -> None:
    """Make renames and deletions in `directory` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_parquet_atomic(table: pa.Table, path: Path, compression_level: int = 6) -> None:
    """Write `table` to `path` with deterministic bytes (fixed settings, no timestamps),
    atomically."""
    tmp = path.with_name(f".tmp-{path.name}")
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        compression_level=compression_level,
        write_statistics=True,
        store_schema=True,
    )
    _fsync_replace(tmp, path)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON (sorted keys, indented) atomically."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _fsync_replace(tmp, path)


def manifest_hash_line(manifest_bytes: bytes) -> str:
    """The line `manifest.sha256` holds for these manifest bytes (`sha256sum -c` reads it)."""
    return f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST}\n"


def write_manifest(manifest: dict[str, Any], directory: Path) -> None:
    """Write `manifest.json` and then the hash beside it that readers check, each atomically."""
    write_json_atomic(manifest, directory / MANIFEST)
    tmp = directory / f".tmp-{MANIFEST_HASH}"
    tmp.write_text(manifest_hash_line((directory / MANIFEST).read_bytes()), encoding="utf-8")
    _fsync_replace(tmp, directory / MANIFEST_HASH)
