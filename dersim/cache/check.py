"""Checked reads of a cache: what every reader runs before it uses the tables.

`read_checked` is the one checked read every reader of a cache uses, and the fast part of
`dersim cache verify` that protects a result: the manifest, the sha256 of the table files the
caller reads (skipped for `--no-verify`), and content checks on the columns a reader indexes with
or averages: state ids 0..S-1, every id in range, no transition that crosses questions, finite
scores in [0, 1], finite embeddings. It reads each table once, the checked columns with the
caller's. Each problem is a one-line `CacheFormatError` naming the file.
The per-table checks return lists of problems, so `cache verify` reports them all. Every check
is vectorised (a 1M-state cache is checked in well under a second, hashing aside).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from dersim.cache.files import (
    describe_error,
    missing_column,
    read_columns,
    read_manifest,
    table_schemas,
)
from dersim.cache.schema import (
    MANIFEST,
    QUESTIONS,
    SAMPLE,
    STATES,
    STATUS_FAILED,
    STATUS_OK,
    TABLE_FILES,
    TRANSITIONS,
    expert_samples,
    file_sha256,
    is_sampled,
)
from dersim.errors import CacheFormatError

SHOWN_ROWS = 3
# The columns `check_cache` reads from each table (metric columns, and the embedding unless the
# caller checks the array it loads itself, are added for states).
CHECKED_COLUMNS = {
    QUESTIONS: ("question_id", "root_state_id"),
    STATES: ("state_id", "question_id", "depth"),
    TRANSITIONS: ("state_id", "expert_id", "next_state_id", "status"),
}
HASH_DIFFERS = "sha256 differs from the manifest (the file changed after the cache was written)"
NO_VERIFY_HINT = "; rebuild or re-import the cache, or pass --no-verify to skip this check"


def _values(count: int, what: str) -> str:
    """'1 NaN value', '3 NaN values'."""
    return f"{count} {what} value{'' if count == 1 else 's'}"


def _rows(mask: np.ndarray) -> str:
    """'rows 12, 40, 77' (0-based, the first few) of the True entries of `mask`."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:SHOWN_ROWS])
    return f"row{'s' if len(rows) > 1 else ''} {shown}{', ...' if len(rows) > SHOWN_ROWS else ''}"


def _ids(frame: pl.DataFrame, column: str) -> np.ndarray:
    """An integer id column as int64 (nulls as -1, which every range check rejects)."""
    return frame[column].fill_null(-1).to_numpy().astype(np.int64, copy=False)


def _out_of_range(
    path: Path, column: str, values: np.ndarray, size: int, mask: np.ndarray | None = None
) -> list[str]:
    bad = (values < 0) | (values >= size)
    if mask is not None:
        bad &= mask
    if not bad.any():
        return []
    return [
        f"{path}: {_values(int(bad.sum()), column)} outside 0..{size - 1} or missing ({_rows(bad)})"
    ]


def hash_problems(
    directory: Path, manifest: dict[str, Any], files: Iterable[str] = TABLE_FILES
) -> list[str]:
    """Table files of `files` that are missing or whose sha256 differs from the manifest's."""
    problems = []
    for name in files:
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != manifest["files"].get(name):
            problems.append(f"{path}: {HASH_DIFFERS}")
    return problems


def states_problems(
    path: Path, states: pl.DataFrame, metrics: Iterable[str], depth: int
) -> list[str]:
    """Ids 0..S-1 in order, depths within 0..depth, question ids present, embeddings (when read)
    finite, metric values finite and within [0, 1]."""
    problems = []
    ids = _ids(states, "state_id")
    bad = ids != np.arange(len(ids))
    if bad.any():
        problems.append(f"{path}: state_id is not 0..{len(ids) - 1} in order ({_rows(bad)})")
    problems += _out_of_range(path, "depth", _ids(states, "depth"), depth + 1)
    if states["question_id"].null_count():
        problems.append(
            f"{path}: {_values(states['question_id'].null_count(), 'missing question_id')} "
            f"({_rows(states['question_id'].is_null().to_numpy())})"
        )
    if "embedding" in states.columns and states.height:
        problems += embedding_problems(
            path, np.asarray(states["embedding"].to_numpy()).reshape(states.height, -1)
        )
    for metric in metrics:
        column = states[metric]
        values = column.to_numpy().astype(np.float64, copy=False)
        for label, bad in (
            ("missing", column.is_null().to_numpy()),
            ("NaN", np.isnan(values) & ~column.is_null().to_numpy()),
            ("out-of-range (not within [0, 1])", ~np.isnan(values) & ((values < 0) | (values > 1))),
        ):
            if bad.any():
                problems.append(
                    f"{path}: {_values(int(bad.sum()), label)} in column '{metric}' ({_rows(bad)})"
                )
                break
    return problems


