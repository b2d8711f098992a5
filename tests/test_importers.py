"""Importers: RouterBench's real CSVs and long-format tables -> caches that verify, where a route of
several experts replays as independent calls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from dersim.cache.info import cache_summary
from dersim.cache.reader import open_cache
from dersim.cache.routes import next_state_matrix
from dersim.cache.schema import DEDUP_NONE
from dersim.cache.verify import verify_cache
from dersim.cli import DersimGroup
from dersim.errors import DatasetError
from dersim.importers.commands import import_group
from dersim.importers.common import MISSING_EMPTY, MISSING_MALFORMED, random_split
from dersim.importers.long import LongColumns, read_long
from dersim.importers.routerbench import (
    PARAMS_B,
    parse_listed_text,
    read_routerbench,
    shared_prefix,
)

from conftest import SHARED_DATA

ROUTERBENCH = SHARED_DATA / "routerbench"
MODELS = [
    "gpt-3.5-turbo-1106",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-4-1106-preview",
    "meta/llama-2-70b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
    "WizardLM/WizardLM-13B-V1.2",
    "meta/code-llama-instruct-34b-chat",
    "mistralai/mistral-7b-chat",
]


def invoke(*args: str):
    """The import group under a DersimGroup, as `dersim cache import` runs it."""
    main = DersimGroup("dersim")
    main.add_command(import_group)
    return CliRunner().invoke(main, ["import", *args])


def import_ok(*args: str) -> dict:
    result = invoke(*args, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def error_line(*args: str) -> str:
    """The one-line error of a failing import (exit status 2)."""
    result = invoke(*args, "--quiet")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def transitions_with_scores(directory: Path) -> pl.DataFrame:
    """One row per (question, expert): the imported answer's score and cost."""
    cache = open_cache(directory)
    return (
        cache.transitions.join(
            cache.questions.select("question_id", "root_state_id"),
            left_on="state_id",
            right_on="root_state_id",
        )
        .join(
            cache.states.select("state_id", "answer", *cache.metric_columns),
            left_on="next_state_id",
            right_on="state_id",
            how="left",
        )
        .with_columns(
            model=pl.col("expert_id").map_elements(
                lambda i: cache.expert_names[i], return_dtype=pl.String
            )
        )
    )


# -------------------------------------------------------------------------------- RouterBench, real


