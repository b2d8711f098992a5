"""RouterBench's wide CSVs -> an `AnswerSet` (then a depth-1 cache through `common`).

One row per prompt: `sample_id, prompt, eval_name`, then per model `<model>` (0/1 score),
`<model>|model_response` (the answer as a stringified Python list) and `<model>|total_cost` (US
dollars), and `oracle_model_to_route_to`. Models are the columns with a `|model_response` partner.

Stringified lists are parsed with `ast.literal_eval` only (never `eval`): a cell that is not a
literal string or list of strings is malformed and counts as a missing answer, so is an empty one.
The prompt is stored the same way; it is decoded when it parses and kept verbatim otherwise.

The slice kept in the RouterDC repository has a few prompts split over two rows with the same
sample_id (one row graded only for one model, the other for the rest, sometimes one row in the
train file and one in the test file). Rows that share a question id are merged: per model the row
that holds a score gives the answer; the question text and split come from the row holding the most
scores. Two rows scoring the same model for the same question are an error.
"""

from __future__ import annotations

import ast
import os
import re
import time
from pathlib import Path

import polars as pl

from dersim.builder.sources.table import read_csv_text
from dersim.cache.schema import file_sha256
from dersim.errors import DatasetError
from dersim.importers.common import (
    CELL_COLUMNS,
    MISSING_EMPTY,
    MISSING_MALFORMED,
    MISSING_NO_COST,
    MISSING_NO_SCORE,
    QUESTION_COLUMNS,
    AnswerSet,
    ImportedExpert,
    parse_numbers,
    random_split,
)

RESPONSE_SUFFIX = "|model_response"
COST_SUFFIX = "|total_cost"
REQUIRED = ("sample_id", "prompt")
METRIC = "accuracy"
SPLIT_IN_NAME = re.compile(r"^(?P<task>.*?)[_\-.](?P<split>train|test)$")
MAX_CELL_CHARS = 1_000_000  # a larger "answer" is not an LLM answer; also bounds the parser's work
EXAMPLES = 5

# Parameter counts (billions) of the open models RouterBench evaluates; closed models stay unknown.
PARAMS_B: dict[str, float] = {
    "meta/llama-2-70b-chat": 70.0,
    "mistralai/mixtral-8x7b-chat": 46.7,
    "zero-one-ai/Yi-34B-Chat": 34.0,
    "meta/code-llama-instruct-34b-chat": 34.0,
    "mistralai/mistral-7b-chat": 7.2,
    "WizardLM/WizardLM-13B-V1.2": 13.0,
}


def parse_listed_text(cell: str | None) -> tuple[str | None, str | None]:
    """(text, None) for a stringified string or list of strings (items joined with newlines), else
    (None, why). Only `ast.literal_eval` ever sees the cell: nothing in it is executed."""
    if cell is None or not cell.strip():
        return None, MISSING_EMPTY
    if len(cell) > MAX_CELL_CHARS:
        return None, MISSING_MALFORMED
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None, MISSING_MALFORMED
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        return None, MISSING_MALFORMED
    text = "\n".join(value)
    return (text, None) if text.strip() else (None, MISSING_EMPTY)


def read_wide_csv(path: Path) -> pl.DataFrame:
    """Every column as text (types are checked here, with row numbers), or a one-line error."""
    if path.suffix.lower() != ".csv":
        raise DatasetError(f"{path}: RouterBench files are .csv, got '{path.suffix}'")
    frame = read_csv_text(path)
    if frame.height == 0:
        raise DatasetError(f"{path}: no rows (only a header, or empty)")
    return frame


