"""Sampled caches: what the k samples of a call hold, and each sampled expert's sampling baselines.

For each expert with k > 1 samples, over its first call on each question (the root states):
- `distinct_share`: distinct answers among its k samples, over k (1.0: every sample differs);
- `per_sample`: the mean score of one sampled answer (the expectation over the k samples);
- `self_consistency`: the score of the answer a vote over the k samples picks. For the task
  metrics (`accuracy`, `exact_match`) it is the majority of the answers read by
  `dersim.cache.answers` (the yes/no verdict, the final number; samples without one do not vote;
  a tie goes to the answer that came first); for free-text metrics the medoid, the sample with
  the highest mean embedding cosine to all k samples;
- `best_of_k_reference`: the best of the k samples by the metric itself. It reads the reference
  to choose, so it is an oracle, not a deployable baseline.
Each is a mean over questions with a normal 95% interval (clipped to [0, 1]). `sampling_voting`
is the DER paper's sampling-voting baseline: the same vote over the samples of every expert
together (N x k calls).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from dersim.cache.answers import last_number, yes_no
from dersim.cache.files import embedding_matrix
from dersim.cache.reader import Cache
from dersim.cache.schema import SAMPLE, STATUS_OK, expert_samples

# Task metric column -> how its answers are read for a vote (numbers rounded to 6 significant
# digits, so that 2.0 and 2 agree, as exact_match's tolerance does).
VOTED: dict[str, Callable[[str], object]] = {
    "accuracy": yes_no,
    "exact_match": lambda text: None if (n := last_number(text)) is None else float(f"{n:.6g}"),
}


def mean_interval(values: np.ndarray) -> dict[str, float]:
    """The mean of `values` (scores in [0, 1]) and its normal 95% interval (half width
    1.96 sd / sqrt(n)), clipped to [0, 1]."""
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "low": max(mean - half, 0.0), "high": min(mean + half, 1.0)}


def _vote(answers: list[str], read: Callable[[str], object]) -> int:
    """The index of the first sample whose read answer is the most common (0 if none reads)."""
    read_answers = [read(a) for a in answers]
    counts = Counter(a for a in read_answers if a is not None)
    if not counts:
        return 0
    top = max(counts.values())
    return next(i for i, a in enumerate(read_answers) if a is not None and counts[a] == top)


def _medoid(embeddings: np.ndarray) -> int:
    """The index of the sample with the highest mean cosine to all samples (rows unit-norm; the
    first on a tie)."""
    return int(np.argmax((embeddings @ embeddings.T).mean(axis=1)))


def first_call_samples(cache: Cache) -> pl.DataFrame:
    """One row per answered first call of a sampled cache: question, expert, sample, the child
    state, its answer and scores, ordered by (question, expert, sample)."""
    roots = cache.questions.select("question_id", state_id="root_state_id")
    children = cache.states.select(
        pl.col("state_id").alias("next_state_id"),
        "answer",
        *cache.metric_columns,
        child_row=pl.int_range(pl.len()),
    )
    return (
        cache.transitions.filter(pl.col("status") == STATUS_OK)
        .join(roots, on="state_id")
        .join(children, on="next_state_id")
        .sort("question_id", "expert_id", SAMPLE)
    )


def _picks(group: pl.DataFrame, metrics: list[str], embeddings: np.ndarray) -> dict[str, int]:
    """Per metric, the row of `group` (one question's samples) its vote picks: the majority of the
    metric's answer reading, else the medoid (each computed once for the group)."""
    answers = group["answer"].to_list()
    medoid = (
        _medoid(embeddings[group["child_row"].to_numpy()])
        if any(m not in VOTED for m in metrics)
        else 0
    )
    return {m: _vote(answers, VOTED[m]) if m in VOTED else medoid for m in metrics}


def sampling_voting(cache: Cache) -> dict[str, Any]:
    """`calls`: the first calls per question (every expert's samples), and `scores`: per metric
    the mean score (with its 95% interval) of the answer the vote picks among them (see the module
    docstring)."""
    calls = first_call_samples(cache)
    embeddings = embedding_matrix(cache.states.select("embedding").to_arrow())
    picked: dict[str, list[float]] = {m: [] for m in cache.metric_columns}
    for _, group in calls.group_by("question_id", maintain_order=True):
        for m, row in _picks(group, cache.metric_columns, embeddings).items():
            picked[m].append(group[m][row])
    return {
        "calls": sum(expert_samples(cache.manifest)),
        "scores": {m: mean_interval(np.asarray(v)) for m, v in picked.items()},
    }


def sampling_summary(cache: Cache) -> list[dict[str, Any]]:
    """Per sampled expert: k, temperature, distinct share and the three baselines per metric (see
    the module docstring); greedy experts are left out."""
    calls = first_call_samples(cache)
    embeddings = embedding_matrix(cache.states.select("embedding").to_arrow())
    metrics = cache.metric_columns
    out = []
    for index, (spec, k) in enumerate(
        zip(cache.manifest["experts"], expert_samples(cache.manifest), strict=True)
    ):
        if k < 2:
            continue
        distinct, chosen = [], {m: [] for m in metrics}
        per_sample, best = {m: [] for m in metrics}, {m: [] for m in metrics}
        for _, group in calls.filter(pl.col("expert_id") == index).group_by(
            "question_id", maintain_order=True
        ):
            distinct.append(group["next_state_id"].n_unique() / k)
            picks = _picks(group, metrics, embeddings)
            for m in metrics:
                scores = group[m].to_numpy()
                chosen[m].append(scores[picks[m]])
                per_sample[m].append(scores.mean())
                best[m].append(scores.max())
        out.append(
            {
                "name": spec["name"],
                "expert_id": index,
                "samples": k,
                "temperature": spec.get("temperature"),
                "questions": len(distinct),
                "distinct_share": float(np.mean(distinct)) if distinct else math.nan,
                "vote": {m: "majority" if m in VOTED else "medoid" for m in metrics},
                **{
                    name: {m: mean_interval(np.asarray(v[m])) for m in metrics}
                    for name, v in (
                        ("per_sample", per_sample),
                        ("self_consistency", chosen),
                        ("best_of_k_reference", best),
                    )
                },
            }
        )
    return out