@pytest.fixture(scope="module")
def winogrande(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rb") / "winogrande"
    report = import_ok(
        "routerbench",
        str(ROUTERBENCH / "winogrande_train.csv"),
        str(ROUTERBENCH / "winogrande_test.csv"),
        "--out",
        str(out),
        "--limit",
        "30",
        "--embedding",
        "hashing",
    )
    return out, report


def test_routes_of_imported_answers_replay_as_independent_calls(winogrande) -> None:
    out, _ = winogrande
    cache = open_cache(out)
    next_state = next_state_matrix(cache)
    roots = cache.questions["root_state_id"].to_numpy()
    first = next_state[roots]  # [Q, N]: each model's answer
    for a in range(len(MODELS)):
        for b in range(len(MODELS)):
            assert (next_state[first[:, a], b] == first[:, b]).all()


def test_routerbench_pair_verifies_with_the_csv_scores_and_costs(winogrande) -> None:
    out, report = winogrande
    assert verify_cache(out) == []
    cache = open_cache(out)
    manifest = cache.manifest
    assert (
        manifest["depth"] == 3
        and manifest["dedup"] == DEDUP_NONE
        and manifest["metric_columns"] == ["accuracy"]
    )
    assert [e["name"] for e in manifest["experts"]] == MODELS
    assert all(
        e["backend"] == "imported" and e["params_b"] == PARAMS_B.get(e["name"])
        for e in manifest["experts"]
    )
    assert manifest["dataset"]["splits"] == {"train": 21, "test": 9} == report["questions"]
    assert (
        report["states"] == 30 * 12
        and report["transitions"] == 30 * (11 + 11 * 11)
        and report["failed"] == 0
    )

    joined = transitions_with_scores(out)
    for split in ("train", "test"):
        csv = pl.read_csv(ROUTERBENCH / f"winogrande_{split}.csv")
        ids = cache.questions.filter(pl.col("split") == split)["question_id"].to_list()
        expected_ids = ("winogrande-" + csv["sample_id"]).to_list()[: len(ids)]
        assert ids == expected_ids  # no drops in winogrande: the first rows of each file
        for row in csv.head(3).iter_rows(named=True):
            got = joined.filter(pl.col("question_id") == f"winogrande-{row['sample_id']}")
            for model in MODELS:
                cell = got.filter(pl.col("model") == model).row(0, named=True)
                assert cell["accuracy"] == row[model]
                assert cell["cost_usd"] == pytest.approx(row[f"{model}|total_cost"], rel=1e-6)
                assert cell["answer"] == "\n".join(literal_list(row[f"{model}|model_response"]))
    summary = cache_summary(cache)
    assert len(summary["experts"]) == 11 and summary["questions"] == {"test": 9, "train": 21}
    mean_gpt4 = joined.filter(pl.col("model") == "gpt-4-1106-preview")["accuracy"].mean()
    assert summary["experts"][MODELS.index("gpt-4-1106-preview")]["depth1"][
        "accuracy"
    ] == pytest.approx(mean_gpt4)


def literal_list(cell: str) -> list[str]:
    import ast

    return ast.literal_eval(cell)


def test_routerbench_minilm_small(tmp_path: Path) -> None:
    out = tmp_path / "mbpp"
    report = import_ok(
        "routerbench",
        str(ROUTERBENCH / "mbpp_train.csv"),
        str(ROUTERBENCH / "mbpp_test.csv"),
        "--out",
        str(out),
        "--limit",
        "5",
    )
    assert verify_cache(out) == []
    cache = open_cache(out)
    assert cache.manifest["embedding"]["kind"] == "sentence-transformers"
    assert cache.manifest["embedding"]["dim"] == 384 and report["states"] == 5 * 12
    vectors = np.stack(cache.states["embedding"].to_numpy())
    assert (
        len(np.unique(vectors.round(5), axis=0)) == cache.states.height
    )  # every state embeds differently


def test_strip_shared_prefix_keeps_the_question_itself(tmp_path: Path) -> None:
    answers = read_routerbench([ROUTERBENCH / "winogrande_test.csv"], strip_shared_prefix=True)
    prefix = answers.settings["shared_prefixes"]["winogrande"]
    full = read_routerbench([ROUTERBENCH / "winogrande_test.csv"]).questions["question"].to_list()
    stripped = answers.questions["question"].to_list()
    assert len(prefix) > 1000 and all(prefix + s == f for s, f in zip(stripped, full, strict=True))
    assert all(s.strip() for s in stripped)
    assert shared_prefix(["a\n\nb\n\nc", "a\n\nb\n\nd"]) == "a\n\nb\n\n"
    assert shared_prefix(["a\n\nb", "a\n\nb"]) == "a\n\n" and shared_prefix(["x"]) == ""


# ----------------------------------------------------------------------------- RouterBench, crafted


def wide_csv(path: Path, rows: list[dict], models: tuple[str, ...] = ("m1", "org/m2")) -> Path:
    """A RouterBench-shaped CSV; each row dict gives sample_id and per model (score, response,
    cost)."""
    records = []
    for row in rows:
        record = {
            "sample_id": row["sample_id"],
            "prompt": row.get("prompt", "['What is 2+2?']"),
            "eval_name": row.get("eval_name", "toy"),
        }
        for model in models:
            score, response, cost = row.get(model, (1.0, "['4']", 0.001))
            record |= {
                model: score,
                f"{model}|model_response": response,
                f"{model}|total_cost": cost,
            }
        records.append(record | {"oracle_model_to_route_to": models[0]})
    pl.DataFrame(records, infer_schema_length=None).write_csv(path)
    return path


def test_malicious_cell_is_never_executed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    evil = [
        f"__import__('os').system('touch {marker}')",
        "__import__('os').system('touch PWNED')",
        f"[__import__('os').system('touch {marker}')]",
        "(lambda: open('PWNED', 'w'))()",
    ]
    rows = [{"sample_id": f"s{i}", "m1": (1.0, cell, 0.002)} for i, cell in enumerate(evil)]
    rows += [
        {"sample_id": "ok1"},
        {"sample_id": "empty", "org/m2": (0.0, "", 0.0)},
        {"sample_id": "emptylist", "org/m2": (0.0, "['']", 0.0)},
    ]
    path = wide_csv(tmp_path / "toy_train.csv", rows)
    out = tmp_path / "c"
    report = import_ok(
        "routerbench", str(path), "--out", str(out), "--embedding", "hashing", "--dim", "16"
    )
    assert not marker.exists()
    assert report["notes"]["malformed_responses"] == 4 and report["notes"]["empty_responses"] == 2
    assert report["dropped_incomplete"] == 6 and report["questions"] == {"train": 1, "test": 0}
    assert verify_cache(out) == []

    kept = tmp_path / "kept"
    report = import_ok(
        "routerbench",
        str(path),
        "--out",
        str(kept),
        "--embedding",
        "hashing",
        "--dim",
        "16",
        "--no-drop-incomplete",
        "--max-calls",
        "1",
    )
    assert not marker.exists()
    assert (
        report["missing_cells"] == {MISSING_EMPTY: 2, MISSING_MALFORMED: 4}
        and report["failed"] == 6
    )
    failed = open_cache(kept).transitions.filter(pl.col("status") == "failed")
    assert failed["next_state_id"].null_count() == 6
    assert all(e.startswith("no answer in the source") for e in failed["error"].to_list())
    assert any("failed calls" in p for p in verify_cache(kept))


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("['A']", ("A", None)),
        ("['line one', 'line two']", ("line one\nline two", None)),
        ("('x',)", ("x", None)),
        ("'plain'", ("plain", None)),
        ("", (None, MISSING_EMPTY)),
        (None, (None, MISSING_EMPTY)),
        ("[' ']", (None, MISSING_EMPTY)),
        ("[]", (None, MISSING_EMPTY)),
        ("[1, 2]", (None, MISSING_MALFORMED)),
        ("[['nested']]", (None, MISSING_MALFORMED)),
        ("['unterminated", (None, MISSING_MALFORMED)),
        ("B", (None, MISSING_MALFORMED)),
        ("[" * 100_000 + "]" * 100_000, (None, MISSING_MALFORMED)),
    ],
)
def test_parse_listed_text(cell: str | None, expected: tuple) -> None:
    assert parse_listed_text(cell) == expected


