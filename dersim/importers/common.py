"""The one path every importer takes: an answer set in long format -> a depth-1 dersim cache.

An importer reads its source into an `AnswerSet`: one row per question (`questions`) and at most
one row per (question, model) answer (`cells`, long format). This module fills the full
question x model grid, optionally drops questions that lack some model's answer, caps the size,
assigns state ids, embeds every state and writes the cache with `writer.write_cache`.

Per question the cache has the root state (empty answer, depth 0) and one state per model answer
(depth 1), with the transition root --model--> that answer. Answers are not merged across models
(manifest "dedup": "none"), because an imported score belongs to the model that was graded, not to
the text. Imported answers were written without seeing another model's answer, so a route of
several experts replays exactly as independent calls (the paper's "without KTP" setting): with
`max_calls` > 1 every answer state also gets the transition --model--> that model's own answer,
and the manifest's depth is `max_calls`.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dersim import __version__
from dersim.builder.embedding import Embedder, make_embedder, state_text
from dersim.builder.embedding_store import embed_texts, embedding_store
from dersim.builder.sources import split_sizes
from dersim.cache.schema import (
    DEDUP_NONE,
    MANIFEST,
    QUESTIONS,
    QUESTIONS_SCHEMA,
    SPLITS,
    STATES,
    STATUS_FAILED,
    STATUS_OK,
    TRANSITIONS,
    TRANSITIONS_SCHEMA,
    states_schema,
)
from dersim.cache.writer import embedding_column, write_cache
from dersim.errors import DatasetError, OutputError
from dersim.locking import directory_lock, prepare_directory
from dersim.ownership import claim_output
from dersim.recipe import EmbeddingSpec

BACKEND = "imported"
NO_ANSWER = "no answer in the source"
# Why a (question, model) cell holds no answer; counted in the import report and the manifest.
MISSING_NO_ROW = "no row for this question and model"
MISSING_EMPTY = "empty answer"
MISSING_MALFORMED = "malformed answer"
MISSING_NO_SCORE = "no score"
MISSING_NO_COST = "no cost"

# The canonical frames an importer hands over (column -> dtype).
QUESTION_COLUMNS: dict[str, Any] = {
    "question_id": pl.String,
    "split": pl.String,
    "question": pl.String,
    "reference": pl.String,
    "references": pl.List(pl.String),
    "label": pl.String,
}
CELL_COLUMNS: dict[str, Any] = {
    "question_id": pl.String,
    "model": pl.String,
    "answer": pl.String,  # null when the cell holds no answer (then `missing` says why)
    "score": pl.Float64,
    "cost_usd": pl.Float64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "missing": pl.String,
}
FIXED_STATE_COLUMNS = ("state_id", "question_id", "answer", "depth", "embedding")
BOOLEAN_WORDS = {"true": 1.0, "false": 0.0}
METRIC_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class ImportedExpert:
    """One model of the imported answer set; `params_b` is None when the size is not public."""

    name: str
    params_b: float | None = None

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": BACKEND,
            "model": self.name,
            "params_b": self.params_b,
            "usd_per_mtok_in": 0.0,
            "usd_per_mtok_out": 0.0,
        }


@dataclass
class AnswerSet:
    """An importer's result: questions, answer cells, the expert pool and provenance."""

    questions: pl.DataFrame  # QUESTION_COLUMNS, one row per question, in source order
    cells: pl.DataFrame  # CELL_COLUMNS, at most one row per (question_id, model)
    experts: list[ImportedExpert]
    metric: str  # the states column the cell scores go to
    metric_manifest: dict[str, Any]  # how the metric was obtained, for manifest["metrics"][metric]
    dataset: dict[str, Any]  # id, source, files (splits are added here)
    settings: dict[str, Any] = field(
        default_factory=dict
    )  # importer options, for manifest["import"]
    notes: dict[str, Any] = field(default_factory=dict)  # oddities found in the source
    read_seconds: float = 0.0


@dataclass
class ImportReport:
    """What an import did, for the CLI (table or JSON)."""

    out: str
    dataset: str
    questions: dict[str, int]
    experts: int
    depth: int  # the longest route the cache replays (max_calls)
    states: int
    transitions: int
    failed: int
    source_questions: int
    dropped_incomplete: int
    missing_cells: dict[str, int]
    notes: dict[str, Any]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_metric_name(name: str) -> str:
    """A metric name usable as a states.parquet column, or a one-line error."""
    if not METRIC_NAME.match(name) or name in FIXED_STATE_COLUMNS:
        raise DatasetError(
            f"--score-name '{name}': use lower-case letters, digits and '_' (not one of "
            f"{', '.join(FIXED_STATE_COLUMNS)})"
        )
    return name


