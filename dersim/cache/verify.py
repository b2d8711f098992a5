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

from dersim.cache.check import (
    hash_problems,
    question_codes,
    questions_problems,
    states_problems,
    transitions_problems,
)
from dersim.cache.files import read_manifest
from dersim.cache.reader import Cache, open_cache
from dersim.cache.schema import (
    DEDUP_BY_ANSWER,
    QUESTIONS,
    QUESTIONS_SCHEMA,
    SAMPLED_TRANSITIONS_SCHEMA,
    STATES,
    STATUS_OK,
    TRANSITIONS,
    TRANSITIONS_SCHEMA,
    expert_samples,
    is_imported,
    is_sampled,
    states_schema,
)
from dersim.errors import CacheFormatError

NORM_TOLERANCE = 1e-3


def _check_schemas(cache: Cache) -> list[str]:
    dim = int(cache.manifest.get("embedding", {}).get("dim", 0))
    expected = {
        QUESTIONS: QUESTIONS_SCHEMA,
        TRANSITIONS: SAMPLED_TRANSITIONS_SCHEMA
        if is_sampled(cache.manifest)
        else TRANSITIONS_SCHEMA,
        STATES: states_schema(cache.metric_columns, dim),
    }
    problems = []
    for name, schema in expected.items():
        actual = pq.read_schema(cache.path / name)
        for field in schema:
            if field.name not in actual.names:
                problems.append(f"{cache.path / name}: missing column '{field.name}'")
            elif not actual.field(field.name).type.equals(field.type):
                problems.append(
                    f"{cache.path / name}: column '{field.name}' has type "
                    f"{actual.field(field.name).type}, expected {field.type}"
                )
    return problems


def _check_states(cache: Cache) -> list[str]:
    """Beyond `check.states_problems`: question ids, one root per question, unit-norm embeddings and
    (for built caches) no two states of a question with the same normalised answer."""
    s, q = cache.states, cache.questions
    where = cache.path / STATES
    problems = []
    if q["question_id"].n_unique() != q.height:
        problems.append(f"{cache.path / QUESTIONS}: duplicate question_id")
    unknown = s.filter(~pl.col("question_id").is_in(q["question_id"].implode()))
    if unknown.height:
        problems.append(f"{where}: {unknown.height} states belong to unknown questions")
    if s.filter(pl.col("depth") == 0).height != q.height:
        problems.append(f"{where}: expected exactly one depth-0 state per question")
    embeddings = s["embedding"].to_numpy() if s.height else np.zeros((0, 1))
    norms = np.linalg.norm(np.asarray(embeddings, dtype=np.float64).reshape(s.height, -1), axis=1)
    off_norm = ~(np.abs(norms - 1) <= NORM_TOLERANCE)  # NaN norms count as off
    if off_norm.any():
        problems.append(f"{where}: {int(off_norm.sum())} embeddings are not unit-norm")
    if cache.manifest.get("dedup") == DEDUP_BY_ANSWER:
        # The same normalisation as dersim.builder.expand.normalise_answer, vectorised.
        keys = s.filter(pl.col("depth") > 0).select(
            "question_id", pl.col("answer").str.replace_all(r"\s+", " ").str.strip_chars()
        )
        if keys.is_duplicated().any():
            problems.append(
                f"{where}: {int(keys.is_duplicated().sum())} states duplicate another state's "
                "answer"
            )
    return problems


def _check_transitions(cache: Cache) -> list[str]:
    """Beyond `check.transitions_problems` (run first): next_state_id set exactly for 'ok' calls,
    depths, failed calls, completeness to depth D."""
    s, t = cache.states, cache.transitions
    where = cache.path / TRANSITIONS
    n_experts, depth = len(cache.expert_names), cache.depth
    problems = []
    ok = t.filter(pl.col("status") == STATUS_OK)
    if t.filter((pl.col("status") != STATUS_OK) & pl.col("next_state_id").is_not_null()).height:
        problems.append(f"{where}: next_state_id must be set exactly for status 'ok'")
    info = s.select("state_id", "depth")
    joined = ok.join(info, on="state_id").join(
        info, left_on="next_state_id", right_on="state_id", suffix="_next"
    )
    if joined.filter(pl.col("depth_next") > pl.col("depth") + 1).height:
        problems.append(f"{where}: a next state's depth exceeds its parent's depth + 1")
    failed = t.height - ok.height
    if failed:
        problems.append(f"{where}: {failed} failed calls ({_failed_advice(cache.manifest)})")
    expandable = s.filter(pl.col("depth") < depth).select("state_id")
    counts = expandable.join(ok.group_by("state_id").len(), on="state_id", how="left").fill_null(0)
    calls = sum(expert_samples(cache.manifest))  # per state: one per expert, or per sample
    incomplete = counts.filter(pl.col("len") != calls).height
    if incomplete:
        what = f"{n_experts} experts'" if calls == n_experts else f"{calls} sampled"
        problems.append(
            f"{where}: {incomplete} states above depth {depth} lack some of the {what} "
            "transitions (incomplete to depth D)"
        )
    if t.join(s.filter(pl.col("depth") >= depth).select("state_id"), on="state_id").height:
        problems.append(
            f"{where}: transitions from states at depth {depth} (beyond the built depth)"
        )
    return problems


def _failed_advice(manifest: dict) -> str:
    """What to do about failed calls: retry them (built caches) or drop the questions (imports,
    where a failed call is a (question, model) pair without an answer in the source)."""
    if is_imported(manifest):
        return (
            "answers missing from the imported source; re-import without --no-drop-incomplete to "
            "drop those questions"
        )
    return "rerun build-cache to retry them"


def verify_cache(directory: str | Path) -> list[str]:
    """All problems found in the cache at `directory` (empty when it is sound)."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
        problems = hash_problems(directory, manifest)
        if problems:
            return problems
        cache = open_cache(directory, check=False)
    except CacheFormatError as exc:
        return [str(exc)]
    problems = _check_schemas(cache)
    if problems:
        return problems
    metrics = cache.metric_columns
    problems = states_problems(directory / STATES, cache.states, metrics, cache.depth)
    states = None if problems else cache.states  # the checks across tables need sound states
    problems += questions_problems(
        directory / QUESTIONS, cache.questions, cache.states.height, states
    )
    problems += _check_states(cache)
    transitions = transitions_problems(
        directory / TRANSITIONS,
        cache.transitions,
        len(cache.expert_names),
        cache.states.height,
        None if states is None else question_codes(states),
        expert_samples(cache.manifest) if is_sampled(cache.manifest) else None,
    )
    return problems + (transitions or _check_transitions(cache))