def test_repeated_sample_ids_merge_per_model(tmp_path: Path) -> None:
    train = wide_csv(
        tmp_path / "toy_train.csv",
        [
            {"sample_id": "a", "m1": (None, "['x']", 0.5)},  # only org/m2 scored here
            {"sample_id": "b"},
        ],
    )
    test = wide_csv(
        tmp_path / "toy_test.csv",
        [
            {
                "sample_id": "a",
                "prompt": "['What is 2+2?', 'What is 2+2?']",
                "m1": (0.0, "['5']", 0.003),
                "org/m2": (None, "['4']", 0.1),
            },
        ],
    )
    answers = read_routerbench([train, test])
    assert answers.notes["merged_rows"] == 1 and answers.notes["merged_across_files"] == 1
    q = answers.questions.filter(pl.col("question_id") == "toy-a").row(0, named=True)
    assert (
        q["split"] == "train" and q["question"] == "What is 2+2?"
    )  # from the row with most scores (tie: first)
    cell = answers.cells.filter((pl.col("question_id") == "toy-a") & (pl.col("model") == "m1")).row(
        0, named=True
    )
    assert cell["answer"] == "5" and cell["score"] == 0.0 and cell["cost_usd"] == 0.003

    both = wide_csv(tmp_path / "both_train.csv", [{"sample_id": "a"}, {"sample_id": "a"}])
    with pytest.raises(
        DatasetError, match=r"both_train.csv: row 1 and .*both_train.csv row 2 both score model"
    ):
        read_routerbench([both])


def test_routerbench_errors_name_file_row_and_column(tmp_path: Path) -> None:
    out = str(tmp_path / "c")
    good = wide_csv(tmp_path / "toy_train.csv", [{"sample_id": "a"}, {"sample_id": "b"}])
    no_prompt = tmp_path / "np_train.csv"
    pl.read_csv(good).drop("prompt").write_csv(no_prompt)
    assert "np_train.csv: column 'prompt' not found (columns: sample_id" in error_line(
        "routerbench", str(no_prompt), "--out", out
    )
    no_cost = tmp_path / "nc_train.csv"
    pl.read_csv(good).drop("m1|total_cost").write_csv(no_cost)
    assert "nc_train.csv: column 'm1|total_cost' not found" in error_line(
        "routerbench", str(no_cost), "--out", out
    )

    half = wide_csv(
        tmp_path / "half_train.csv",
        [{"sample_id": "a"}, {"sample_id": "b", "org/m2": (0.5, "['4']", 0)}],
    )
    assert "half_train.csv: row 2, column 'org/m2': '0.5' is not a score of 0 or 1" in error_line(
        "routerbench", str(half), "--out", out
    )
    text_cost = wide_csv(
        tmp_path / "tc_train.csv", [{"sample_id": "a", "m1": (1.0, "['4']", "cheap")}]
    )
    assert "tc_train.csv: row 1, column 'm1|total_cost': 'cheap' is not a cost" in error_line(
        "routerbench", str(text_cost), "--out", out
    )

    other = wide_csv(tmp_path / "toy_test.csv", [{"sample_id": "c"}], models=("m1", "m3"))
    line = error_line("routerbench", str(good), str(other), "--out", out)
    assert "toy_test.csv: has model 'm3' that" in line and "toy_train.csv does not have" in line
    unsplit = wide_csv(tmp_path / "toy.csv", [{"sample_id": "a"}])
    assert "toy.csv: cannot tell the split from the file name" in error_line(
        "routerbench", str(unsplit), "--out", out
    )
    report = import_ok(
        "routerbench", str(unsplit), "--out", out, "--embedding", "hashing", "--test-fraction", "0"
    )
    assert report["questions"] == {"train": 1, "test": 0}


