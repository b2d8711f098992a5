"""The wide importer: RouterBench, RouteLLM eval caches and correctness matrices as caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from dersim.cache.reader import open_cache
from dersim.cache.verify import verify_cache
from dersim.cli import main
from dersim.errors import DatasetError
from dersim.importers.routerbench import read_routerbench
from dersim.importers.wide import PRESETS, WideColumns, read_wide

from conftest import SHARED_DATA

ROUTERBENCH = [
    SHARED_DATA / "routerbench" / "mbpp_train.csv",
    SHARED_DATA / "routerbench" / "mbpp_test.csv",
]


def in_question_order(cells: pl.DataFrame, questions: pl.DataFrame) -> pl.DataFrame:
    order = questions.select("question_id", pl.int_range(pl.len()).alias("order"))
    return cells.join(order, on="question_id").sort("order", "model").drop("question_id", "order")


def test_routerbench_preset_reads_what_the_routerbench_importer_reads() -> None:
    expected = read_routerbench(ROUTERBENCH, strip_shared_prefix=True)
    got = read_wide(ROUTERBENCH, PRESETS["routerbench"], strip_shared_prefix=True)
    assert [e.name for e in got.experts] == [e.name for e in expected.experts]
    assert got.questions["question"].to_list() == expected.questions["question"].to_list()
    assert got.questions["split"].to_list() == expected.questions["split"].to_list()
    assert in_question_order(got.cells, got.questions).equals(
        in_question_order(expected.cells, expected.questions)
    )
    assert got.settings["split"] == "file name"


def write_routellm(path: Path) -> None:
    """A RouteLLM eval cache: prompt, a boolean correctness column and a response column per
    model."""
    pl.DataFrame(
        {
            "prompt": [f"What is {i} + {i}?" for i in range(12)],
            "gpt-4-1106-preview": [True] * 10 + [False, True],
            "gpt-4-1106-preview_response": [f"{2 * i}" for i in range(12)],
            "mixtral-8x7b-instruct-v0.1": [i % 2 == 0 for i in range(12)],
            "mixtral-8x7b-instruct-v0.1_response": [f"maybe {i}" for i in range(11)] + [""],
        }
    ).write_csv(path)


def test_routellm_eval_cache_becomes_a_cache(tmp_path: Path) -> None:
    write_routellm(tmp_path / "gsm8k.csv")
    result = CliRunner().invoke(
        main,
        [
            "cache",
            "import",
            "wide",
            str(tmp_path / "gsm8k.csv"),
            "--preset",
            "routellm",
            "--out",
            str(tmp_path / "cache"),
            "--embedding",
            "hashing",
            "--dim",
            "16",
            "--max-calls",
            "1",
            "--test-fraction",
            "0.25",
            "--json",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # The last question lacks mixtral's answer (an empty response): it is dropped.
    assert report["experts"] == 2 and report["dropped_incomplete"] == 1
    assert report["questions"] == {"train": 8, "test": 3}
    assert verify_cache(tmp_path / "cache") == []
    cache = open_cache(tmp_path / "cache")
    assert cache.expert_names == ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    assert set(cache.questions["question_id"]) == {
        f"gsm8k-{row}" for row in range(1, 12)
    }  # no id column: rows
    first = cache.questions.filter(pl.col("question_id") == "gsm8k-2")["root_state_id"][
        0
    ]  # "What is 1 + 1?"
    answers = cache.states.filter(pl.col("state_id").is_between(first + 1, first + 2)).sort(
        "state_id"
    )
    assert answers["accuracy"].to_list() == [1.0, 0.0] and answers["answer"].to_list() == [
        "2",
        "maybe 1",
    ]


def test_a_correctness_matrix_without_answers_or_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = pl.DataFrame(
        {
            "prompt": [f"question {i}" for i in range(20)],
            "split": ["test" if i < 5 else "train" for i in range(20)],
            **{f"model_{m}": (rng.random(20) < 0.5).astype(np.int64) for m in range(3)},
        }
    )
    matrix.write_parquet(tmp_path / "matrix.parquet")
    answers = read_wide([tmp_path / "matrix.parquet"], WideColumns(split="split"))
    assert [e.name for e in answers.experts] == ["model_0", "model_1", "model_2"]
    assert answers.questions["question_id"].to_list()[:2] == ["matrix-1", "matrix-2"]
    assert answers.questions["split"].to_list()[:6] == ["test"] * 5 + ["train"]
    scores = answers.cells.sort("question_id", "model").filter(pl.col("question_id") == "matrix-1")[
        "score"
    ]
    assert scores.to_list() == [float(matrix[f"model_{m}"][0]) for m in range(3)]
    assert answers.cells["answer"].str.contains("model_").all()  # placeholders name the model


def test_identical_question_texts_stay_in_one_split(tmp_path: Path) -> None:
    """A source that repeats a question (in its train and test files, or twice under a random split)
    must not put the same text in train and test: that would report on a question trained on."""
    texts = [f"question {i % 10}" for i in range(20)]  # every text twice
    pl.DataFrame(
        {"prompt": texts, "model_a": [i % 2 for i in range(20)], "model_b": [1] * 20}
    ).write_csv(tmp_path / "repeats.csv")
    result = CliRunner().invoke(
        main,
        [
            "cache",
            "import",
            "wide",
            str(tmp_path / "repeats.csv"),
            "--out",
            str(tmp_path / "cache"),
            "--embedding",
            "hashing",
            "--dim",
            "16",
            "--max-calls",
            "1",
            "--test-fraction",
            "0.3",
            "--json",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    questions = open_cache(tmp_path / "cache").questions
    splits = questions.group_by("question").agg(pl.col("split").n_unique().alias("n"))
    assert splits["n"].max() == 1 and set(questions["split"]) == {"train", "test"}
    moved = json.loads(result.output)["notes"].get("train_questions_moved_to_test", 0)
    assert moved > 0


def test_routerbench_mbpp_prompts_shared_by_its_train_and_test_files_are_test_questions(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "cache",
            "import",
            "routerbench",
            *map(str, ROUTERBENCH),
            "--out",
            str(tmp_path / "cache"),
            "--embedding",
            "hashing",
            "--dim",
            "16",
            "--max-calls",
            "1",
            "--json",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    questions = open_cache(tmp_path / "cache").questions
    assert questions.group_by("question").agg(pl.col("split").n_unique())["split"].max() == 1
    assert json.loads(result.output)["notes"]["train_questions_moved_to_test"] == 2


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (WideColumns(answer="response"), "must contain {model} exactly once"),
        (WideColumns(question="text"), "column 'text' (--question) not found"),
        (
            WideColumns(models=("gpt-4-1106-preview", "claude")),
            "column 'claude' not found (model 'claude')",
        ),
        (WideColumns(answer="{model}_answer"), "no model columns found"),
    ],
)
def test_column_problems_are_one_line_errors(
    tmp_path: Path, columns: WideColumns, message: str
) -> None:
    write_routellm(tmp_path / "evals.csv")
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_wide([tmp_path / "evals.csv"], columns)


def test_a_bad_score_names_the_file_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("prompt,a,a_response\nq1,1,x\nq2,1.5,y\n", encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"bad.csv: row 2, column 'a': '1.5' is not a score in \[0, 1\]"
    ):
        read_wide([tmp_path / "bad.csv"], PRESETS["routellm"])