def parse_numbers(
    path: Path, frame: pl.DataFrame, column: str, what: str, valid: pl.Expr
) -> pl.Series:
    """A column (text, numbers or booleans) as float64, null where empty; a one-line error naming
    the file, row and column at the first value that is not a number or fails `valid` (an expression
    over `value`). Booleans are 1/0 whether typed (JSONL, Parquet) or written as true/false (CSV,
    any case), so a file reads the same in every format."""
    series = frame[column]
    if series.dtype == pl.String:
        raw = series.str.strip_chars()
        words = raw.str.to_lowercase().replace_strict(
            BOOLEAN_WORDS, default=None, return_dtype=pl.Float64
        )
        values = raw.cast(pl.Float64, strict=False).fill_null(words)
        given = raw.is_not_null() & (raw != "")
    elif series.dtype.is_numeric() or series.dtype == pl.Boolean:
        raw, values, given = series.cast(pl.String), series.cast(pl.Float64), series.is_not_null()
    else:
        raise DatasetError(
            f"{path}: column '{column}' holds {series.dtype} values, expected numbers"
        )
    checked = pl.DataFrame({"raw": raw, "value": values, "given": given}).with_row_index(
        "row", offset=1
    )
    bad = checked.filter(
        pl.col("given")
        & (pl.col("value").is_null() | pl.col("value").is_nan() | ~valid.fill_null(False))
    )
    if bad.height:
        raise DatasetError(
            f"{path}: row {bad['row'][0]}, column '{column}': {bad['raw'][0]!r} is not {what}"
        )
    return values.fill_nan(None)


