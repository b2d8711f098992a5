"""Evaluating a training run: greedy policies and baselines on held-out questions.

Scores are reported x100 with a 95% bootstrap interval over questions (the env's metric, and
BERTScore F1 and the task metric, e.g. yes/no accuracy, when the cache has them); cost is the mean
cost per question in the run's own unit (`dersim.cache.costs`). Every row says whether it read the
reference answer to decide (`uses_reference`: the oracle terminator, the oracle stop, the oracles).
"The best policy" is the deployable policy (learned, judge or none terminator) with the best val
score, never chosen on the evaluation split; baselines use its T_max and route lengths.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from dersim.cache.check import read_checked
from dersim.cache.costs import COST_UNITS
from dersim.cache.files import embedding_matrix, read_manifest
from dersim.cache.routes import RouteTables
from dersim.cache.schema import STATES
from dersim.env.tables import reads_reference, split_roots
from dersim.evaluation.baselines import baselines
from dersim.evaluation.stats import mean_ci
from dersim.trainer.run import GridTrainer
from dersim.trainer.selection import choose_policy

REPORTED_METRICS = (
    "bertscore_f1",
    "accuracy",
    "exact_match",
)  # beside the training metric, when cached


@dataclass(frozen=True)
class Evaluation:
    """A run evaluated on one split: a row per policy, a row per baseline, and what was chosen
    how."""

    policies: pl.DataFrame
    baselines: pl.DataFrame
    metric: str
    metrics: list[str]  # the score columns (x100), the env's metric first
    split: str
    cost_mode: str
    best_policy: (
        int | None
    )  # the deployable policy with the best val score (None: the run has none)
    chosen_on: str  # the split the best policy was chosen on
    judge: (
        dict[str, dict[str, float]] | None
    )  # the judge's accuracy (and the majority class's) per split

    @property
    def cost_unit(self) -> str:
        return COST_UNITS[self.cost_mode]


def score_row(
    name: str,
    kind: str,
    reference: bool,
    final_state: np.ndarray,
    calls: np.ndarray,
    cost: np.ndarray,
    scores: dict[str, np.ndarray],
    actions: np.ndarray | None,
    expert_names: list[str],
    max_calls: int,
) -> dict[str, Any]:
    """Means x100 with their 95% bootstrap intervals, mean cost and calls, route lengths (questions
    per number of calls, 0..max_calls: the same keys in every row), expert shares."""
    row: dict[str, Any] = {"name": name, "kind": kind, "uses_reference": reference}
    for metric, values in scores.items():
        estimate = mean_ci(values[final_state] * 100)
        row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = (
            estimate.mean,
            estimate.low,
            estimate.high,
        )
    cost_estimate = mean_ci(cost)
    row["cost"], row["cost_low"], row["cost_high"] = (
        cost_estimate.mean,
        cost_estimate.low,
        cost_estimate.high,
    )
    row["calls"] = float(calls.mean())
    counts = Counter(calls.tolist())
    row["route_lengths"] = {str(k): int(counts.get(k, 0)) for k in range(max_calls + 1)}
    if actions is not None:
        made = actions[(actions >= 0) & (actions < len(expert_names))]
        used = np.bincount(made, minlength=len(expert_names))
        row["expert_share"] = {
            n: float(c / max(used.sum(), 1)) for n, c in zip(expert_names, used, strict=True)
        }
    return row


def evaluate(trainer: GridTrainer, params: dict, split: str = "test") -> Evaluation:
    """The policies' greedy episodes (parameters `params`, one per policy) on `split`, val and
    train, beside the baselines on `split`."""
    cache, tables = trainer.cache, trainer.tables
    manifest = read_manifest(cache)
    metric = tables.metric
    columns = [
        metric,
        *[m for m in REPORTED_METRICS if m in manifest["metric_columns"] and m != metric],
    ]
    # The tables' load checked the hashes and the embeddings.
    states = read_checked(
        cache, {STATES: columns}, verify_hashes=False, metrics=columns, embeddings=False
    )[1][STATES]
    scores = {m: states[m].to_numpy() for m in columns}
    names = list(tables.expert_names)
    has_val = trainer.val_roots is not None

    def policy_rows(roots: np.ndarray) -> list[dict[str, Any]]:
        result = trainer.greedy(params, trainer.env_params, roots)
        return [
            {
                "policy": index,
                **settings,
                **score_row(
                    f"policy {index}",
                    "policy",
                    reads_reference(trainer.spec, settings["terminator"]),
                    result["final_state"][index],
                    result["calls"][index],
                    result["env_cost"][index],
                    scores,
                    result["actions"][index],
                    names,
                    tables.max_depth,
                ),
                "return": float(result["return"][index].mean()),
            }
            for index, settings in enumerate(trainer.policies)
        ]

    def summary(split_name: str) -> pl.DataFrame:
        roots = split_roots(tables, cache, split_name)[0]
        frame = pl.DataFrame(policy_rows(roots))
        return frame.select(
            "policy",
            *[pl.col(c).alias(f"{split_name}_{c}") for c in (*columns, "cost", "calls", "return")],
        )

    roots = split_roots(tables, cache, split)[0]
    train_roots = split_roots(tables, cache, "train")[0]
    policies = pl.DataFrame(policy_rows(roots)).join(summary("train"), on="policy")
    if has_val:
        policies = policies.join(summary("val"), on="policy")
    policies = policies.sort("policy")
    chosen_on = "val" if has_val else "train"
    best = choose_policy(
        trainer.policies,
        policies[f"{chosen_on}_{metric}"].to_numpy(),
        policies[f"{chosen_on}_cost"].to_numpy(),
        trainer.spec,
    )
    reference = policies.row(best if best is not None else 0, named=True)
    lengths = np.repeat(
        [int(k) for k in reference["route_lengths"]], list(reference["route_lengths"].values())
    )
    route_tables = RouteTables(tables.next_state, cost=tables.cost, score=scores[metric])
    rows = [
        score_row(
            b.name,
            "reference" if b.uses_reference else "baseline",
            b.uses_reference,
            b.outcome.final_state,
            b.outcome.calls,
            b.outcome.cost,
            scores,
            None,
            names,
            tables.max_depth,
        )
        for b in baselines(
            route_tables,
            roots,
            train_roots,
            names,
            int(reference["t_max"]),
            float(reference["p0"]),
            lengths,
        )
    ]
    return Evaluation(
        policies=policies,
        baselines=pl.DataFrame(rows),
        metric=metric,
        metrics=columns,
        split=split,
        cost_mode=tables.spec.cost_mode,
        best_policy=best,
        chosen_on=chosen_on,
        judge=judge_accuracy(trainer, split),
    )


def judge_accuracy(trainer: GridTrainer, split: str) -> dict[str, dict[str, float]] | None:
    """The judge's stop decisions against the reference's on the answer states of val and `split`:
    its accuracy, and the majority class's share (what a constant judge would score)."""
    tables = trainer.tables
    if tables.judge is None:
        return None
    cache_embedding = read_checked(
        trainer.cache, {STATES: ["question_id", "embedding"]}, verify_hashes=False, metrics=[]
    )[1][STATES]
    embedding = embedding_matrix(cache_embedding)
    state_questions = np.asarray(cache_embedding["question_id"].to_numpy(zero_copy_only=False))
    out = {}
    for name in dict.fromkeys(("val", split) if trainer.val_roots is not None else (split,)):
        rows = np.isin(state_questions, split_roots(tables, trainer.cache, name)[1]) & (
            tables.depth > 0
        )
        good = float((tables.score[rows] >= np.float32(tables.judge.p0)).mean())
        out[name] = {
            "accuracy": tables.judge.accuracy(
                embedding[rows], tables.score[rows], trainer.spec.judge_threshold
            ),
            "majority": max(good, 1 - good),
        }
    return out