# ------------------------------------------------------------------------------------ long format


def long_frame() -> pl.DataFrame:
    """5 questions x 3 models, one row per answer; q5 lacks model c's row."""
    rows = []
    for q in range(1, 6):
        for m, model in enumerate(("a", "b", "c")):
            if q == 5 and model == "c":
                continue
            rows.append(
                {
                    "qid": f"q{q}",
                    "text": f"Question {q}?",
                    "llm": model,
                    "out": f"answer {q}{model}",
                    "grade": ((q + m) % 3) / 2,
                    "usd": 0.001 * (m + 1),
                    "ptok": 10 + q,
                    "ctok": m,
                    "ref": f"ref {q} || alt {q}",
                    "part": "test" if q == 2 else "train",
                }
            )
    return pl.DataFrame(rows)


COLUMN_ARGS = [
    "--question-id",
    "qid",
    "--question",
    "text",
    "--model",
    "llm",
    "--answer",
    "out",
    "--score",
    "grade",
]


def write_long(frame: pl.DataFrame, path: Path) -> Path:
    {".jsonl": frame.write_ndjson, ".csv": frame.write_csv, ".parquet": frame.write_parquet}[
        path.suffix
    ](path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_long_round_trip(tmp_path: Path, suffix: str) -> None:
    frame = long_frame()
    path = write_long(frame, tmp_path / f"answers{suffix}")
    out = tmp_path / "c"
    report = import_ok(
        "long",
        str(path),
        "--out",
        str(out),
        *COLUMN_ARGS,
        "--reference",
        "ref",
        "--cost",
        "usd",
        "--prompt-tokens",
        "ptok",
        "--completion-tokens",
        "ctok",
        "--split",
        "part",
        "--embedding",
        "hashing",
        "--dim",
        "32",
        "--score-name",
        "token_f1",
        "--params-b",
        "b=7",
    )
    assert verify_cache(out) == []
    assert report["questions"] == {"train": 3, "test": 1} and report["dropped_incomplete"] == 1
    cache = open_cache(out)
    assert cache.expert_names == ["a", "b", "c"]
    assert [e["params_b"] for e in cache.manifest["experts"]] == [None, 7, None]
    q1 = cache.questions.row(0, named=True)
    assert (
        q1["question_id"] == "q1"
        and q1["reference"] == "ref 1"
        and q1["references"] == ["ref 1", "alt 1"]
    )
    joined = transitions_with_scores(out).join(
        frame, left_on=["question_id", "model"], right_on=["qid", "llm"]
    )
    assert joined.height == 12
    assert np.allclose(joined["token_f1"], joined["grade"]) and np.allclose(
        joined["cost_usd"], joined["usd"]
    )
    assert (joined["prompt_tokens"] == joined["ptok"]).all() and (
        joined["completion_tokens"] == joined["ctok"]
    ).all()
    assert (joined["answer"] == joined["out"]).all()

    kept = tmp_path / "kept"
    report = import_ok(
        "long",
        str(path),
        "--out",
        str(kept),
        *COLUMN_ARGS,
        "--embedding",
        "hashing",
        "--no-drop-incomplete",
        "--test-fraction",
        "0.4",
        "--seed",
        "1",
        "--max-calls",
        "1",
    )
    assert report["questions"] == {"train": 3, "test": 2} and report["failed"] == 1
    assert report["missing_cells"] == {"no row for this question and model": 1}
    assert any("1 failed calls" in p for p in verify_cache(kept))


def test_random_split_is_seeded_and_order_free() -> None:
    ids = [f"q{i}" for i in range(20)]
    first = random_split(ids, 0.25, seed=3)
    assert first == random_split(list(reversed(ids)), 0.25, seed=3)
    assert sum(v == "test" for v in first.values()) == 5
    assert first != random_split(ids, 0.25, seed=4)


def long_error(tmp_path: Path, frame: pl.DataFrame, *extra: str, suffix: str = ".csv") -> str:
    path = write_long(frame, tmp_path / f"bad{suffix}")
    return error_line(
        "long",
        str(path),
        "--out",
        str(tmp_path / "c"),
        *COLUMN_ARGS,
        "--embedding",
        "hashing",
        *extra,
    )


def test_long_errors_are_one_line_naming_file_row_and_column(tmp_path: Path) -> None:
    frame = long_frame()
    line = long_error(tmp_path, frame.drop("grade"))
    assert "bad.csv: column 'grade' (--score) not found (columns: qid, text, llm, out, usd" in line
    line = long_error(
        tmp_path,
        frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 3).then(1.5).otherwise(pl.col("grade")).alias("grade")
        ),
    )
    assert "bad.csv: row 4, column 'grade': '1.5' is not a score in [0, 1]" in line
    line = long_error(
        tmp_path,
        frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 6)
            .then(pl.lit("good"))
            .otherwise(pl.col("grade").cast(pl.String))
            .alias("grade")
        ),
    )
    assert "bad.csv: row 7, column 'grade': 'good' is not a score in [0, 1]" in line
    line = long_error(
        tmp_path,
        frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 6)
            .then(pl.lit("x"))
            .otherwise(pl.col("grade").cast(pl.String))
            .alias("grade")
        ),
        suffix=".jsonl",
    )
    assert "bad.jsonl: row 7, column 'grade': 'x' is not a score in [0, 1]" in line
    mixed = (
        tmp_path / "mixed.jsonl"
    )  # beyond polars' type inference window: the text fallback names the row
    mixed.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                *pl.concat([frame] * 10).to_dicts(),
                {**frame.row(0, named=True), "grade": "bad"},
            ]
        )
    )
    line = error_line("long", str(mixed), "--out", str(tmp_path / "c"), *COLUMN_ARGS)
    assert "mixed.jsonl: row 141, column 'grade': 'bad' is not a score in [0, 1]" in line
    line = long_error(tmp_path, pl.concat([frame, frame.slice(4, 1)]))
    assert (
        "bad.csv: rows 5 and 15: duplicate answer for question 'q2' (column 'qid') and model 'b' "
        "(column 'llm')"
    ) in line
    line = long_error(
        tmp_path,
        frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 1)
            .then(pl.lit("Other?"))
            .otherwise(pl.col("text"))
            .alias("text")
        ),
    )
    assert (
        "bad.csv: question 'q1': rows 1 and 2 give different values in column 'text' (question)"
        in line
    )
    line = long_error(
        tmp_path,
        frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 8)
            .then(pl.lit("dev"))
            .otherwise(pl.col("part"))
            .alias("part")
        ),
        "--split",
        "part",
    )
    assert "bad.csv: row 9, column 'part': split 'dev' is not one of train, test" in line
    line = long_error(
        tmp_path,
        frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 2)
            .then(None)
            .otherwise(pl.col("grade"))
            .alias("grade")
        ),
    )
    assert "bad.csv: row 3, column 'grade': an answer without a score" in line
    line = long_error(tmp_path, frame, "--cost", "text")
    assert "bad.csv: row 1, column 'text': 'Question 1?' is not a cost" in line
    assert "--score-name 'Bad Name'" in long_error(tmp_path, frame, "--score-name", "Bad Name")
    assert "--params-b: model 'zz' is not in" in long_error(tmp_path, frame, "--params-b", "zz=3")


def test_long_read_keeps_empty_answers_as_missing(tmp_path: Path) -> None:
    frame = long_frame().with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit("  "))
        .otherwise(pl.col("out"))
        .alias("out"),
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("grade")).alias("grade"),
    )
    answers = read_long(
        write_long(frame, tmp_path / "a.parquet"),
        LongColumns(question_id="qid", question="text", model="llm", answer="out", score="grade"),
    )
    assert answers.cells.filter(pl.col("answer").is_null())["missing"].to_list() == [MISSING_EMPTY]
    assert answers.notes["rows_without_answer"] == 1
