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

from dersim.builder.local_models import hub_offline, local_model_path, torch_device
from dersim.builder.sources.question import Question
from dersim.cache.answers import last_number, yes_no
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
# Yes/no accuracy and numeric exact match (answers read by `dersim.cache.answers`)
# ---------------------------------------------------------------------------------------------


def accuracy_yesno(answer: str, label: str) -> float:
    """1.0 if the answer's verdict equals the yes/no `label`, else 0.0 (no verdict counts as
    wrong)."""
    gold = yes_no(label)
    if gold is None:
        raise ValueError(f"label {label!r} is not yes/no")
    return float(yes_no(answer) == gold)


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
def _bertscorer(model: str, layer: int, device: str = "cpu") -> BERTScorer:
    """One BERTScorer per (model, layer, device) and process: loading costs seconds, scoring reuses
    it."""
    path = local_model_path(model)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    n_layers = int(config.get("num_hidden_layers", 0))
    if not 0 < layer <= n_layers:
        raise BackendError(
            f"[metrics].bertscore_layer = {layer} but model '{model}' has {n_layers} layers"
        )
    hub_offline()
    from bert_score import BERTScorer

    scorer = BERTScorer(
        model_type=str(path),
        num_layers=layer,
        device=device,
        idf=False,
        rescale_with_baseline=False,
    )
    # bert-score truncates every text to the tokenizer's model_max_length; a folder whose tokenizer
    # config omits it would report ~1e30 and crash on long texts, so cap it at the position table.
    tokenizer = scorer._tokenizer
    positions = int(config.get("max_position_embeddings", 512))
    tokenizer.model_max_length = min(tokenizer.model_max_length, positions)
    return scorer


