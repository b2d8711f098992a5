"""The tables: rows of per-question outcomes turned into means with 95% bootstrap intervals over
questions, spread over seeds, and paired deltas to a reference row beside the paper's.

A trained row has one outcome per seed: its cell is the mean over seeds and questions, its
interval the bootstrap over questions of the seed-averaged per-question values, and "± seeds" the
standard deviation of the seeds' means. A delta is paired: the bootstrap over questions of the
per-question difference to the row it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dersim.evaluation.stats import mean_ci, seed_spread
from dersim.experiments.outcomes import Outcome


@dataclass(frozen=True)
class Row:
    label: str
    outcome: Outcome
    uses_reference: bool
    trained: bool = False
    vs: str | None = None  # the label of the row its delta is taken against (None: no delta)
    paper: str = ""  # the paper's corresponding effect, as text
    agent_params: int | None = None  # parameters of the routing policy (trained rows)
    calls_per_step: int = 1  # 2 when every step calls a pair of experts (route lengths count steps)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    rows: list[Row]
    metrics: list[str]  # score columns shown (x100), the env's metric first
    note: str = ""
    lengths: bool = False  # a route-length table: shares of questions by calls instead of scores

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


@dataclass(frozen=True)
class Cell:
    mean: float
    low: float
    high: float
    seed_std: float  # NaN for a deterministic row or a single seed

    def text(self, digits: int = 2) -> str:
        spread = "" if np.isnan(self.seed_std) else f" ± {self.seed_std:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]{spread}"


def cell(values: np.ndarray, trained: bool) -> Cell:
    """values [K, Q] -> mean, 95% interval over questions, std over seeds (trained rows, K > 1)."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        return Cell(np.nan, np.nan, np.nan, np.nan)
    estimate = mean_ci(values.mean(axis=0))
    _, std = seed_spread(values.mean(axis=1))
    return Cell(
        estimate.mean, estimate.low, estimate.high, std if trained and len(values) > 1 else np.nan
    )


def delta(values: np.ndarray, against: np.ndarray) -> Cell:
    """Paired per-question difference of seed-averaged values, with its interval."""
    difference = np.asarray(values, np.float64).mean(axis=0) - np.asarray(against, np.float64).mean(
        axis=0
    )
    estimate = mean_ci(difference)
    return Cell(estimate.mean, estimate.low, estimate.high, np.nan)


@dataclass
class Scored:
    """A row's figures: score cells per metric (x100), costs, calls, route-length shares, delta."""

    row: Row
    scores: dict[str, Cell]
    costs: dict[str, Cell]
    calls: Cell
    lengths: list[float]  # share of questions per route length 0..D (steps)
    delta: Cell | None
    delta_cost: float | None  # relative change of the run's cost against the compared row
    extra: dict[str, float] = field(default_factory=dict)


def score_table(table: Table, scores: dict[str, np.ndarray], depth: int) -> list[Scored]:
    """Every row of `table` with its cells; deltas on the first metric (x100)."""

    def values(row: Row, metric: str) -> np.ndarray:
        return scores[metric][row.outcome.final_state] * 100

    out = []
    for row in table.rows:
        o = row.outcome
        lengths = [float((o.calls == k * row.calls_per_step).mean()) for k in range(depth + 1)]
        compared = table.row(row.vs) if row.vs else None
        out.append(
            Scored(
                row=row,
                scores={m: cell(values(row, m), row.trained) for m in table.metrics},
                costs={
                    name: cell(getattr(o, name), row.trained)
                    for name in ("cost", "params", "seconds")
                },
                calls=cell(o.calls, row.trained),
                lengths=lengths,
                delta=delta(values(row, table.metrics[0]), values(compared, table.metrics[0]))
                if compared
                else None,
                delta_cost=(
                    float(o.cost.mean() / compared.outcome.cost.mean() - 1)
                    if compared and compared.outcome.cost.mean() > 0
                    else None
                ),
            )
        )
    return out
