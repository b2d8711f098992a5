"""Confidence intervals: a seeded percentile bootstrap over questions, and spread over seeds.

Every reported mean carries a 95% interval. Resampling is over questions (the unit a new test set
would redraw); the same seed gives the same intervals, and the same resampled question sets can be
shared by several statistics (`bootstrap_indices`), so paired differences are paired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

N_BOOTSTRAP = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """'64.19 [62.10, 66.30]'."""
        return (
            f"{self.mean * scale:.{digits}f} [{self.low * scale:.{digits}f}, "
            f"{self.high * scale:.{digits}f}]"
        )


def bootstrap_indices(n: int, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """int [n_boot, n]: question indices drawn with replacement."""
    return (
        np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        if n
        else np.zeros((n_boot, 0), np.int64)
    )


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci(
    values: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """Mean of per-question `values` [Q] with its percentile-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    samples = values[bootstrap_indices(len(values), n_boot, seed)].mean(axis=1)
    return Estimate(float(values.mean()), *percentile_interval(samples, level))


def statistic_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = LEVEL,
) -> Estimate:
    """Any statistic of a question subset (`statistic(indices) -> float`, called on all n questions
    for the point estimate and on each bootstrap resample for the interval)."""
    point = statistic(np.arange(n))
    samples = np.array(
        [statistic(idx) for idx in bootstrap_indices(n, n_boot, seed)], dtype=np.float64
    )
    return Estimate(float(point), *percentile_interval(samples, level))


def seed_spread(values: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) over seeds; the deviation is 0 for a single seed."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