class PairScorer:
    """BERTScore (precision, recall, F1) of (answer, reference) pairs, as the rows of an
    `Embedder`: the embedding store then keeps the first value computed for each pair, like an
    embedding, so a resumed, extended or re-run build reads back exactly those bits.

    Texts run through the model in batches of up to `[metrics].batch_size` texts of equal token
    length: nothing is padded. (bert-score's own batches pad, and a padded batch moves scores by up
    to 2.6e-3 on cache/strategyqa, depending on which texts share it.) An unpadded batch differs
    from one text at a time only in float32 rounding (at most 1.8e-7 measured), and not at all
    with `batch_size = 1`. The greedy matching runs pair by pair, as bert-score's does with batch
    size 1; the model is in eval mode (no dropout).
    """

    dim = 3

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.device = torch_device(spec.device)
        self.scorer = _bertscorer(spec.bertscore_model, spec.bertscore_layer, self.device)

    @staticmethod
    def pair_text(answer: str, reference: str) -> str:
        """One string per pair (length-prefixed, so no separator can be ambiguous): the store's
        key."""
        return f"{len(answer)}:{answer}{reference}"

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), 3]: (P, R, F1) of each `pair_text`, unclipped."""
        import torch
        from bert_score.utils import greedy_cos_idf

        pairs = []
        for text in texts:
            length, rest = text.split(":", 1)
            pairs.append((rest[: int(length)], rest[int(length) :]))
        tokens, hidden = self._forward(list(dict.fromkeys(t for pair in pairs for t in pair)))
        tokenizer = self.scorer._tokenizer
        special = {tokenizer.sep_token_id, tokenizer.cls_token_id}
        # Per text once: (embedding, mask, weights), idf-free (the special tokens weigh 0).
        sides = {
            text: (
                states[None],
                torch.ones(1, len(tokens[text]), dtype=torch.bool, device=self.device),
                torch.tensor(
                    [[0.0 if t in special else 1.0 for t in tokens[text]]],
                    dtype=torch.float32,
                    device=self.device,
                ),
            )
            for text, states in hidden.items()
        }
        out = np.zeros((len(pairs), 3), dtype=np.float32)
        with torch.no_grad():
            for row, (answer, reference) in enumerate(pairs):
                # greedy_cos_idf normalises the embeddings and weights in place: give it copies.
                ref, hyp = sides[reference], sides[answer]
                p, r, f = greedy_cos_idf(
                    ref[0].clone(),
                    ref[1],
                    ref[2].clone(),
                    hyp[0].clone(),
                    hyp[1],
                    hyp[2].clone(),
                    False,
                )
                out[row] = [p.item(), r.item(), f.item()]
        return out

    def _forward(self, texts: list[str]) -> tuple[dict[str, list[int]], dict[str, Any]]:
        """Each text's token ids (bert-score's encoding and truncation) and its hidden states at
        the scoring layer, computed in batches of equal token length."""
        import torch
        from bert_score.utils import bert_encode, sent_encode

        tokens = {t: sent_encode(self.scorer._tokenizer, t) for t in texts}
        by_length: dict[int, list[str]] = {}
        for text in texts:
            by_length.setdefault(len(tokens[text]), []).append(text)
        hidden: dict[str, Any] = {}
        for members in by_length.values():
            for start in range(0, len(members), self.spec.batch_size):
                batch = members[start : start + self.spec.batch_size]
                ids = torch.tensor([tokens[t] for t in batch], dtype=torch.long, device=self.device)
                states = bert_encode(self.scorer._model, ids, torch.ones_like(ids))
                hidden.update(zip(batch, states, strict=True))
        return tokens, hidden

    def describe(self) -> dict[str, Any]:
        """What the scores depend on: model, layer, settings, library versions (the store folder is
        named by it; the device and batch size only move float32 rounding)."""
        return {
            "kind": "bertscore",
            "model": self.spec.bertscore_model,
            "path": str(local_model_path(self.spec.bertscore_model)),
            "num_layers": self.spec.bertscore_layer,
            "idf": False,
            "rescale_with_baseline": False,
            "max_tokens": self.scorer._tokenizer.model_max_length,
            "bert_score_version": version("bert-score"),
            "transformers_version": version("transformers"),
            "torch_version": version("torch"),
        }


def _bertscore(
    answers: list[str], references: list[str], spec: MetricSpec, show_progress: bool
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 columns through `PairScorer` and the store; pairs with an empty
    side score 0 without running the model."""
    from dersim.builder.embedding_store import EmbeddingStore, embed_texts

    out = {name: np.zeros(len(answers), dtype=np.float32) for name in BERTSCORE_COLUMNS}
    todo = [
        i
        for i, (a, r) in enumerate(zip(answers, references, strict=True))
        if a.strip() and r.strip()
    ]
    if todo:
        scorer = PairScorer(spec)
        rows = embed_texts(
            scorer,
            [scorer.pair_text(answers[i].strip(), references[i].strip()) for i in todo],
            store=EmbeddingStore(scorer),
            label="bertscore",
            show_progress=show_progress,
        )
        for column, name in enumerate(BERTSCORE_COLUMNS):
            # Clipped: an answer equal to a short reference scores 1.0000001 in float32, and a
            # cosine can in principle be negative; caches hold every metric in [0, 1].
            out[name][todo] = np.clip(rows[:, column], 0.0, 1.0)
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
    answers: list[str], questions: list[Question], spec: MetricSpec, show_progress: bool = False
) -> dict[str, np.ndarray]:
    """One float32 column per metric of `spec.names` for answers[i] against questions[i] (with a
    progress line for BERTScore when `show_progress`)."""
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
            references = [q.reference for q in questions]
            columns.update(_bertscore(answers, references, spec, show_progress))
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
            entry = {
                "description": (
                    "BERTScore of the answer against question.reference, clipped to [0, 1]; 0 for "
                    "an empty answer"
                ),
                **{k: v for k, v in PairScorer(spec).describe().items() if k != "kind"},
            }
        else:
            entry = described[name]
        manifest[name] = {"columns": metric_columns(MetricSpec(names=(name,))), **entry}
    return manifest
