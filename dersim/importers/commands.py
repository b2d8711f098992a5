"""`dersim cache import ...`: existing answer sets -> depth-1 caches, with no LLM calls."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dersim.importers.common import ImportReport
from dersim.options import FiniteFloat

DEFAULT_TEST_FRACTION = 0.3


def _common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--out, --overwrite, --limit, --embedding, --dim, --drop-incomplete, --max-calls, --quiet,
    --json (shared by every importer)."""
    options = [
        click.option(
            "--out",
            type=click.Path(path_type=Path),
            required=True,
            help="Cache directory to write.",
        ),
        click.option("--overwrite", is_flag=True, help="Replace the cache already in --out."),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help=(
                "Cap the number of questions (after dropping incomplete ones; train:test ratio "
                "kept)."
            ),
        ),
        click.option(
            "--embedding",
            default="all-MiniLM-L6-v2",
            show_default=True,
            help="State embedding: all-MiniLM-L6-v2 (packaged model, dim 384) or hashing.",
        ),
        click.option(
            "--dim",
            type=click.IntRange(min=1),
            default=384,
            show_default=True,
            help="Embedding width (hashing; must be 384 for all-MiniLM-L6-v2).",
        ),
        click.option(
            "--drop-incomplete/--no-drop-incomplete",
            default=True,
            show_default=True,
            help="Drop questions where some model has no answer (otherwise they become failed "
            "transitions, which `dersim cache verify` reports).",
        ),
        click.option(
            "--max-calls",
            type=click.IntRange(min=1),
            default=3,
            show_default=True,
            help="Longest route the cache replays (the manifest's depth): imported answers are "
            "independent calls, so every answer state links to every model's answer.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option(
            "--json", "as_json", is_flag=True, help="Print the import report as JSON on stdout."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run(
    read: Callable[[], Any],
    out: Path,
    overwrite: bool,
    limit: int | None,
    embedding: str,
    dim: int,
    drop_incomplete: bool,
    max_calls: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Check --out, read the source (`read()`), import it, print the report."""
    from dersim.importers.common import check_target, import_answer_set
    from dersim.recipe import EmbeddingSpec

    check_target(out, overwrite)
    report = import_answer_set(
        read(),
        out,
        embedding=EmbeddingSpec(model=embedding, dim=dim),
        limit=limit,
        drop_incomplete=drop_incomplete,
        show_progress=not quiet,
        max_calls=max_calls,
        overwrite=overwrite,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)


def _print_report(report: ImportReport) -> None:
    table = Table(title=f"imported {report.dataset} -> {report.out}", show_header=False)
    table.add_row(
        "questions (train / test)",
        f"{report.questions.get('train', 0)} / {report.questions.get('test', 0)}"
        f"  of {report.source_questions} in the source",
    )
    table.add_row("dropped (some model lacks an answer)", str(report.dropped_incomplete))
    table.add_row(
        "cells without an answer in the source",
        ", ".join(f"{why}: {n}" for why, n in report.missing_cells.items()) or "none",
    )
    table.add_row("experts x depth (longest route)", f"{report.experts} x {report.depth}")
    table.add_row("states / transitions", f"{report.states} / {report.transitions}")
    table.add_row("failed transitions", str(report.failed))
    for key, value in report.notes.items():
        if value not in (0, [], {}, None):
            table.add_row(f"source: {key.replace('_', ' ')}", str(value))
    table.add_row(
        "time read / embed / write / total",
        " / ".join(f"{report.seconds[k]:.1f}s" for k in ("read", "embed", "write", "total")),
    )
    Console(stderr=True).print(table)


@click.group("import")
def import_group() -> None:
    """Turn existing answer sets into depth-1 caches (no LLM calls).

    Each question gets its root state and one state per model answer, with no dedup across models,
    so a route of several experts replays as independent calls (no knowledge transfer).
    """


@import_group.command("routerbench")
@click.argument("csv_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@_common_options
@click.option(
    "--split-from-name",
    is_flag=True,
    help="Split by file name: <task>_train.csv -> train, <task>_test.csv -> test (the default).",
)
@click.option(
    "--test-fraction",
    type=FiniteFloat(0.0, 1.0),
    help="Instead, split all questions at random: this fraction goes to test.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random split.")
@click.option(
    "--strip-shared-prefix/--keep-shared-prefix",
    default=True,
    show_default=True,
    help=(
        "Drop the few-shot examples every prompt of a task starts with from the question text "
        "(kept in the manifest). MiniLM reads 256 tokens: with the prefix kept, every "
        "arc-challenge and winogrande state embeds to the same vector."
    ),
)
def routerbench_command(
    csv_files: tuple[Path, ...],
    out: Path,
    overwrite: bool,
    limit: int | None,
    embedding: str,
    dim: int,
    drop_incomplete: bool,
    max_calls: int,
    quiet: bool,
    as_json: bool,
    split_from_name: bool,
    test_fraction: float | None,
    seed: int,
    strip_shared_prefix: bool,
) -> None:
    """Import RouterBench wide CSV_FILES (e.g. arc_challenge_train.csv arc_challenge_test.csv) as
    one cache.

    Score column "accuracy" = each model's 0/1 label; cost_usd = '<model>|total_cost'.
    """
    from dersim.importers.routerbench import read_routerbench

    if split_from_name and test_fraction is not None:
        raise click.UsageError("--split-from-name and --test-fraction exclude each other")
    _run(
        lambda: read_routerbench(
            list(csv_files),
            test_fraction=test_fraction,
            seed=seed,
            strip_shared_prefix=strip_shared_prefix,
        ),
        out,
        overwrite,
        limit,
        embedding,
        dim,
        drop_incomplete,
        max_calls,
        quiet,
        as_json,
    )


def _params(values: tuple[str, ...]) -> dict[str, float]:
    params: dict[str, float] = {}
    for value in values:
        name, sep, size = value.rpartition("=")
        try:
            params[name] = float(size)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise click.BadParameter(f"'{value}' is not MODEL=BILLIONS", param_hint="--params-b")
    return params


@import_group.command("long")
@click.argument("file", type=click.Path(path_type=Path))
@_common_options
@click.option("--question-id", "question_id", required=True, help="Column: question id.")
@click.option("--question", required=True, help="Column: question text.")
@click.option("--model", required=True, help="Column: model (expert) name.")
@click.option("--answer", required=True, help="Column: the model's answer (empty = no answer).")
@click.option("--score", required=True, help="Column: the answer's score in [0, 1].")
@click.option("--reference", help="Column: reference answer(s), several separated by ' || '.")
@click.option("--label", help="Column: task-specific label of the question.")
@click.option("--cost", help="Column: cost of the call in US dollars.")
@click.option("--prompt-tokens", help="Column: prompt tokens of the call.")
@click.option("--completion-tokens", help="Column: completion tokens of the call.")
@click.option("--split", help="Column: train/test split (default: a seeded random split).")
@click.option(
    "--test-fraction",
    type=FiniteFloat(0.0, 1.0),
    help=f"Without --split: fraction of questions for test (default {DEFAULT_TEST_FRACTION}).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random split.")
@click.option(
    "--score-name", default="accuracy", show_default=True, help="Metric column name for the score."
)
@click.option(
    "--params-b",
    "params_b",
    multiple=True,
    metavar="MODEL=BILLIONS",
    help="Parameter count of a model (repeatable; unknown by default).",
)
def long_command(
    file: Path,
    out: Path,
    overwrite: bool,
    limit: int | None,
    embedding: str,
    dim: int,
    drop_incomplete: bool,
    max_calls: int,
    quiet: bool,
    as_json: bool,
    question_id: str,
    question: str,
    model: str,
    answer: str,
    score: str,
    reference: str | None,
    label: str | None,
    cost: str | None,
    prompt_tokens: str | None,
    completion_tokens: str | None,
    split: str | None,
    test_fraction: float | None,
    seed: int,
    score_name: str,
    params_b: tuple[str, ...],
) -> None:
    """Import FILE (JSONL, CSV or Parquet; one row per question x model) as a cache."""
    from dersim.importers.long import LongColumns, read_long

    if split and test_fraction is not None:
        raise click.UsageError("--split and --test-fraction exclude each other")
    columns = LongColumns(
        question_id=question_id,
        question=question,
        model=model,
        answer=answer,
        score=score,
        reference=reference,
        label=label,
        cost=cost,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        split=split,
    )
    _run(
        lambda: read_long(
            file,
            columns,
            score_name=score_name,
            test_fraction=DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction,
            seed=seed,
            params_b=_params(params_b),
        ),
        out,
        overwrite,
        limit,
        embedding,
        dim,
        drop_incomplete,
        max_calls,
        quiet,
        as_json,
    )


@import_group.command("wide")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@_common_options
@click.option(
    "--preset",
    type=click.Choice(["routerbench", "routellm", "matrix"]),
    help="Column patterns of a known format (options below override them): routerbench (sample_id, "
    "prompt, <model>, <model>|model_response, <model>|total_cost), routellm (prompt, <model>, "
    "<model>_response), matrix (prompt and a 0/1 column per model, e.g. EmbedLLM).",
)
@click.option("--question", help="Column: question text (default: prompt).")
@click.option(
    "--question-id", "question_id", help="Column: question id (default: <file stem>-<row>)."
)
@click.option(
    "--score-pattern",
    help="Each model's score column, with {model} for its name (default: {model}).",
)
@click.option(
    "--answer-pattern", help="Each model's answer column, e.g. '{model}_response' (default: none)."
)
@click.option(
    "--cost-pattern", help="Each model's cost column in US dollars, e.g. '{model}|total_cost'."
)
@click.option("--models", help="Comma-separated model names (default: found by the patterns).")
@click.option(
    "--listed-answers/--text-answers",
    default=None,
    help="Answers are stringified Python lists (parsed with ast.literal_eval only), or plain text.",
)
@click.option("--reference", help="Column: reference answer(s), several separated by ' || '.")
@click.option("--label", help="Column: task-specific label of the question.")
@click.option(
    "--split", help="Column: train/test split (default: file names, else a seeded random split)."
)
@click.option(
    "--test-fraction", type=FiniteFloat(0.0, 1.0), help="Split at random: this fraction is test."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random split.")
@click.option(
    "--score-name", default="accuracy", show_default=True, help="Metric column name for the score."
)
@click.option(
    "--params-b",
    "params_b",
    multiple=True,
    metavar="MODEL=BILLIONS",
    help="Parameter count of a model.",
)
@click.option(
    "--strip-shared-prefix/--keep-shared-prefix",
    default=None,
    help="Drop the few-shot examples every prompt of a file starts with (default: on for the "
    "routerbench preset).",
)
def wide_command(
    files: tuple[Path, ...],
    out: Path,
    overwrite: bool,
    limit: int | None,
    embedding: str,
    dim: int,
    drop_incomplete: bool,
    max_calls: int,
    quiet: bool,
    as_json: bool,
    preset: str | None,
    **options,
):
    """Import wide FILES (one row per question, per-model score / answer / cost columns) as a
    cache."""
    from dataclasses import replace

    from dersim.importers.wide import PRESETS, WideColumns, read_wide

    if options["split"] and options["test_fraction"] is not None:
        raise click.UsageError("--split and --test-fraction exclude each other")
    given = {
        "question": options["question"],
        "question_id": options["question_id"],
        "score": options["score_pattern"],
        "answer": options["answer_pattern"],
        "cost": options["cost_pattern"],
        "reference": options["reference"],
        "label": options["label"],
        "split": options["split"],
        "listed_answers": options["listed_answers"],
        "models": tuple(m.strip() for m in options["models"].split(",") if m.strip())
        if options["models"]
        else None,
    }
    columns = replace(
        PRESETS[preset] if preset else WideColumns(),
        **{k: v for k, v in given.items() if v is not None},
    )
    strip = options["strip_shared_prefix"]
    _run(
        lambda: read_wide(
            list(files),
            columns,
            score_name=options["score_name"],
            test_fraction=options["test_fraction"],
            seed=options["seed"],
            params_b=_params(options["params_b"]),
            strip_shared_prefix=preset == "routerbench" if strip is None else strip,
        ),
        out,
        overwrite,
        limit,
        embedding,
        dim,
        drop_incomplete,
        max_calls,
        quiet,
        as_json,
    )
