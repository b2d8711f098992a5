"""`dersim cache verify`: schema, content hashes, referential integrity and completeness to depth D.

Every check is vectorised (polars/numpy), so verifying a million-state cache takes seconds. The
result is a list of one-line problems; an empty list means the cache replays every route of at
most D calls exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from dersim.cache.reader import Cache, open_cache, read_manifest
from dersim.cache.schema import (
    DEDUP_BY_ANSWER,
    QUESTIONS,
    QUESTIONS_SCHEMA,
    STATES,
    STATUS_OK,
    TABLE_FILES,
    TRANSITIONS,
    TRANSITIONS_SCHEMA,
    file_sha256,
    states_schema,
)
from dersim.errors import CacheFormatError

NORM_TOLERANCE = 1e-3


def _check_files(directory: Path, manifest: dict) -> list[str]:
    problems = []
    for name in TABLE_FILES:
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != manifest["files"].get(name):
            problems.append(f"{path}: sha256 differs from the manifest (file changed after the build)")
    return problems


def _check_schemas(cache: Cache) -> list[str]:
    dim = int(cache.manifest.get("embedding", {}).get("dim", 0))
    expected = {QUESTIONS: QUESTIONS_SCHEMA, TRANSITIONS: TRANSITIONS_SCHEMA,
                STATES: states_schema(cache.metric_columns, dim)}
    problems = []
    for name, schema in expected.items():
        actual = pq.read_schema(cache.path / name)
        for field in schema:
            if field.name not in actual.names:
                problems.append(f"{cache.path / name}: missing column '{field.name}'")
            elif not actual.field(field.name).type.equals(field.type):
                problems.append(f"{cache.path / name}: column '{field.name}' has type "
                                f"{actual.field(field.name).type}, expected {field.type}")
    return problems


def _check_states(cache: Cache) -> list[str]:
    s, q = cache.states, cache.questions
    where = cache.path / STATES
    problems = []
    if not np.array_equal(s["state_id"].to_numpy(), np.arange(s.height)):
        problems.append(f"{where}: state_id is not 0..{s.height - 1} in order")
    if q["question_id"].n_unique() != q.height:
        problems.append(f"{cache.path / QUESTIONS}: duplicate question_id")
    unknown = s.filter(~pl.col("question_id").is_in(q["question_id"].implode()))
    if unknown.height:
        problems.append(f"{where}: {unknown.height} states belong to unknown questions")
    roots = q.join(s, left_on="root_state_id", right_on="state_id", how="left", suffix="_state")
    bad_roots = roots.filter((pl.col("question_id") != pl.col("question_id_state")).fill_null(True)
                             | (pl.col("depth") != 0).fill_null(True) | (pl.col("answer") != "").fill_null(True))
    if bad_roots.height:
        problems.append(f"{cache.path / QUESTIONS}: {bad_roots.height} root_state_id values do not point at their "
                        "question's empty depth-0 state")
    if s.filter(pl.col("depth") == 0).height != q.height:
        problems.append(f"{where}: expected exactly one depth-0 state per question")
    for column in cache.metric_columns:
        values = s[column].to_numpy()
        if not np.all(np.isfinite(values)) or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            problems.append(f"{where}: column '{column}' has values outside [0, 1] or NaN")
    embeddings = s["embedding"].to_numpy() if s.height else np.zeros((0, 1))
    norms = np.linalg.norm(np.asarray(embeddings, dtype=np.float64).reshape(s.height, -1), axis=1)
    if s.height and np.abs(norms - 1).max() > NORM_TOLERANCE:
        problems.append(f"{where}: {int((np.abs(norms - 1) > NORM_TOLERANCE).sum())} embeddings are not unit-norm")
    if cache.manifest.get("dedup") == DEDUP_BY_ANSWER:
        # The same normalisation as dersim.builder.expand.normalise_answer, vectorised.
        keys = s.filter(pl.col("depth") > 0).select(
            "question_id", pl.col("answer").str.replace_all(r"\s+", " ").str.strip_chars())
        if keys.is_duplicated().any():
            problems.append(f"{where}: {int(keys.is_duplicated().sum())} states duplicate another state's answer")
    return problems


def _check_transitions(cache: Cache) -> list[str]:
    s, t = cache.states, cache.transitions
    where = cache.path / TRANSITIONS
    n_experts, depth = len(cache.expert_names), cache.depth
    problems = []
    if t.filter((pl.col("state_id") < 0) | (pl.col("state_id") >= s.height)).height:
        problems.append(f"{where}: state_id out of range")
    if t.filter((pl.col("expert_id") < 0) | (pl.col("expert_id") >= n_experts)).height:
        problems.append(f"{where}: expert_id out of range 0..{n_experts - 1}")
    ok = t.filter(pl.col("status") == STATUS_OK)
    if ok.filter(pl.col("next_state_id").is_null()).height or t.filter(
            (pl.col("status") != STATUS_OK) & pl.col("next_state_id").is_not_null()).height:
        problems.append(f"{where}: next_state_id must be set exactly for status 'ok'")
    if ok.filter((pl.col("next_state_id") < 0) | (pl.col("next_state_id") >= s.height)).height:
        problems.append(f"{where}: next_state_id out of range")
    if t.select("state_id", "expert_id").is_duplicated().any():
        problems.append(f"{where}: duplicate (state_id, expert_id) pairs")
    if problems:
        return problems
    info = s.select("state_id", "question_id", "depth")
    joined = (ok.join(info, on="state_id")
                .join(info, left_on="next_state_id", right_on="state_id", suffix="_next"))
    if joined.filter(pl.col("question_id") != pl.col("question_id_next")).height:
        problems.append(f"{where}: transitions that cross questions")
    if joined.filter(pl.col("depth_next") > pl.col("depth") + 1).height:
        problems.append(f"{where}: a next state's depth exceeds its parent's depth + 1")
    failed = t.height - ok.height
    if failed:
        problems.append(f"{where}: {failed} failed calls (rerun build-cache to retry them)")
    expandable = s.filter(pl.col("depth") < depth).select("state_id")
    counts = expandable.join(ok.group_by("state_id").len(), on="state_id", how="left").fill_null(0)
    incomplete = counts.filter(pl.col("len") != n_experts).height
    if incomplete:
        problems.append(f"{where}: {incomplete} states above depth {depth} lack some of the {n_experts} experts' "
                        "transitions (incomplete to depth D)")
    if t.join(s.filter(pl.col("depth") >= depth).select("state_id"), on="state_id").height:
        problems.append(f"{where}: transitions from states at depth {depth} (beyond the built depth)")
    return problems


def verify_cache(directory: str | Path) -> list[str]:
    """All problems found in the cache at `directory` (empty when it is sound)."""
    directory = Path(directory)
    try:
        problems = _check_files(directory, read_manifest(directory))
        if problems:
            return problems
        cache = open_cache(directory)
    except CacheFormatError as exc:
        return [str(exc)]
    problems = _check_schemas(cache)
    if problems:
        return problems
    return _check_states(cache) + _check_transitions(cache)
