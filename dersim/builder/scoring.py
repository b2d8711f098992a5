"""Quality metrics of an answer against its question's references: the P in DER's reward.

Every state of the cache gets one float32 column per metric. The text metrics are pure functions;
BERTScore runs a local transformer (see `local_models`) with an explicit layer, no IDF and no
baseline rescaling, so its values depend only on the model files, the layer and the two texts.
The root state (empty answer) scores 0 on every metric: no answer yet, no quality.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import numpy as np

from dersim.builder.local_models import hub_offline, local_model_path
from dersim.builder.sources.question import Question
from dersim.errors import BackendError, DatasetError
from dersim.recipe import MetricSpec

if TYPE_CHECKING:
    from bert_score import BERTScorer

# ---------------------------------------------------------------------------------------------
# Text normalisation (SQuAD v1.1 evaluation script)
# ---------------------------------------------------------------------------------------------

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lower case, drop punctuation and articles, split on whitespace."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


# ---------------------------------------------------------------------------------------------
# Yes/no accuracy
# ---------------------------------------------------------------------------------------------

# "The answer is: **Yes**", "Answer: no" — an explicit verdict wins over an earlier stray yes/no.
_VERDICT = re.compile(r"\banswer\s*(?:is|would be|:)\s*[:\-\s*_\"'`]*\b(yes|no)\b", re.IGNORECASE)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def yes_no(text: str) -> str | None:
    """The verdict of `text`: its explicit "answer is yes/no", else its first yes/no word, else
    None."""
    match = _VERDICT.search(text) or _YES_NO.search(text)
    return match.group(1).lower() if match else None


def accuracy_yesno(answer: str, label: str) -> float:
    """1.0 if the answer's verdict equals the yes/no `label`, else 0.0 (no verdict counts as
    wrong)."""
    gold = yes_no(label)
    if gold is None:
        raise ValueError(f"label {label!r} is not yes/no")
    return float(yes_no(answer) == gold)


# ---------------------------------------------------------------------------------------------
# Numeric exact match
# ---------------------------------------------------------------------------------------------

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# A number, optionally signed (a minus not glued to a preceding word or digit: "5-3" is 5 and 3),
# optionally a fraction or ratio "2 / 3", "1 : 4" (elementary_math_qa writes labels that way).
_NUMBER = re.compile(
    rf"(?:(?<![\w)])(?P<sign>[-\u2212]))?(?P<a>{_UNSIGNED})(?:\s*[/:]\s*(?P<b>{_UNSIGNED}))?"
)


def last_number(text: str) -> float | None:
    """The value of the last number in `text` ("1,000", "-2.5", "40 %" -> 40, "2 / 3" -> 0.667)."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    match = matches[-1]
    value = float(match["a"].replace(",", ""))
    if match["b"] is not None:
        denominator = float(match["b"].replace(",", ""))
        if denominator == 0.0:
            return None
        value /= denominator
    return -value if match["sign"] else value


def exact_match_number(answer: str, label: str) -> float:
    """1.0 if the answer's last number equals the label's number (relative tolerance 1e-6), else
    0.0."""
    gold = last_number(label)
    if gold is None:
        raise ValueError(f"label {label!r} has no number")
    value = last_number(answer)
    return float(value is not None and math.isclose(value, gold, rel_tol=1e-6, abs_tol=1e-12))


# ---------------------------------------------------------------------------------------------
# Token F1 and ROUGE-L (best over the accepted references)
# ---------------------------------------------------------------------------------------------


