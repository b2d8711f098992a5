"""Joining shard caches (`build-cache --shard I/N`) into the cache one machine would have built.

Every shard must come from the same recipe and the same kernels (the manifest's settings other
than the shard's own record), and the N shards must each appear once. Questions go back to the
recipe's order (each shard's manifest records its questions' positions in it); state ids are
renumbered question by question in that order, exactly as a single build assigns them, and each
question's states and calls keep their order within the question, so the merged tables are the
single build's, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dersim.cache.check import read_checked
from dersim.cache.files import table_schemas
from dersim.cache.schema import QUESTIONS, STATES, TABLE_FILES, TRANSITIONS
from dersim.cache.writer import write_cache
from dersim.errors import CacheFormatError

# Manifest entries a shard sets for itself; every other entry must agree across shards.
PER_SHARD = ("shard", "files", "counts", "created", "updated", "dataset")


@dataclass(frozen=True)
class ShardCache:
    """One shard's manifest and tables (as written: Arrow, the schema's types)."""

    path: Path
    manifest: dict[str, Any]
    tables: dict[str, pa.Table]

    @classmethod
    def read(cls, path: Path) -> ShardCache:
        manifest, tables = read_checked(path, dict.fromkeys(TABLE_FILES))
        if not isinstance(manifest.get("shard"), dict):
            raise CacheFormatError(f"{path}: not a shard (built without --shard)")
        # As written: Parquet reads a list's item back as "element"; the schema names it "item".
        schemas = table_schemas(manifest)
        written = {
            name: t.select(schemas[name].names).cast(schemas[name]) for name, t in tables.items()
        }
        return cls(path, manifest, written)

    @property
    def shard(self) -> dict[str, Any]:
        return self.manifest["shard"]

    def question_slices(self) -> list[tuple[int, int, int, int]]:
        """Per question, in the shard's order: (first state, end, first call, end); a question's
        states and calls are contiguous, as the builder writes them."""
        roots = self.tables[QUESTIONS]["root_state_id"].to_numpy().astype(np.int64)
        ends = np.append(roots[1:], self.tables[STATES].num_rows)
        owner = np.searchsorted(roots, self.tables[TRANSITIONS]["state_id"].to_numpy(), "right") - 1
        if (np.diff(owner) < 0).any():
            raise CacheFormatError(f"{self.path / TRANSITIONS}: calls not grouped by question")
        counts = np.bincount(owner, minlength=len(roots))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return [
            (int(roots[q]), int(ends[q]), int(starts[q]), int(starts[q] + counts[q]))
            for q in range(len(roots))
        ]


def _same_build(shards: list[ShardCache]) -> None:
    """Refuse shards of different recipes, kernels or shard counts (one line naming them)."""
    first = shards[0]

    def dataset(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m["dataset"].items() if k not in ("splits", "path")}

    # Shards may differ in what their recipe fingerprint leaves out (file paths, servers): then
    # the fingerprint is compared instead of the recipe and experts, and the first shard's are kept.
    exempt = set(PER_SHARD) | (
        {"recipe", "experts"} if "recipe_fingerprint" in first.manifest else set()
    )
    for other in shards[1:]:
        keys = (set(first.manifest) | set(other.manifest)) - exempt
        differs = sorted(k for k in keys if other.manifest.get(k) != first.manifest.get(k))
        differs += ["dataset"] if dataset(other.manifest) != dataset(first.manifest) else []
        differs += ["shard count"] if other.shard["count"] != first.shard["count"] else []
        differs += (
            ["questions"]
            if other.shard["recipe_questions"] != first.shard["recipe_questions"]
            else []
        )
        if differs:
            raise CacheFormatError(
                f"{other.path}: not a shard of the same build as {first.path} "
                f"(differs in: {', '.join(differs)})"
            )


def _check_coverage(shards: list[ShardCache]) -> None:
    """Each of the N shards exactly once, and together every question of the recipe once."""
    count = shards[0].shard["count"]
    seen: dict[int, Path] = {}
    for cache in shards:
        index = cache.shard["index"]
        if index in seen:
            raise CacheFormatError(f"{cache.path}: shard {index} of {count} again ({seen[index]})")
        seen[index] = cache.path
    missing = [str(i) for i in range(count) if i not in seen]
    if missing:
        raise CacheFormatError(
            f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} of {count} missing "
            f"(merge needs all {count})"
        )
    positions = sorted(p for cache in shards for p in cache.shard["positions"])
    if positions != list(range(shards[0].shard["recipe_questions"])):
        raise CacheFormatError(
            f"{shards[0].path}: the shards' questions do not cover the recipe's once each"
        )


def _shifted(table: pa.Table, column: str, shift: int) -> pa.Table:
    """`table` with `shift` added to an int32 id column (nulls stay null), its field unchanged."""
    index = table.schema.get_field_index(column)
    field = table.schema.field(index)
    return table.set_column(index, field, pc.add(table[column], pa.scalar(shift, field.type)))


def merge_caches(paths: list[Path], out: Path) -> dict[str, Any]:
    """Write the cache of all the shard caches at `paths` to `out`; returns its manifest."""
    shards = [ShardCache.read(path) for path in paths]
    _same_build(shards)
    _check_coverage(shards)
    slices = [cache.question_slices() for cache in shards]
    order = sorted(
        (position, c, q)
        for c, cache in enumerate(shards)
        for q, position in enumerate(cache.shard["positions"])
    )
    parts: dict[str, list[pa.Table]] = {QUESTIONS: [], STATES: [], TRANSITIONS: []}
    offset = 0
    for _, c, q in order:
        s0, s1, t0, t1 = slices[c][q]
        tables = shards[c].tables
        parts[QUESTIONS].append(
            _shifted(tables[QUESTIONS].slice(q, 1), "root_state_id", offset - s0)
        )
        parts[STATES].append(_shifted(tables[STATES].slice(s0, s1 - s0), "state_id", offset - s0))
        calls = _shifted(tables[TRANSITIONS].slice(t0, t1 - t0), "state_id", offset - s0)
        parts[TRANSITIONS].append(_shifted(calls, "next_state_id", offset - s0))
        offset += s1 - s0
    merged = {name: pa.concat_tables(tables).combine_chunks() for name, tables in parts.items()}
    first = shards[0].manifest
    splits = merged[QUESTIONS]["split"].to_pylist()
    manifest = {k: v for k, v in first.items() if k not in PER_SHARD}
    manifest["dataset"] = {
        **first["dataset"],
        "splits": {"train": splits.count("train"), "test": len(splits) - splits.count("train")},
    }
    return write_cache(out, merged, manifest)
