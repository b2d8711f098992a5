"""A long-format answer table (JSONL, CSV or Parquet; one row per question x model) -> `AnswerSet`.

The user names the columns: question id, question text, model, answer and score (in [0, 1]), and
optionally reference, label, cost (US dollars), prompt/completion tokens and split. Every problem
is a one-line `DatasetError` naming the file, the row (1-based, header not counted) and the column.
A row whose answer is empty holds no answer (its score may be empty too); a (question, model) pair
without a row holds no answer either.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dersim.builder.sources.table import read_csv_text, read_frame
from dersim.cache.schema import SPLITS, file_sha256
from dersim.errors import DatasetError
from dersim.importers.common import (
    CELL_COLUMNS,
    MISSING_EMPTY,
    QUESTION_COLUMNS,
    AnswerSet,
    ImportedExpert,
    check_metric_name,
    parse_numbers,
    random_split,
)


@dataclass(frozen=True)
class LongColumns:
    """Which source column plays which role (None: not in the source)."""

    question_id: str
    question: str
    model: str
    answer: str
    score: str
    reference: str | None = None
    label: str | None = None
    cost: str | None = None
    prompt_tokens: str | None = None
    completion_tokens: str | None = None
    split: str | None = None

    def named(self) -> dict[str, str]:
        """role -> column, for the roles given."""
        return {role: column for role, column in vars(self).items() if column is not None}


def _jsonl_as_text(path: Path) -> pl.DataFrame:
    """A JSONL file whose fields mix types (so polars cannot type a column): every scalar as text,
    so the column checks below can name the row of the odd value."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}: line {number}: expected a JSON object")
            rows.append(
                {
                    k: v if v is None or isinstance(v, str) else json.dumps(v)
                    for k, v in record.items()
                }
            )
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return pl.DataFrame(
        {c: [row.get(c) for row in rows] for c in columns}, schema={c: pl.String for c in columns}
    )


def read_long_frame(path: Path) -> pl.DataFrame:
    """The file as a frame; CSV is read as text (so a bad value is reported with its row, not by
    type inference on the first rows), JSONL and Parquet through `sources.table.read_frame` (JSONL
    with mixed-type fields falls back to text)."""
    if path.suffix.lower() in (".jsonl", ".ndjson") and path.exists():
        try:
            return read_frame(path)
        except DatasetError:
            return _jsonl_as_text(path)
    if path.suffix.lower() != ".csv":
        return read_frame(path)
    return read_csv_text(path)


def _text(path: Path, frame: pl.DataFrame, column: str, strip: bool = True) -> pl.Series:
    """A column as text, stripped unless told not to (null stays null)."""
    series = frame[column]
    if series.dtype == pl.String:
        return series.str.strip_chars() if strip else series
    if series.dtype.is_numeric() or series.dtype == pl.Boolean:
        return series.cast(pl.String)
    raise DatasetError(f"{path}: column '{column}' holds {series.dtype} values, expected text")


def _first_duplicate(
    path: Path, frame: pl.DataFrame, keys: list[str], columns: LongColumns
) -> None:
    dup = frame.filter(pl.struct(keys).is_duplicated()).sort("row")
    if dup.height:
        first = dup.row(0, named=True)
        other = dup.filter(pl.all_horizontal([pl.col(k) == first[k] for k in keys]))["row"][1]
        raise DatasetError(
            f"{path}: rows {first['row']} and {other}: duplicate answer for question "
            f"'{first['question_id']}' (column '{columns.question_id}') and model "
            f"'{first['model']}' (column '{columns.model}')"
        )


def _same_per_question(path: Path, frame: pl.DataFrame, role: str, column: str) -> None:
    """`role` must have one value per question id; else name the question and two rows."""
    varying = (
        frame.group_by("question_id", maintain_order=True)
        .agg(pl.col(role).n_unique().alias("n"), pl.col("row"), pl.col(role).alias("values"))
        .filter(pl.col("n") > 1)
    )
    if varying.height:
        row = varying.row(0, named=True)
        first = row["values"][0]
        other = next(r for r, v in zip(row["row"], row["values"], strict=True) if v != first)
        raise DatasetError(
            f"{path}: question '{row['question_id']}': rows {row['row'][0]} and {other} give "
            f"different values in column '{column}' ({role})"
        )