def one_split_per_text(questions: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Questions whose text is also a test question's become test questions too, so that no text is
    trained on and reported on (sources repeat questions, e.g. RouterBench's mbpp train and test
    files share two prompts). Returns the questions and how many moved."""
    in_test = pl.col("split").eq("test").any().over("question")
    moved = questions.filter(in_test & (pl.col("split") == "train")).height
    split = pl.when(in_test).then(pl.lit("test")).otherwise(pl.col("split")).alias("split")
    return questions.with_columns(split), moved


def random_split(question_ids: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """question_id -> "train"/"test": a numpy default_rng(seed) permutation of the sorted ids; the
    first round(n * test_fraction) of it are test. Independent of the source's row order."""
    if not 0.0 <= test_fraction <= 1.0:
        raise DatasetError(f"--test-fraction {test_fraction} must be in [0, 1]")
    ordered = sorted(set(question_ids))
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_test = round(len(ordered) * test_fraction)
    test = {ordered[i] for i in order[:n_test].tolist()}
    return {qid: "test" if qid in test else "train" for qid in ordered}


# ---------------------------------------------------------------------------------------------
# Grid, dropping, limiting
# ---------------------------------------------------------------------------------------------


def _full_grid(
    questions: pl.DataFrame, cells: pl.DataFrame, experts: list[ImportedExpert]
) -> pl.DataFrame:
    """Every (question, expert) cell, in (question order, expert order); absent ones are missing."""
    pool = pl.DataFrame(
        {"model": [e.name for e in experts], "expert_id": np.arange(len(experts), dtype=np.int16)}
    )
    grid = (
        questions.select("q_index", "question_id")
        .join(pool, how="cross")
        .join(cells, on=["question_id", "model"], how="left")
        .with_columns(
            pl.when(pl.col("answer").is_null())
            .then(pl.col("missing").fill_null(MISSING_NO_ROW))
            .alias("missing")
        )
    )
    return grid.sort("q_index", "expert_id")


def _order_and_limit(questions: pl.DataFrame, limit: int | None) -> pl.DataFrame:
    """Train questions, then test ones (each in source order); `limit` keeps the train:test
    ratio."""
    train = questions.filter(pl.col("split") == "train")
    test = questions.filter(pl.col("split") == "test")
    n_train, n_test = split_sizes(train.height, test.height, limit)
    return pl.concat([train.head(n_train), test.head(n_test)])


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """A polars frame with exactly `schema`'s columns, cast to its Arrow types."""
    table = frame.select(schema.names).to_arrow()
    return pa.Table.from_arrays(
        [table.column(name).cast(f.type) for name, f in zip(schema.names, schema, strict=True)],
        schema=schema,
    )


def build_tables(
    questions: pl.DataFrame,
    grid: pl.DataFrame,
    metric: str,
    embedder: Embedder,
    show_progress: bool = False,
    max_calls: int = 1,
) -> tuple[dict[str, pa.Table], float]:
    """questions.parquet, states.parquet and transitions.parquet of an imported cache, and the
    seconds spent embedding. `grid` holds every (question, expert) cell, sorted by
    (q_index, expert_id); `questions` has q_index 0..Q-1 in cache order."""
    answered = pl.col("answer").is_not_null()
    sizes = grid.group_by("q_index").agg(n_ok=answered.sum())
    questions = (
        questions.join(sizes, on="q_index", how="left")
        .sort("q_index")
        .with_columns(size=pl.col("n_ok").fill_null(0).cast(pl.Int64) + 1)
        .with_columns(root_state_id=pl.col("size").cum_sum() - pl.col("size"))
    )
    grid = (
        grid.join(
            questions.select("q_index", "root_state_id", "question"), on="q_index", how="left"
        )
        .sort("q_index", "expert_id")
        .with_columns(rank=answered.cast(pl.Int64).cum_sum().over("q_index"))
        .with_columns(
            state_id=pl.col("root_state_id"),
            next_state_id=pl.when(answered).then(pl.col("root_state_id") + pl.col("rank")),
        )
    )

    roots = questions.select(
        pl.col("root_state_id").alias("state_id"),
        "question_id",
        "question",
        pl.lit("").alias("answer"),
        pl.lit(0).alias("depth"),
        pl.lit(0.0).alias(metric),
    )
    answers = grid.filter(answered).select(
        pl.col("next_state_id").alias("state_id"),
        "question_id",
        "question",
        "answer",
        pl.lit(1).alias("depth"),
        pl.col("score").alias(metric),
    )
    states = pl.concat([roots, answers], how="vertical_relaxed").sort("state_id")
    if not np.array_equal(states["state_id"].to_numpy(), np.arange(states.height)):
        raise AssertionError("state ids are not contiguous")  # a bug here, never bad input

    texts = [
        state_text(q, a)
        for q, a in zip(states["question"].to_list(), states["answer"].to_list(), strict=True)
    ]
    started = time.perf_counter()
    embeddings = embed_texts(
        embedder, texts, show_progress=show_progress, store=embedding_store(embedder)
    )
    embed_seconds = time.perf_counter() - started
    schema = states_schema([metric], int(embeddings.shape[1]))
    fixed = _arrow(states, pa.schema([f for f in schema if f.name != "embedding"]))
    states_arrow = pa.Table.from_arrays(
        [*fixed.columns, embedding_column(embeddings)], schema=schema
    )

    transitions = grid.with_columns(
        pl.col("prompt_tokens").fill_null(0),
        pl.col("completion_tokens").fill_null(0),
        pl.lit(0.0).alias("latency_s"),
        pl.col("cost_usd").fill_null(0.0),
        pl.when(answered).then(pl.lit(STATUS_OK)).otherwise(pl.lit(STATUS_FAILED)).alias("status"),
        pl.when(~answered)
        .then(pl.lit(NO_ANSWER + " (") + pl.col("missing") + pl.lit(")"))
        .alias("error"),
    )
    if max_calls > 1:  # no knowledge transfer: from any answer, a model gives its own answer again
        answer_states = grid.filter(answered).select(
            "q_index", pl.col("next_state_id").alias("from_state")
        )
        onward = answer_states.join(transitions, on="q_index").with_columns(
            state_id=pl.col("from_state")
        )
        transitions = pl.concat(
            [transitions, onward.drop("from_state")], how="vertical_relaxed"
        ).sort("state_id", "expert_id")
    return {
        QUESTIONS: _arrow(questions, QUESTIONS_SCHEMA),
        STATES: states_arrow,
        TRANSITIONS: _arrow(transitions, TRANSITIONS_SCHEMA),
    }, embed_seconds


# ---------------------------------------------------------------------------------------------
# The whole import
# ---------------------------------------------------------------------------------------------


def _check_answer_set(answers: AnswerSet) -> None:
    for frame, columns, what in (
        (answers.questions, QUESTION_COLUMNS, "questions"),
        (answers.cells, CELL_COLUMNS, "cells"),
    ):
        if frame.columns != list(columns):
            raise AssertionError(f"importer bug: {what} columns {frame.columns} != {list(columns)}")
    if not answers.experts:
        raise DatasetError(f"{answers.dataset['id']}: no models found in the source")
    bad = answers.questions.filter(~pl.col("split").is_in(list(SPLITS)))
    if (
        bad.height
        or answers.questions["question_id"].is_duplicated().any()
        or answers.cells.select("question_id", "model").is_duplicated().any()
    ):
        raise AssertionError("importer bug: bad split or duplicate question/cell rows")


def missing_counts(grid: pl.DataFrame) -> dict[str, int]:
    """How many cells lack an answer, per reason (sorted by reason)."""
    counts = grid.filter(pl.col("answer").is_null()).group_by("missing").len().sort("missing")
    return {str(reason): int(n) for reason, n in counts.iter_rows()}


def check_target(out: Path, overwrite: bool) -> None:
    """Fail fast, before reading or embedding anything: `out` must be a writable directory (created
    if needed), hold nothing but a cache, and no cache unless `overwrite` (the new one replaces its
    files)."""
    prepare_directory(out)
    claim_output(out, "cache")  # refuses a directory holding anything but a cache; removes nothing
    if (out / MANIFEST).exists() and not overwrite:
        raise OutputError(f"{out}: already holds a cache; pass --overwrite to replace it")


def import_answer_set(
    answers: AnswerSet,
    out: Path,
    *,
    embedding: EmbeddingSpec,
    limit: int | None = None,
    drop_incomplete: bool = True,
    show_progress: bool = False,
    max_calls: int = 1,
    overwrite: bool = False,
) -> ImportReport:
    """Write `answers` as a cache in `out` whose routes may make up to `max_calls` independent
    calls; questions lacking some model's answer are dropped (default) or kept with failed
    transitions (which `dersim cache verify` reports). Holds the write lock of `out`
    (`dersim.locking`); a cache already there is replaced only with `overwrite`."""
    with directory_lock(out, "import"):
        check_target(out, overwrite)
        return _import(answers, out, embedding, limit, drop_incomplete, show_progress, max_calls)


def _import(
    answers: AnswerSet,
    out: Path,
    embedding: EmbeddingSpec,
    limit: int | None,
    drop_incomplete: bool,
    show_progress: bool,
    max_calls: int,
) -> ImportReport:
    started = time.perf_counter()
    _check_answer_set(answers)
    embedder = make_embedder(embedding)
    questions, moved = one_split_per_text(answers.questions)
    notes = {**answers.notes, **({"train_questions_moved_to_test": moved} if moved else {})}
    questions = questions.with_row_index("q_index")
    grid = _full_grid(questions, answers.cells, answers.experts)
    missing = missing_counts(grid)
    dropped = 0
    if drop_incomplete:
        incomplete = grid.filter(pl.col("answer").is_null()).select("q_index").unique()
        dropped = incomplete.height
        questions = questions.join(incomplete, on="q_index", how="anti")
    questions = _order_and_limit(questions.drop("q_index"), limit)
    if questions.height == 0:
        hint = " (all lack some model's answer; --no-drop-incomplete keeps them)" if dropped else ""
        raise DatasetError(f"{answers.dataset['id']}: no questions to import{hint}")
    questions = questions.with_row_index("q_index")
    grid = _full_grid(questions, answers.cells, answers.experts)
    prepared = time.perf_counter()

    tables, embed_seconds = build_tables(
        questions, grid, answers.metric, embedder, show_progress, max_calls
    )
    built = time.perf_counter()
    splits = {s: int(questions.filter(pl.col("split") == s).height) for s in SPLITS}
    failed = int(pc.sum(pc.equal(tables[TRANSITIONS]["status"], STATUS_FAILED)).as_py() or 0)
    write_cache(
        out,
        tables,
        {
            "dersim_version": __version__,
            "dataset": {**answers.dataset, "splits": splits},
            "experts": [e.to_manifest() for e in answers.experts],
            "depth": max_calls,
            "dedup": DEDUP_NONE,
            "metrics": {answers.metric: {"columns": [answers.metric], **answers.metric_manifest}},
            "metric_columns": [answers.metric],
            "embedding": {
                **embedder.describe(),
                "dim": int(tables[STATES].schema.field("embedding").type.list_size),
            },
            "import": {
                **answers.settings,
                "limit": limit,
                "drop_incomplete": drop_incomplete,
                "source_questions": answers.questions.height,
                "dropped_incomplete": dropped,
                "missing_cells": missing,
                "notes": notes,
                "max_calls": max_calls,
                "route_semantics": (
                    "one state per (question, model) answer; a route of up to max_calls experts "
                    "replays as independent calls (no knowledge transfer between them)"
                ),
            },
        },
    )
    finished = time.perf_counter()
    return ImportReport(
        out=str(out),
        dataset=str(answers.dataset["id"]),
        questions=splits,
        experts=len(answers.experts),
        depth=max_calls,
        states=tables[STATES].num_rows,
        transitions=tables[TRANSITIONS].num_rows,
        failed=failed,
        source_questions=answers.questions.height,
        dropped_incomplete=dropped,
        missing_cells=missing,
        notes=notes,
        seconds={
            "read": answers.read_seconds,
            "prepare": prepared - started,
            "embed": embed_seconds,
            "tables": built - prepared - embed_seconds,
            "write": finished - built,
            "total": answers.read_seconds + finished - started,
        },
    )