def embedding_problems(path: Path, embeddings: np.ndarray) -> list[str]:
    """Rows of the [S, d] `embeddings` (read from `path`) with NaN or infinite values: a policy fed
    one would output NaN without an error."""
    bad = ~np.isfinite(embeddings).all(axis=1)
    if not bad.any():
        return []
    count = int(bad.sum())
    return [
        f"{path}: {count} embedding{'s' if count > 1 else ''} with NaN or infinite values "
        f"({_rows(bad)})"
    ]


def question_codes(states: pl.DataFrame) -> np.ndarray:
    """A small integer per state that is equal exactly when two states belong to the same
    question."""
    return (
        states["question_id"]
        .cast(pl.Categorical)
        .to_physical()
        .to_numpy()
        .astype(np.int64, copy=False)
    )


def questions_problems(
    path: Path, questions: pl.DataFrame, n_states: int, states: pl.DataFrame | None = None
) -> list[str]:
    """Root states in range; with `states`, each root is a depth-0 state of its own question."""
    roots = _ids(questions, "root_state_id")
    problems = _out_of_range(path, "root_state_id", roots, n_states)
    if problems or states is None:
        return problems
    own = states["question_id"].gather(roots) == questions["question_id"]
    bad = ~(
        own.fill_null(False).to_numpy()
        & (states["depth"].gather(roots) == 0).fill_null(False).to_numpy()
    )
    if bad.any():
        problems.append(
            f"{path}: {_values(int(bad.sum()), 'root_state_id')} not pointing at their question's "
            f"depth-0 state ({_rows(bad)})"
        )
    return problems


def transitions_problems(
    path: Path,
    transitions: pl.DataFrame,
    n_experts: int,
    n_states: int,
    codes: np.ndarray | None = None,
    samples: Sequence[int] | None = None,
) -> list[str]:
    """Known statuses; state, expert and (for 'ok' calls) next state ids in range; one row per
    (state, expert), or for a sampled cache (each expert's `samples` k) per (state, expert,
    sample) with the sample in [0, k); with the states' `question_codes`, no call that leads to
    another question."""
    status = transitions["status"]
    unknown = (~status.is_in([STATUS_OK, STATUS_FAILED])).fill_null(True).to_numpy()
    if unknown.any():
        return [
            f"{path}: {_values(int(unknown.sum()), 'status')} not '{STATUS_OK}' or "
            f"'{STATUS_FAILED}' ({_rows(unknown)})"
        ]
    ok = (status == STATUS_OK).to_numpy()
    state, expert, nxt = (_ids(transitions, c) for c in ("state_id", "expert_id", "next_state_id"))
    problems = (
        _out_of_range(path, "state_id", state, n_states)
        + _out_of_range(path, "expert_id", expert, n_experts)
        + _out_of_range(path, "next_state_id", nxt, n_states, ok)
    )
    if problems:
        return problems
    pair = "(state_id, expert_id)"
    keys = state * n_experts + expert
    if samples is not None:
        k = np.asarray(samples, dtype=np.int64)
        sample = _ids(transitions, SAMPLE)
        outside = (sample < 0) | (sample >= k[expert])
        if outside.any():
            return [
                f"{path}: {_values(int(outside.sum()), SAMPLE)} outside [0, the expert's samples) "
                f"({_rows(outside)})"
            ]
        keys, pair = keys * int(k.max()) + sample, "(state_id, expert_id, sample)"
    keys = np.sort(keys)
    repeated = int((keys[1:] == keys[:-1]).sum())
    if repeated:
        problems.append(f"{path}: {repeated} duplicate {pair} rows")
    if codes is not None:
        crossing = ok & (codes[state] != codes[np.where(ok, nxt, 0)])
        if crossing.any():
            problems.append(
                f"{path}: {int(crossing.sum())} transitions lead to another question's state "
                f"({_rows(crossing)})"
            )
    return problems


