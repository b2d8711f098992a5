"""Evaluating a training run: greedy policies and baselines on held-out questions, tables and plots.

Scores are reported x100 (the env's metric, and BERTScore F1 and the task metric, e.g. yes/no
accuracy, when the cache has them); cost is the mean billions of parameters activated per question.
Baselines use the settings (T_max, p0, terminator) of the policy that scored best on the train
split, which is also how "the best policy" is chosen: never on the evaluation split itself.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from dersim.cache.reader import read_manifest
from dersim.cache.schema import QUESTIONS, STATES
from dersim.evaluation.baselines import Outcome, RouteTables, baseline_outcomes
from dersim.evaluation.greedy import greedy_episodes
from dersim.trainer.ppo import Runner
from dersim.trainer.run import GridTrainer

REPORTED_METRICS = ("bertscore_f1", "accuracy", "exact_match")  # beside the training metric, when cached


def split_roots(cache: Path, split: str) -> np.ndarray:
    questions = pl.read_parquet(cache / QUESTIONS, columns=["split", "root_state_id"])
    chosen = questions if split == "all" else questions.filter(pl.col("split") == split)
    return chosen["root_state_id"].to_numpy().astype(np.int32)


def _row(name: str, kind: str, final_state: np.ndarray, calls: np.ndarray, params_b: np.ndarray,
         scores: dict[str, np.ndarray], actions: np.ndarray | None, expert_names: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "kind": kind}
    for metric, values in scores.items():
        row[metric] = float(values[final_state].mean() * 100)
    row["cost_b"] = float(params_b.mean())
    row["calls"] = float(calls.mean())
    row["route_lengths"] = {str(k): int(v) for k, v in sorted(Counter(calls.tolist()).items())}
    if actions is not None:
        made = actions[(actions >= 0) & (actions < len(expert_names))]
        counts = np.bincount(made, minlength=len(expert_names))
        row["expert_share"] = {n: float(c / max(counts.sum(), 1)) for n, c in zip(expert_names, counts, strict=True)}
    return row


def evaluate(trainer: GridTrainer, runner: Runner, split: str = "test") -> tuple[pl.DataFrame, pl.DataFrame]:
    """(one row per policy on `split` and on train, one row per baseline on `split`)."""
    cache = trainer.cache
    manifest = read_manifest(cache)
    metric = trainer.tables.metric
    columns = [metric, *[m for m in REPORTED_METRICS if m in manifest["metric_columns"] and m != metric]]
    states = pq.read_table(cache / STATES, columns=columns)
    scores = {m: states[m].to_numpy() for m in columns}
    names = list(trainer.tables.expert_names)
    params_b = np.array([e.get("params_b") or 0.0 for e in manifest["experts"]], dtype=np.float64)

    def policy_rows(roots: np.ndarray) -> list[dict[str, Any]]:
        result = greedy_episodes(trainer.network, runner.params, trainer.env_params, trainer.axes, roots)
        rows = []
        for index, settings in enumerate(trainer.policies):
            actions = result["actions"][index]
            used = np.where((actions >= 0) & (actions < len(names)), params_b[np.clip(actions, 0, len(names) - 1)], 0)
            rows.append({"policy": index, **settings, **_row(
                f"policy {index}", "policy", result["final_state"][index], result["calls"][index], used.sum(axis=1),
                scores, actions, names)})
        return rows

    train_roots = split_roots(cache, "train")
    train = pl.DataFrame(policy_rows(train_roots))
    held_out = pl.DataFrame(policy_rows(split_roots(cache, split)))
    policies = held_out.join(train.select("policy", *[pl.col(m).alias(f"train_{m}") for m in columns]), on="policy")

    best = train.sort(metric, descending=True).row(0, named=True)
    roots = split_roots(cache, split)
    tables = RouteTables(trainer.tables.next_state, scores[metric], params_b.astype(np.float32))
    best_calls = {k: v for k, v in held_out.filter(pl.col("policy") == best["policy"]).row(0, named=True)[
        "route_lengths"].items() if v}
    lengths = np.repeat([int(k) for k in best_calls], list(best_calls.values()))
    outcomes: dict[str, Outcome] = baseline_outcomes(
        tables, roots, train_roots, names, int(best["t_max"]), float(best["p0"]), best["terminator"] == "oracle",
        lengths, seed=0)
    baselines = pl.DataFrame([
        _row(name, "oracle" if name.startswith("oracle") else "baseline", o.final_state, o.calls, o.params_b, scores,
             None, names)
        for name, o in outcomes.items()])
    return policies, baselines
