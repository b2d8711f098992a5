"""Every figure with its 95% bootstrap interval over the evaluated questions, and its spread over
seeds.

The resampled question sets (`dersim.evaluation.stats.bootstrap_indices`, one seed for the whole
table) are shared by every router and by the single experts they are measured against, so
differences between routers are paired. A resample recomputes everything the figure depends on:
each curve point's mean cost and score, and the single experts' (weak and strong keep their
identity, chosen on train). A stochastic router's figure is the mean over its seeds, on the full
set and on each resample; its seed spread is the standard deviation of the per-seed figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dersim.evaluation.stats import (
    LEVEL,
    N_BOOTSTRAP,
    bootstrap_indices,
    percentile_interval,
    seed_spread,
)
from dersim.routers.metrics import METRICS, Reference, curve_metrics


@dataclass(frozen=True)
class Figure:
    """A metric's value (mean over seeds), its 95% bootstrap interval and its std over seeds."""

    mean: float
    low: float
    high: float
    seed_std: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "seed_std": self.seed_std}


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval; a figure that is never reached (inf) in some resamples keeps inf as
    a value (the bounds are then actual resampled values), undefined ones (nan) are left out."""
    samples = np.asarray(samples, dtype=np.float64)
    defined = samples[~np.isnan(samples)]
    if len(defined) == 0:
        return float("nan"), float("nan")
    if np.isfinite(defined).all():
        return percentile_interval(defined, level)
    tail = (1 - level) / 2
    low, high = np.quantile(defined, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


class Bootstrap:
    """Shared resamples of the evaluated questions (row 0 of every matrix is the full set)."""

    def __init__(
        self,
        single_score: np.ndarray,
        single_cost: np.ndarray,
        weak: int,
        strong: int,
        n_boot: int = N_BOOTSTRAP,
        seed: int = 0,
    ) -> None:
        n_questions = single_score.shape[1]
        indices = bootstrap_indices(n_questions, n_boot, seed)
        counts = np.zeros((n_boot + 1, n_questions))
        counts[0] = 1.0
        np.add.at(
            counts, (np.repeat(np.arange(1, n_boot + 1), n_questions), indices.reshape(-1)), 1.0
        )
        self.weights = counts / n_questions  # [B + 1, Q]: a mean over a resample is a weighted sum
        scores, costs = self.means(single_score), self.means(single_cost)  # [N, B + 1]
        self.references = [
            Reference(costs[:, b], scores[:, b], weak, strong) for b in range(n_boot + 1)
        ]

    def means(self, values: np.ndarray) -> np.ndarray:
        """[..., B + 1]: the mean over the last axis (questions) on the full set and each
        resample."""
        return np.asarray(values, dtype=np.float64) @ self.weights.T

    def figures(self, score: np.ndarray, cost: np.ndarray) -> dict[str, Figure]:
        """Every metric of the curve(s) `score`, `cost` [R seeds, P points, Q questions]."""
        values = np.array(
            [self.seed_values(score[r], cost[r]) for r in range(score.shape[0])]
        )  # [R, B + 1, M]
        per_seed = values[:, 0]  # [R, M]
        resampled = values[:, 1:].mean(axis=0)  # [B, M], the seed mean on each resample
        out = {}
        for i, metric in enumerate(METRICS):
            mean, std = (
                seed_spread(per_seed[:, i])
                if np.isfinite(per_seed[:, i]).all()
                else (float(per_seed[:, i].mean()), float("nan"))
            )
            out[metric] = Figure(mean, *interval(resampled[:, i]), std)
        return out

    def seed_values(self, score: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """[B + 1, M]: the metrics of one seed's curve [P, Q] on the full set and each resample;
        points with the same outcome on every question (sweep values giving the same routes) count
        once."""
        points = np.unique(np.concatenate([score, cost], axis=1), axis=0)
        n_questions = score.shape[1]
        mean_score, mean_cost = (
            self.means(points[:, :n_questions]),
            self.means(points[:, n_questions:]),
        )
        figures = (
            curve_metrics(mean_cost[:, b], mean_score[:, b], reference)
            for b, reference in enumerate(self.references)
        )
        return np.array([[values[m] for m in METRICS] for values in figures])