def _n_states(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except FileNotFoundError:
        raise CacheFormatError(f"{path}: missing") from None
    except Exception as exc:  # pyarrow raises several error types for damaged files
        raise CacheFormatError(f"{path}: unreadable Parquet ({describe_error(exc)})") from None


def content_problems(
    directory: Path,
    manifest: dict[str, Any],
    tables: dict[str, pl.DataFrame],
    metrics: Iterable[str],
) -> list[str]:
    """The content checks on the `tables` given (file name -> frame holding at least
    `CHECKED_COLUMNS` and, for states, `metrics`); checks across tables run when both are given."""
    states = tables.get(STATES)
    problems = (
        []
        if states is None
        else states_problems(directory / STATES, states, metrics, int(manifest["depth"]))
    )
    if problems:
        return problems
    n_states = states.height if states is not None else _n_states(directory / STATES)
    if QUESTIONS in tables:
        problems += questions_problems(directory / QUESTIONS, tables[QUESTIONS], n_states, states)
    if TRANSITIONS in tables:
        codes = None if states is None else question_codes(states)
        problems += transitions_problems(
            directory / TRANSITIONS,
            tables[TRANSITIONS],
            len(manifest["experts"]),
            n_states,
            codes,
            expert_samples(manifest) if is_sampled(manifest) else None,
        )
    return problems


def raise_first(problems: list[str]) -> None:
    """Raise the first problem as a `CacheFormatError`; a changed hash gets the --no-verify hint."""
    if problems:
        raise CacheFormatError(
            problems[0] + (NO_VERIFY_HINT if problems[0].endswith(HASH_DIFFERS) else "")
        )


def read_checked(
    directory: str | Path,
    columns: Mapping[str, Sequence[str] | None],
    *,
    verify_hashes: bool = True,
    metrics: Iterable[str] | None = None,
    embeddings: bool = True,
) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """The one checked read of the cache in `directory`: its manifest and, per table file named in
    `columns`, the columns asked for (None: every column). Raises a one-line `CacheFormatError` at
    the first problem.

    Checks the manifest; unless `verify_hashes` is False (the user's `--no-verify`), the sha256 of
    each file read against the manifest; then the `content_problems` checks, on the `metrics`
    columns of states.parquet (default: all; each must be one of the manifest's `metric_columns`)
    and, when `embeddings`, on its embeddings. Each table is read once."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = tuple(columns)
    if not set(files) <= set(TABLE_FILES):
        raise ValueError(f"read_checked: files must be among {', '.join(TABLE_FILES)}, got {files}")
    metrics = list(manifest["metric_columns"] if metrics is None else metrics)
    unknown = [m for m in metrics if m not in manifest["metric_columns"]]
    if unknown:
        raise CacheFormatError(
            f"{directory / MANIFEST}: no metric '{unknown[0]}' (metrics: "
            f"{', '.join(manifest['metric_columns'])})"
        )
    if verify_hashes:
        raise_first(hash_problems(directory, manifest, files))
    schemas = table_schemas(manifest, metrics)
    extra = {
        STATES: [*metrics, *(["embedding"] if embeddings else [])],
        TRANSITIONS: [SAMPLE] if is_sampled(manifest) else [],
    }
    tables, checked = {}, {}
    for name in files:
        needed = [*CHECKED_COLUMNS[name], *extra.get(name, ())]
        wanted = columns[name]
        table = read_columns(
            directory / name,
            None if wanted is None else list(dict.fromkeys([*needed, *wanted])),
            schemas[name],
        )
        absent = [c for c in needed if c not in table.column_names]
        if absent:
            raise CacheFormatError(missing_column(directory / name, absent[0]))
        checked[name] = pl.from_arrow(table.select(needed))
        tables[name] = table if wanted is None else table.select(list(wanted))
    raise_first(content_problems(directory, manifest, checked, metrics))  # type: ignore[arg-type]
    return manifest, tables


def check_cache(
    directory: str | Path,
    files: Iterable[str] = TABLE_FILES,
    *,
    verify_hashes: bool = True,
    metrics: Iterable[str] | None = None,
    embeddings: bool = True,
) -> dict[str, Any]:
    """`read_checked` of `files` (table file names) for its checks alone: the manifest."""
    return read_checked(
        directory,
        dict.fromkeys(files, ()),
        verify_hashes=verify_hashes,
        metrics=metrics,
        embeddings=embeddings,
    )[0]