def read_long(
    path: Path,
    columns: LongColumns,
    *,
    score_name: str = "accuracy",
    test_fraction: float = 0.3,
    seed: int = 0,
    params_b: dict[str, float] | None = None,
) -> AnswerSet:
    """The long table at `path` as an answer set. Without a split column, a seeded permutation of
    the question ids puts round(n * test_fraction) of them in test."""
    started = time.perf_counter()
    metric = check_metric_name(score_name)
    frame = read_long_frame(path)
    named = columns.named()
    for role, column in named.items():
        if column not in frame.columns:
            raise DatasetError(
                f"{path}: column '{column}' (--{role.replace('_', '-')}) not found "
                f"(columns: {', '.join(frame.columns)})"
            )
    if frame.height == 0:
        raise DatasetError(f"{path}: no rows")
    text = {
        role: _text(path, frame, named[role], strip=role != "answer")
        for role in ("question_id", "question", "model", "answer", "reference", "label", "split")
        if role in named
    }
    data = pl.DataFrame(text).with_row_index("row", offset=1)
    for role in ("question_id", "model", "question"):
        empty = data.filter(pl.col(role).is_null() | (pl.col(role) == ""))
        if empty.height:
            raise DatasetError(
                f"{path}: row {empty['row'][0]}, column '{named[role]}': empty "
                f"{role.replace('_', ' ')}"
            )
    data = data.with_columns(
        score=parse_numbers(
            path, frame, columns.score, "a score in [0, 1]", pl.col("value").is_between(0.0, 1.0)
        ),
        cost_usd=(
            parse_numbers(
                path,
                frame,
                columns.cost,
                "a cost in US dollars (a number >= 0)",
                pl.col("value").is_finite() & (pl.col("value") >= 0),
            )
            if columns.cost
            else pl.lit(None, dtype=pl.Float64)
        ),
        **{
            role: (
                parse_numbers(
                    path,
                    frame,
                    getattr(columns, role),
                    "a token count (an integer >= 0)",
                    (pl.col("value") >= 0) & (pl.col("value") == pl.col("value").floor()),
                ).cast(pl.Int64)
                if getattr(columns, role)
                else pl.lit(None, dtype=pl.Int64)
            )
            for role in ("prompt_tokens", "completion_tokens")
        },
    )
    has_answer = pl.col("answer").is_not_null() & (pl.col("answer").str.strip_chars() != "")
    unscored = data.filter(has_answer & pl.col("score").is_null())
    if unscored.height:
        raise DatasetError(
            f"{path}: row {unscored['row'][0]}, column '{columns.score}': an answer without a score"
        )
    if "split" in data.columns:
        data = data.with_columns(pl.col("split").str.to_lowercase())
        bad = data.filter(~pl.col("split").is_in(list(SPLITS)).fill_null(False))
        if bad.height:
            raise DatasetError(
                f"{path}: row {bad['row'][0]}, column '{columns.split}': split {bad['split'][0]!r} "
                f"is not one of {', '.join(SPLITS)}"
            )
    _first_duplicate(path, data, ["question_id", "model"], columns)
    for role in ("question", "reference", "label", "split"):
        if role in data.columns:
            _same_per_question(path, data, role, named[role])

    questions = data.unique("question_id", keep="first", maintain_order=True)
    if "split" not in questions.columns:
        splits = random_split(questions["question_id"].to_list(), test_fraction, seed)
        questions = questions.with_columns(
            pl.col("question_id").replace_strict(splits).alias("split")
        )
    reference = (
        pl.col("reference").fill_null("") if "reference" in questions.columns else pl.lit("")
    )
    references = (
        reference.str.split(" || ")
        .list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter(pl.element() != ""))
    )
    questions = questions.select(
        "question_id",
        "split",
        "question",
        references.list.first().fill_null("").alias("reference"),
        references.alias("references"),
        (pl.col("label").fill_null("") if "label" in questions.columns else pl.lit("")).alias(
            "label"
        ),
    ).cast(QUESTION_COLUMNS)
    cells = data.select(
        "question_id",
        "model",
        pl.when(has_answer).then(pl.col("answer")).alias("answer"),
        "score",
        "cost_usd",
        "prompt_tokens",
        "completion_tokens",
        pl.when(~has_answer).then(pl.lit(MISSING_EMPTY)).alias("missing"),
    ).cast(CELL_COLUMNS)

    models = data["model"].unique(maintain_order=True).to_list()
    params_b = params_b or {}
    unknown = sorted(set(params_b) - set(models))
    if unknown:
        raise DatasetError(
            f"--params-b: model '{unknown[0]}' is not in {path} (models: {', '.join(models)})"
        )
    return AnswerSet(
        questions=questions,
        cells=cells,
        experts=[ImportedExpert(m, params_b.get(m)) for m in models],
        metric=metric,
        metric_manifest={
            "source": f"column '{columns.score}' of {path.name}",
            "description": "the imported per-answer score, in [0, 1]; root states score 0",
        },
        dataset={
            "id": path.stem,
            "source": "long",
            "files": [{"path": str(path), "sha256": file_sha256(path)}],
        },
        settings={
            "importer": "long",
            "columns": named,
            "split": (
                {"column": columns.split}
                if columns.split
                else {"test_fraction": test_fraction, "seed": seed}
            ),
            "tokens": "from the source"
            if columns.prompt_tokens or columns.completion_tokens
            else "not in the source (0)",
            "cost_usd": f"column '{columns.cost}'" if columns.cost else "not in the source (0)",
            "latency_s": "not in the source (0)",
        },
        notes={"rows": frame.height, "rows_without_answer": int(data.filter(~has_answer).height)},
        read_seconds=time.perf_counter() - started,
    )