def discover_models(path: Path, frame: pl.DataFrame) -> list[str]:
    """Models in header order of their `|model_response` columns; each needs its score and cost."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path}: column '{missing[0]}' not found (columns: {', '.join(frame.columns)})"
        )
    models = [c.removesuffix(RESPONSE_SUFFIX) for c in frame.columns if c.endswith(RESPONSE_SUFFIX)]
    if not models:
        raise DatasetError(f"{path}: no '<model>{RESPONSE_SUFFIX}' columns, so no models")
    for model in models:
        for column in (model, model + COST_SUFFIX):
            if column not in frame.columns:
                raise DatasetError(
                    f"{path}: column '{column}' not found (model '{model}' has a "
                    f"'{model}{RESPONSE_SUFFIX}' column)"
                )
    return models


def _file_split(path: Path, test_fraction: float | None) -> tuple[str, str | None]:
    """(task name, split) from `<task>_train.csv` / `<task>_test.csv`."""
    match = SPLIT_IN_NAME.match(path.stem)
    task = match["task"] if match else path.stem
    if test_fraction is not None:
        return task, None
    if not match:
        raise DatasetError(
            f"{path}: cannot tell the split from the file name (expected <task>_train.csv or "
            "<task>_test.csv); pass --test-fraction F to split at random"
        )
    return task, match["split"]


def _read_file(
    path: Path, index: int, test_fraction: float | None
) -> tuple[list[str], pl.DataFrame, pl.DataFrame]:
    """(models, rows, cells) of one file; rows and cells carry file index and 1-based row
    numbers."""
    frame = read_wide_csv(path)
    models = discover_models(path, frame)
    task, split = _file_split(path, test_fraction)
    sample = frame["sample_id"].str.strip_chars()
    empty = sample.is_null() | (sample == "")
    if empty.any():
        raise DatasetError(
            f"{path}: row {int(empty.arg_true()[0]) + 1}, column 'sample_id': empty sample id"
        )
    evals = (
        frame["eval_name"].str.strip_chars()
        if "eval_name" in frame.columns
        else pl.Series([None] * frame.height, dtype=pl.String)
    )
    evals = evals.replace("", None).fill_null(
        task
    )  # the question id's prefix: eval_name, else the file's task
    prompts = [parse_listed_text(p)[0] or (p or "") for p in frame["prompt"].to_list()]
    rows = pl.DataFrame(
        {
            "file": [index] * frame.height,
            "row": range(1, frame.height + 1),
            "question_id": evals + "-" + sample,
            "task": evals,
            "split": [split] * frame.height,
            "question": prompts,
        },
        schema_overrides={"split": pl.String, "file": pl.Int64, "row": pl.Int64},
    )
    no_text = rows.filter(pl.col("question").str.strip_chars() == "")
    if no_text.height:
        raise DatasetError(f"{path}: row {no_text['row'][0]}, column 'prompt': empty prompt")

    cells = []
    for model in models:
        score = parse_numbers(
            path, frame, model, "a score of 0 or 1", pl.col("value").is_in([0.0, 1.0])
        )
        cost = parse_numbers(
            path,
            frame,
            model + COST_SUFFIX,
            "a cost in US dollars (a number >= 0)",
            pl.col("value").is_finite() & (pl.col("value") >= 0),
        )
        parsed = [parse_listed_text(cell) for cell in frame[model + RESPONSE_SUFFIX].to_list()]
        cells.append(
            pl.DataFrame(
                {
                    "file": rows["file"],
                    "row": rows["row"],
                    "question_id": rows["question_id"],
                    "model": [model] * frame.height,
                    "text": [text for text, _ in parsed],
                    "parse_problem": [why for _, why in parsed],
                    "score": score,
                    "cost_usd": cost,
                },
                schema_overrides={"text": pl.String, "parse_problem": pl.String},
            )
        )
    cells_frame = pl.concat(cells).with_columns(
        missing=pl.when(pl.col("score").is_null())
        .then(pl.lit(MISSING_NO_SCORE))
        .when(pl.col("parse_problem").is_not_null())
        .then(pl.col("parse_problem"))
        .when(pl.col("cost_usd").is_null())
        .then(pl.lit(MISSING_NO_COST))
    )
    return models, rows, cells_frame


def _check_same_models(paths: list[Path], model_lists: list[list[str]]) -> None:
    first = set(model_lists[0])
    for path, models in zip(paths[1:], model_lists[1:], strict=True):
        extra, lacking = sorted(set(models) - first), sorted(first - set(models))
        if extra or lacking:
            what = f"has model '{extra[0]}' that" if extra else f"lacks model '{lacking[0]}' that"
            other = f"{paths[0]} does not have" if extra else f"{paths[0]} has"
            raise DatasetError(f"{path}: {what} {other} (all files must have the same models)")


def merge_repeated(
    paths: list[Path], rows: pl.DataFrame, cells: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """One row per question id and one cell per (question, model); see the module docstring."""
    valid = cells.filter(pl.col("missing").is_null())
    clash = valid.filter(pl.struct("question_id", "model").is_duplicated()).sort(
        "question_id", "model", "file", "row"
    )
    if clash.height:
        a, b = clash.row(0, named=True), clash.row(1, named=True)
        raise DatasetError(
            f"{paths[a['file']]}: row {a['row']} and {paths[b['file']]} row {b['row']} both score "
            f"model '{a['model']}' on question '{a['question_id']}'"
        )
    counts = valid.group_by("file", "row").len("n_valid")
    rows = (
        rows.with_row_index("order")
        .join(counts, on=["file", "row"], how="left")
        .with_columns(pl.col("n_valid").fill_null(0))
    )
    primary = (
        rows.sort(["n_valid", "order"], descending=[True, False])
        .unique("question_id", keep="first")
        .sort("order")
    )
    repeated = (
        rows.group_by("question_id")
        .agg(n=pl.len(), splits=pl.col("split").n_unique(), files=pl.col("file").n_unique())
        .filter(pl.col("n") > 1)
    )
    merged = (
        cells.join(
            primary.select("question_id", pl.lit(True).alias("primary"), "file", "row"),
            on=["question_id", "file", "row"],
            how="left",
        )
        .with_columns(
            pl.col("primary").fill_null(False), pl.col("missing").is_null().alias("valid")
        )
        .sort(["valid", "primary"], descending=True)
        .unique(["question_id", "model"], keep="first")
    )
    notes = {
        "repeated_question_ids": repeated.height,
        "merged_rows": int((repeated["n"] - 1).sum()) if repeated.height else 0,
        "merged_across_files": int(repeated.filter(pl.col("files") > 1).height),
        "repeated_examples": sorted(repeated["question_id"].to_list())[:EXAMPLES],
    }
    return primary, merged, notes


def _source_notes(paths: list[Path], cells: pl.DataFrame) -> dict:
    """Counts (and a few examples) of cells without an answer, per reason, as found in the files."""
    lacking = cells.filter(pl.col("missing").is_not_null())
    counts = lacking.group_by("missing").len().sort("missing")
    malformed = (
        lacking.filter(pl.col("parse_problem") == MISSING_MALFORMED)
        .sort("file", "row")
        .head(EXAMPLES)
    )
    return {
        "cells_without_answer": {str(reason): int(n) for reason, n in counts.iter_rows()},
        "empty_responses": int(cells.filter(pl.col("parse_problem") == MISSING_EMPTY).height),
        "malformed_responses": int(
            cells.filter(pl.col("parse_problem") == MISSING_MALFORMED).height
        ),
        "malformed_examples": [
            f"{paths[r['file']].name} row {r['row']} column '{r['model']}{RESPONSE_SUFFIX}'"
            for r in malformed.iter_rows(named=True)
        ],
    }


def shared_prefix(texts: list[str]) -> str:
    """The longest prefix of every text that ends with a blank line (the shared few-shot examples),
    and leaves every text something after it; "" for fewer than two texts."""
    if len(texts) < 2:
        return ""
    common = os.path.commonprefix(texts)
    cut = common.rfind("\n\n")
    prefix = common[: cut + 2] if cut >= 0 else ""
    while prefix and any(not t[len(prefix) :].strip() for t in texts):
        cut = prefix.rfind("\n\n", 0, len(prefix) - 2)
        prefix = prefix[: cut + 2] if cut >= 0 else ""
    return prefix


def merged_cells(merged: pl.DataFrame) -> pl.DataFrame:
    """The answer set's cells from `merge_repeated`'s merged cells: the text where the cell is
    valid; a wide file records no token counts."""
    return merged.select(
        "question_id",
        "model",
        pl.when(pl.col("valid")).then(pl.col("text")).alias("answer"),
        "score",
        "cost_usd",
        pl.lit(None, dtype=pl.Int64).alias("prompt_tokens"),
        pl.lit(None, dtype=pl.Int64).alias("completion_tokens"),
        "missing",
    ).cast(CELL_COLUMNS)


def strip_shared_prefixes(questions: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, str]]:
    """Remove each task's shared few-shot prefix from its prompts; returns the prefixes by task."""
    prefixes = {}
    for (task,), group in questions.group_by("task", maintain_order=True):
        prefix = shared_prefix(group["question"].to_list())
        if prefix:
            prefixes[str(task)] = prefix
    if not prefixes:
        return questions, prefixes
    lengths = pl.col("task").replace_strict(
        {t: len(p) for t, p in prefixes.items()}, default=0, return_dtype=pl.Int64
    )
    return questions.with_columns(pl.col("question").str.slice(lengths)), prefixes


