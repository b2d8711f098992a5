"""A wide answer table (one row per question, per-model columns) -> `AnswerSet`.

The format routers are usually published in: RouterBench (`<model>`, `<model>|model_response`,
`<model>|total_cost`), RouteLLM's eval caches (`prompt`, `<model>`, `<model>_response`) and
correctness matrices such as EmbedLLM's (a 0/1 column per model, no answers). Each model's columns
are found by name patterns in which `{model}` stands for the model's name: a score pattern, and
optionally an answer and a cost pattern (US dollars). Models are the names whose answer column
exists (with an answer pattern), else every column the score pattern matches that plays no other
role; `models` names them explicitly instead.

The question-id column is optional (default: `<file stem>-<row>`). Rows that share a question id
are merged as in the RouterBench importer (per model the row holding a score gives the answer).
Without an answer pattern each scored cell gets a placeholder answer text naming the model, so
that routes still replay; the score is the source's. Splits come from a split column, else a
seeded random `test_fraction`, else the file names (`<task>_train.csv`, `<task>_test.csv`), else a
seeded random 30%. Every problem is a one-line `DatasetError` naming the file, row and column.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from dersim.cache.schema import SPLITS, file_sha256
from dersim.errors import DatasetError
from dersim.importers.common import (
    MISSING_EMPTY,
    MISSING_NO_COST,
    MISSING_NO_SCORE,
    QUESTION_COLUMNS,
    AnswerSet,
    ImportedExpert,
    check_metric_name,
    parse_numbers,
    random_split,
)
from dersim.importers.long import read_long_frame
from dersim.importers.routerbench import (
    SPLIT_IN_NAME,
    merge_repeated,
    merged_cells,
    parse_listed_text,
    strip_shared_prefixes,
)

DEFAULT_TEST_FRACTION = 0.3
MODEL = "{model}"


@dataclass(frozen=True)
class WideColumns:
    """Which columns play which role; `score`, `answer` and `cost` are patterns containing
    {model}."""

    question: str = "prompt"
    question_id: str | None = None
    score: str = MODEL
    answer: str | None = None
    cost: str | None = None
    split: str | None = None
    reference: str | None = None
    label: str | None = None
    models: tuple[str, ...] | None = None
    listed_answers: bool = (
        False  # answers are stringified Python lists (parsed with ast.literal_eval only)
    )

    def roles(self) -> dict[str, str]:
        """Fixed (non-model) columns: role -> column."""
        return {
            role: column
            for role in ("question", "question_id", "split", "reference", "label")
            if (column := getattr(self, role)) is not None
        }


PRESETS: dict[str, WideColumns] = {
    "routerbench": WideColumns(
        question="prompt",
        question_id="sample_id",
        answer="{model}|model_response",
        cost="{model}|total_cost",
        listed_answers=True,
    ),
    "routellm": WideColumns(question="prompt", answer="{model}_response"),
    "matrix": WideColumns(question="prompt"),
}


def pattern_regex(pattern: str, option: str) -> re.Pattern[str]:
    if pattern.count(MODEL) != 1:
        raise DatasetError(f"--{option} '{pattern}': the pattern must contain {MODEL} exactly once")
    before, after = pattern.split(MODEL)
    return re.compile(f"^{re.escape(before)}(?P<model>.+){re.escape(after)}$")


def column(pattern: str, model: str) -> str:
    return pattern.replace(MODEL, model)


def discover_models(path: Path, frame: pl.DataFrame, columns: WideColumns) -> list[str]:
    """The models of the file, in header order (see the module docstring); each needs every column
    its patterns name."""
    fixed = set(columns.roles().values())
    if columns.models:
        models = list(columns.models)
    elif columns.answer:
        regex = pattern_regex(columns.answer, "answer")
        models = [m["model"] for c in frame.columns if c not in fixed and (m := regex.match(c))]
    else:
        others = [pattern_regex(p, o) for p, o in ((columns.cost, "cost"),) if p]
        regex = pattern_regex(columns.score, "score")
        models = [
            m["model"]
            for c in frame.columns
            if c not in fixed and not any(o.match(c) for o in others) and (m := regex.match(c))
        ]
    if not models:
        raise DatasetError(
            f"{path}: no model columns found (score pattern '{columns.score}'"
            + (f", answer pattern '{columns.answer}'" if columns.answer else "")
            + ")"
        )
    for model in models:
        for pattern in (columns.score, columns.answer, columns.cost):
            if pattern and column(pattern, model) not in frame.columns:
                raise DatasetError(
                    f"{path}: column '{column(pattern, model)}' not found (model '{model}')"
                )
    return models


def _text_column(path: Path, frame: pl.DataFrame, name: str) -> pl.Series:
    series = frame[name]
    if series.dtype == pl.String:
        return series
    if series.dtype.is_numeric() or series.dtype == pl.Boolean:
        return series.cast(pl.String)
    raise DatasetError(f"{path}: column '{name}' holds {series.dtype} values, expected text")


def _answers(
    path: Path, frame: pl.DataFrame, columns: WideColumns, model: str
) -> tuple[list, list]:
    """(answer text or None, why it is missing or None) per row."""
    if columns.answer is None:
        return [f"(an answer of {model}; the source has no answer text)"] * frame.height, [
            None
        ] * frame.height
    cells = _text_column(path, frame, column(columns.answer, model)).to_list()
    if columns.listed_answers:
        parsed = [parse_listed_text(c) for c in cells]
        return [t for t, _ in parsed], [why for _, why in parsed]
    present = [c if c is not None and c.strip() else None for c in cells]
    return present, [None if c is not None else MISSING_EMPTY for c in present]


def _read_file(
    path: Path, index: int, columns: WideColumns
) -> tuple[list[str], pl.DataFrame, pl.DataFrame]:
    """(models, rows, cells) of one file, shaped as the RouterBench importer's (so rows merge
    alike)."""
    frame = read_long_frame(path)
    if frame.height == 0:
        raise DatasetError(f"{path}: no rows (only a header, or empty)")
    for role, name in columns.roles().items():
        if name not in frame.columns:
            raise DatasetError(
                f"{path}: column '{name}' (--{role.replace('_', '-')}) not found "
                f"(columns: {', '.join(frame.columns)})"
            )
    models = discover_models(path, frame, columns)
    match = SPLIT_IN_NAME.match(path.stem)
    task = match["task"] if match else path.stem
    numbers = pl.Series("row", range(1, frame.height + 1), dtype=pl.Int64)
    if columns.question_id:
        ids = _text_column(path, frame, columns.question_id).str.strip_chars()
    else:
        ids = pl.lit(path.stem + "-") + numbers.cast(pl.String)
        ids = pl.select(ids).to_series()
    raw_questions = _text_column(path, frame, columns.question).to_list()
    questions = [
        (parse_listed_text(q)[0] or q or "") if columns.listed_answers else (q or "")
        for q in raw_questions
    ]
    rows = pl.DataFrame(
        {
            "file": [index] * frame.height,
            "row": numbers,
            "question_id": ids,
            "task": [task] * frame.height,
            "split": [match["split"] if match else None] * frame.height,
            "question": questions,
        },
        schema_overrides={"split": pl.String, "file": pl.Int64},
    )
    for role in ("reference", "label"):
        values = (
            _text_column(path, frame, getattr(columns, role)) if getattr(columns, role) else None
        )
        rows = rows.with_columns(
            pl.Series(
                role, values if values is not None else [""] * frame.height, dtype=pl.String
            ).fill_null("")
        )
    if columns.split:
        given = _text_column(path, frame, columns.split).str.strip_chars().str.to_lowercase()
        bad = rows.with_columns(given.alias("split")).filter(
            ~pl.col("split").is_in(list(SPLITS)).fill_null(False)
        )
        if bad.height:
            raise DatasetError(
                f"{path}: row {bad['row'][0]}, column '{columns.split}': split {bad['split'][0]!r} "
                f"is not one of {', '.join(SPLITS)}"
            )
        rows = rows.with_columns(given.alias("split"))
    for role in ("question_id", "question"):
        empty = rows.filter(pl.col(role).is_null() | (pl.col(role).str.strip_chars() == ""))
        if empty.height:
            raise DatasetError(
                f"{path}: row {empty['row'][0]}, column '{getattr(columns, role)}': empty "
                f"{role.replace('_', ' ')}"
            )
    cells = []
    for model in models:
        score = parse_numbers(
            path,
            frame,
            column(columns.score, model),
            "a score in [0, 1]",
            pl.col("value").is_between(0.0, 1.0),
        )
        cost = (
            parse_numbers(
                path,
                frame,
                column(columns.cost, model),
                "a cost in US dollars (a number >= 0)",
                pl.col("value").is_finite() & (pl.col("value") >= 0),
            )
            if columns.cost
            else pl.Series([None] * frame.height, dtype=pl.Float64)
        )
        text, problem = _answers(path, frame, columns, model)
        cells.append(
            pl.DataFrame(
                {
                    "file": rows["file"],
                    "row": rows["row"],
                    "question_id": rows["question_id"],
                    "model": [model] * frame.height,
                    "text": text,
                    "parse_problem": problem,
                    "score": score,
                    "cost_usd": cost,
                },
                schema_overrides={"text": pl.String, "parse_problem": pl.String},
            )
        )
    missing_cost = pl.col("cost_usd").is_null() if columns.cost else pl.lit(False)
    cells_frame = pl.concat(cells).with_columns(
        missing=pl.when(pl.col("score").is_null())
        .then(pl.lit(MISSING_NO_SCORE))
        .when(pl.col("parse_problem").is_not_null())
        .then(pl.col("parse_problem"))
        .when(missing_cost)
        .then(pl.lit(MISSING_NO_COST))
    )
    return models, rows, cells_frame


def _splits(
    paths: list[Path],
    primary: pl.DataFrame,
    columns: WideColumns,
    test_fraction: float | None,
    seed: int,
) -> tuple[pl.DataFrame, str | dict]:
    """Questions with their split, and how it was decided (for the manifest)."""
    if columns.split:
        return primary, f"column '{columns.split}'"
    if test_fraction is None and primary["split"].is_not_null().all():
        return primary, "file name"
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    splits = random_split(primary["question_id"].to_list(), fraction, seed)
    return (
        primary.with_columns(pl.col("question_id").replace_strict(splits).alias("split")),
        {"test_fraction": fraction, "seed": seed},
    )


def read_wide(
    paths: list[Path],
    columns: WideColumns,
    *,
    score_name: str = "accuracy",
    test_fraction: float | None = None,
    seed: int = 0,
    params_b: dict[str, float] | None = None,
    strip_shared_prefix: bool = False,
) -> AnswerSet:
    """The wide tables `paths` (CSV, JSONL or Parquet, the same models in each) as one answer set.
    `strip_shared_prefix` removes the few-shot examples every prompt of a file starts with (see
    `routerbench.read_routerbench`)."""
    started = time.perf_counter()
    metric = check_metric_name(score_name)
    if not paths:
        raise DatasetError("wide: give at least one file")
    parts = [_read_file(path, i, columns) for i, path in enumerate(paths)]
    models = parts[0][0]
    for path, (other, _, _) in zip(paths[1:], parts[1:], strict=True):
        if set(other) != set(models):
            raise DatasetError(
                f"{path}: its models differ from {paths[0]}'s (all files must have the same models)"
            )
    rows = pl.concat([r for _, r, _ in parts])
    cells = pl.concat([c for _, _, c in parts])
    lacking = (
        cells.filter(pl.col("missing").is_not_null()).group_by("missing").len().sort("missing")
    )
    primary, merged, notes = merge_repeated(paths, rows, cells)
    notes = {"cells_without_answer": {str(why): int(n) for why, n in lacking.iter_rows()}, **notes}
    prefixes: dict[str, str] = {}
    if strip_shared_prefix:
        primary, prefixes = strip_shared_prefixes(primary)
    primary, split_rule = _splits(paths, primary, columns, test_fraction, seed)
    questions = primary.select(
        "question_id",
        "split",
        "question",
        "reference",
        pl.col("reference")
        .str.split(" || ")
        .list.eval(pl.element().str.strip_chars())
        .list.filter(pl.element() != "")
        .alias("references"),
        "label",
    ).cast(QUESTION_COLUMNS)
    answers = merged_cells(merged)
    return AnswerSet(
        questions=questions,
        cells=answers,
        experts=[ImportedExpert(m, (params_b or {}).get(m)) for m in models],
        metric=metric,
        metric_manifest={
            "source": "wide table",
            "description": f"the score column '{columns.score}' of each model; root states score 0",
        },
        dataset={
            "id": "wide/"
            + "+".join(dict.fromkeys(str(r) for r in rows["task"].unique(maintain_order=True))),
            "source": "wide",
            "files": [{"path": str(p), "sha256": file_sha256(p)} for p in paths],
        },
        settings={
            "importer": "wide",
            "columns": {k: v for k, v in asdict(columns).items() if v is not None},
            "split": split_rule,
            "question_id": columns.question_id or "<file stem>-<row>",
            "answer": (
                "ast.literal_eval of the answer column"
                if columns.listed_answers
                else "the answer column"
            )
            if columns.answer
            else "not in the source (a placeholder text naming the model)",
            "cost_usd": columns.cost or "not in the source (0)",
            "tokens": "not in the source (0)",
            "latency_s": "not in the source (0)",
            "strip_shared_prefix": strip_shared_prefix,
            "shared_prefixes": prefixes,
        },
        notes=notes,
        read_seconds=time.perf_counter() - started,
    )
