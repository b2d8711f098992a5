"""Question sources (BIG-bench and generic tables) and the deterministic train/test split."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from dersim.builder.sources import load_questions, split_sizes
from dersim.builder.sources.bigbench import read_bigbench
from dersim.builder.sources.table import read_table
from dersim.errors import DatasetError
from dersim.recipe import DatasetSpec

from conftest import SHARED_DATA, STRATEGYQA


def test_strategyqa_questions_have_free_text_references_and_yes_no_labels() -> None:
    questions = read_bigbench(STRATEGYQA, "strategyqa")
    assert len(questions) == 2290
    first = questions[0]
    assert first.question_id == "strategyqa-00000"
    assert first.text.startswith("Is it common to see frost")
    assert first.reference.startswith("Yes. College commencement")
    assert {q.label for q in questions} == {"yes", "no"}


def test_math_and_wikidata_references() -> None:
    math = read_bigbench(
        SHARED_DATA / "bigbench" / "elementary_math_qa" / "task.json", "elementary_math_qa"
    )
    assert math[0].label == "270" and math[0].reference == "The answer is 270."
    wiki = read_bigbench(SHARED_DATA / "bigbench" / "qa_wikidata" / "task.json", "qa_wikidata")
    assert wiki[0].references == ("comedy", "parody")


def test_split_is_deterministic_disjoint_and_limit_takes_subsets() -> None:
    spec = DatasetSpec("bigbench", STRATEGYQA, "strategyqa", train=20, test=10, seed=7)
    a, b = load_questions(spec), load_questions(spec)
    assert [q.question_id for q in a] == [q.question_id for q in b]
    train = {q.question_id for q in a if q.split == "train"}
    test = {q.question_id for q in a if q.split == "test"}
    assert len(train) == 20 and len(test) == 10 and not train & test
    limited = load_questions(spec, limit=6)
    assert {q.question_id for q in limited if q.split == "train"} <= train
    assert {q.question_id for q in limited if q.split == "test"} <= test
    other = load_questions(
        DatasetSpec("bigbench", STRATEGYQA, "strategyqa", train=20, test=10, seed=8)
    )
    assert [q.question_id for q in other] != [q.question_id for q in a]


@pytest.mark.parametrize(
    ("train", "test", "limit", "expected"),
    [
        (200, 100, None, (200, 100)),
        (200, 100, 2, (1, 1)),
        (200, 100, 3, (2, 1)),
        (200, 100, 1, (1, 0)),
        (10, 0, 4, (4, 0)),
        (0, 10, 4, (0, 4)),
        (200, 100, 500, (200, 100)),
    ],
)
def test_split_sizes(train: int, test: int, limit: int | None, expected: tuple[int, int]) -> None:
    assert split_sizes(train, test, limit) == expected


def test_asking_for_more_questions_than_the_file_has(tmp_path: Path) -> None:
    spec = DatasetSpec("bigbench", STRATEGYQA, "strategyqa", train=3000, test=10)
    with pytest.raises(DatasetError, match="asks for 3000 train"):
        load_questions(spec)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_table_sources_with_column_mapping(tmp_path: Path, suffix: str) -> None:
    frame = pl.DataFrame(
        {
            "qid": ["a", "b"],
            "q": ["What is 2+2?", "Capital of France?"],
            "ans": ["4", "Paris || paris, France"],
            "y": ["4", "paris"],
        }
    )
    path = tmp_path / f"data{suffix}"
    {".jsonl": frame.write_ndjson, ".csv": frame.write_csv, ".parquet": frame.write_parquet}[
        suffix
    ](path)
    questions = read_table(path, {"id": "qid", "question": "q", "reference": "ans", "label": "y"})
    assert [q.question_id for q in questions] == ["a", "b"]
    assert questions[1].references == ("Paris", "paris, France")
    assert questions[1].reference == "Paris"


def test_table_errors_name_file_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"q": "fine"}\n{"q": "  "}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad\.jsonl: row 2: empty question in column 'q'"):
        read_table(path, {"question": "q"})
    with pytest.raises(DatasetError, match=r"column 'question' not found \(columns: q\)"):
        read_table(path, {"question": "question"})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"q": "fine"}\n{"q": \n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken\.jsonl: cannot read"):
        read_table(broken, {"question": "q"})
    with pytest.raises(DatasetError, match="unsupported file type '.txt'"):
        read_table(tmp_path / "x.txt", {"question": "q"})
    dup = tmp_path / "dup.csv"
    dup.write_text("id,q\n1,a\n1,b\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="duplicate ids"):
        read_table(dup, {"id": "id", "question": "q"})


def test_malformed_bigbench_example_names_its_index(tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    examples = [
        {"input": "ok?", "target": "Yes.", "target_scores": {"Yes": 1, "No": 0}},
        {"input": "no target?", "target_scores": {"Yes": 1, "No": 0}},
    ]
    path.write_text(json.dumps({"examples": examples}), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"task\.json: example 1: missing text 'target'"):
        read_bigbench(path, "strategyqa")
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_bigbench(path, "strategyqa")