def read_routerbench(
    paths: list[Path],
    *,
    test_fraction: float | None = None,
    seed: int = 0,
    strip_shared_prefix: bool = False,
) -> AnswerSet:
    """The RouterBench CSVs `paths` as one answer set; split by file name, or at random when
    `test_fraction` is given. `strip_shared_prefix` removes the few-shot examples that every prompt
    of a task starts with from the question text (they are kept in the manifest): MiniLM reads only
    the first 256 tokens of a state's text, and the arc-challenge and winogrande few-shot prefixes
    alone are longer than that, so without stripping every state of such a task embeds the same."""
    started = time.perf_counter()
    if not paths:
        raise DatasetError("routerbench: give at least one CSV file")
    parts = [_read_file(path, i, test_fraction) for i, path in enumerate(paths)]
    _check_same_models(paths, [models for models, _, _ in parts])
    models = parts[0][0]
    rows = pl.concat([r for _, r, _ in parts])
    cells = pl.concat([c for _, _, c in parts])
    notes = _source_notes(paths, cells)
    primary, merged, repeated = merge_repeated(paths, rows, cells)
    notes.update(repeated)
    prefixes: dict[str, str] = {}
    if strip_shared_prefix:
        primary, prefixes = strip_shared_prefixes(primary)
    if test_fraction is not None:
        splits = random_split(primary["question_id"].to_list(), test_fraction, seed)
        primary = primary.with_columns(pl.col("question_id").replace_strict(splits).alias("split"))
    questions = primary.select(
        "question_id",
        "split",
        "question",
        pl.lit("").alias("reference"),
        pl.lit([], dtype=pl.List(pl.String)).alias("references"),
        pl.lit("").alias("label"),
    ).cast(QUESTION_COLUMNS)
    answers = merged_cells(merged)
    tasks = list(dict.fromkeys(_file_split(p, 0.0)[0] for p in paths))
    return AnswerSet(
        questions=questions,
        cells=answers,
        experts=[ImportedExpert(m, PARAMS_B.get(m)) for m in models],
        metric=METRIC,
        metric_manifest={
            "source": "RouterBench 0/1 label",
            "description": "the model's 0/1 correctness label from the RouterBench column "
            "'<model>'; root states score 0",
        },
        dataset={
            "id": "routerbench/" + "+".join(tasks),
            "source": "routerbench",
            "files": [{"path": str(p), "sha256": file_sha256(p)} for p in paths],
        },
        settings={
            "importer": "routerbench",
            "split": "file name"
            if test_fraction is None
            else {"test_fraction": test_fraction, "seed": seed},
            "question_id": "<eval_name or file task>-<sample_id>",
            "answer": (
                "ast.literal_eval of '<model>|model_response', list items joined with newlines"
            ),
            "cost_usd": "'<model>|total_cost'",
            "tokens": "not in the source (0)",
            "latency_s": "not in the source (0)",
            "strip_shared_prefix": strip_shared_prefix,
            "shared_prefixes": prefixes,
        },
        notes=notes,
        read_seconds=time.perf_counter() - started,
    )