def _f1(overlap: float, n_answer: int, n_reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_answer, overlap / n_reference
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, references: Sequence[str]) -> float:
    """SQuAD token F1 of the normalised answer, best over `references`; no tokens on a side -> 0."""
    tokens = normalize_tokens(answer)
    best = 0.0
    for reference in references:
        gold = normalize_tokens(reference)
        overlap = sum((Counter(tokens) & Counter(gold)).values())
        best = max(best, _f1(overlap, len(tokens), len(gold)))
    return best


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (one-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(answer: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure (beta = 1) on normalised tokens, best over `references`."""
    tokens = normalize_tokens(answer)
    best = 0.0
    for reference in references:
        gold = normalize_tokens(reference)
        best = max(best, _f1(_lcs_length(tokens, gold), len(tokens), len(gold)))
    return best


# ---------------------------------------------------------------------------------------------
# BERTScore
# ---------------------------------------------------------------------------------------------

BERTSCORE_COLUMNS = ("bertscore_p", "bertscore_r", "bertscore_f1")


@cache
def _bertscorer(model: str, layer: int) -> BERTScorer:
    """One BERTScorer per (model, layer) and process: loading costs seconds, scoring reuses it."""
    path = local_model_path(model)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    n_layers = int(config.get("num_hidden_layers", 0))
    if not 0 < layer <= n_layers:
        raise BackendError(
            f"[metrics].bertscore_layer = {layer} but model '{model}' has {n_layers} layers"
        )
    hub_offline()
    from bert_score import BERTScorer

    # The batch size is given to each score() call (bert-score ignores the constructor's).
    scorer = BERTScorer(
        model_type=str(path), num_layers=layer, device="cpu", idf=False, rescale_with_baseline=False
    )
    # bert-score truncates every text to the tokenizer's model_max_length; a folder whose tokenizer
    # config omits it would report ~1e30 and crash on long texts, so cap it at the position table.
    tokenizer = scorer._tokenizer
    positions = int(config.get("max_position_embeddings", 512))
    tokenizer.model_max_length = min(tokenizer.model_max_length, positions)
    return scorer


def _bertscore(
    answers: list[str], references: list[str], spec: MetricSpec
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 columns; pairs with an empty side score 0 without running the model.

    bert-score embeds the distinct texts of a call once (so scoring all states of a question
    together embeds its reference once), one text per forward pass. Batches would pad texts to
    a common length, and a padded batch shifts scores (by up to 0.004 on cache/strategyqa)
    depending on which texts share it; bert-score groups texts in `set` order, which changes
    from process to process, so batched scores would make caches irreproducible. The model is in
    eval mode (no dropout): equal inputs give equal scores.
    """
    out = {name: np.zeros(len(answers), dtype=np.float32) for name in BERTSCORE_COLUMNS}
    todo = [
        i
        for i, (a, r) in enumerate(zip(answers, references, strict=True))
        if a.strip() and r.strip()
    ]
    if todo:
        scorer = _bertscorer(spec.bertscore_model, spec.bertscore_layer)
        p, r, f = scorer.score(
            [answers[i] for i in todo], [references[i] for i in todo], batch_size=1
        )
        for name, values in zip(BERTSCORE_COLUMNS, (p, r, f), strict=True):
            # Clipped: an answer equal to a short reference scores 1.0000001 in float32, and a
            # cosine can in principle be negative; caches hold every metric in [0, 1].
            out[name][todo] = np.clip(values.numpy(), 0.0, 1.0)
    return out


# ---------------------------------------------------------------------------------------------
# All metrics of a batch of states
# ---------------------------------------------------------------------------------------------

# metric name -> (column, function of (answer, question))
_TEXT_METRICS: dict[str, tuple[str, Callable[[str, Question], float]]] = {
    "accuracy_yesno": ("accuracy", lambda a, q: accuracy_yesno(a, q.label)),
    "exact_match_number": ("exact_match", lambda a, q: exact_match_number(a, q.label)),
    "token_f1": ("token_f1", lambda a, q: token_f1(a, q.references)),
    "rouge_l": ("rouge_l", lambda a, q: rouge_l(a, q.references)),
}
_LABEL_CHECKS: dict[str, tuple[Callable[[str], object], str]] = {
    "accuracy_yesno": (yes_no, "a yes/no label"),
    "exact_match_number": (last_number, "a numeric label"),
}


def metric_columns(spec: MetricSpec) -> list[str]:
    """The state-table columns that `spec` produces, in order."""
    return [
        c
        for name in spec.names
        for c in (BERTSCORE_COLUMNS if name == "bertscore" else (_TEXT_METRICS[name][0],))
    ]


def score_answers(
    answers: list[str], questions: list[Question], spec: MetricSpec
) -> dict[str, np.ndarray]:
    """One float32 column per metric of `spec.names` for answers[i] against questions[i]."""
    if len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    unknown = [n for n in spec.names if n != "bertscore" and n not in _TEXT_METRICS]
    if unknown:
        raise BackendError(f"[metrics].names: unknown metric '{unknown[0]}'")
    for name, (check, what) in _LABEL_CHECKS.items():
        if name in spec.names:
            bad = next((q for q in questions if check(q.label) is None), None)
            if bad is not None:
                raise DatasetError(
                    f"question '{bad.question_id}': metric {name} needs {what}, got {bad.label!r}"
                )
    columns: dict[str, np.ndarray] = {}
    for name in spec.names:
        if name == "bertscore":
            columns.update(_bertscore(answers, [q.reference for q in questions], spec))
            continue
        column, metric = _TEXT_METRICS[name]
        values = [
            metric(a, q) if a.strip() else 0.0 for a, q in zip(answers, questions, strict=True)
        ]
        columns[column] = np.array(values, dtype=np.float32)
    return columns


def metric_manifest(spec: MetricSpec) -> dict[str, Any]:
    """How each metric of `spec` is defined, for the cache manifest (loads the BERTScore model)."""
    text = "SQuAD-normalised tokens (lower case, no punctuation, no articles), best over references"
    described: dict[str, dict[str, Any]] = {
        "accuracy_yesno": {
            "description": "1 if the explicit 'answer is yes/no', else the first yes/no "
            "word, equals the label"
        },
        "exact_match_number": {
            "description": "1 if the last number (commas, decimals, sign, %, a / b "
            "and a : b as ratios) equals the label's, rel. tol. 1e-6"
        },
        "token_f1": {"description": f"token F1 on {text}"},
        "rouge_l": {"description": f"ROUGE-L F-measure (LCS, beta 1) on {text}"},
    }
    manifest: dict[str, Any] = {}
    for name in spec.names:
        if name == "bertscore":
            scorer = _bertscorer(spec.bertscore_model, spec.bertscore_layer)
            entry = {
                "description": (
                    "BERTScore of the answer against question.reference, clipped to [0, 1]; 0 for "
                    "an empty answer"
                ),
                "model": spec.bertscore_model,
                "path": str(local_model_path(spec.bertscore_model)),
                "num_layers": spec.bertscore_layer,
                "idf": False,
                "rescale_with_baseline": False,
                "max_tokens": scorer._tokenizer.model_max_length,
                "bert_score_version": version("bert-score"),
                "transformers_version": version("transformers"),
                "torch_version": version("torch"),
            }
        else:
            entry = described[name]
        manifest[name] = {"columns": metric_columns(MetricSpec(names=(name,))), **entry}
    return manifest
