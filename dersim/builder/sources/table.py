"""Generic question tables (JSONL, CSV or Parquet) with a column mapping from the recipe.

The mapping names the columns for `question` (required) and optionally `id`, `reference` and
`label`. A reference cell may hold several accepted answers separated by ` || `.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from dersim.builder.sources.question import Question
from dersim.errors import DatasetError

READERS = {
    ".jsonl": pl.read_ndjson,
    ".ndjson": pl.read_ndjson,
    ".csv": pl.read_csv,
    ".parquet": pl.read_parquet,
}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_csv_text(path: Path) -> pl.DataFrame:
    """A CSV file with every column as text (callers check types with row numbers), or a one-line
    error."""
    if not path.exists():
        raise DatasetError(f"{path}: dataset file not found")
    try:
        return pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # polars raises several error types for malformed files
        raise DatasetError(f"{path}: cannot read .csv file: {_first_line(exc)}") from None


def read_frame(path: Path) -> pl.DataFrame:
    """Load a JSONL/CSV/Parquet file as strings-friendly polars frame, with a one-line error on
    failure."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .csv or .parquet)"
        )
    if not path.exists():
        raise DatasetError(f"{path}: dataset file not found")
    try:
        return reader(path)
    except Exception as exc:  # polars raises several error types for malformed files
        raise DatasetError(f"{path}: cannot read {path.suffix} file: {_first_line(exc)}") from None


def read_table(path: Path, columns: dict[str, str]) -> list[Question]:
    """Questions from a table; ids default to `row-<index>`; empty questions are errors naming the
    row."""
    unknown = set(columns) - {"id", "question", "reference", "label"}
    if unknown:
        raise DatasetError(
            f"{path}: unknown column role '{sorted(unknown)[0]}' "
            "(roles: id, question, reference, label)"
        )
    frame = read_frame(path)
    missing = [c for c in columns.values() if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path}: column '{missing[0]}' not found (columns: {', '.join(frame.columns)})"
        )
    renamed = frame.select(
        [pl.col(col).cast(pl.String).alias(role) for role, col in columns.items()]
    )
    ids = (
        renamed["id"].to_list()
        if "id" in columns
        else [f"row-{i:06d}" for i in range(frame.height)]
    )
    questions = []
    for row_index, row in enumerate(renamed.iter_rows(named=True)):
        text = (row.get("question") or "").strip()
        if not text:
            raise DatasetError(
                f"{path}: row {row_index + 1}: empty question in column '{columns['question']}'"
            )
        qid = ids[row_index]
        if not qid:
            raise DatasetError(f"{path}: row {row_index + 1}: empty id in column '{columns['id']}'")
        references = tuple(
            r.strip() for r in (row.get("reference") or "").split(" || ") if r.strip()
        )
        questions.append(
            Question(
                str(qid),
                text,
                references[0] if references else "",
                references,
                (row.get("label") or "").strip(),
            )
        )
    if len({q.question_id for q in questions}) != len(questions):
        raise DatasetError(f"{path}: column '{columns['id']}' has duplicate ids")
    return questions
