"""What `dersim reproduce` trains: the settings every table needs, grouped into training grids.

Two DER settings recur. *Paper*: the paper's reward (every call earns its answer's score, beta = 5
pays improvement, gamma = 2 at the end) with its oracle terminator, which reads the reference, and
alpha = 0.016 on the auto cost scale (the paper's 0.001 per billion parameters with its dearest,
16B expert). *Deployable*: the final-answer reward (gamma = 0, alpha = 0.05 on the auto scale)
with a learned STOP. The paper's algorithm is PPO; the main grid also trains the deployable
setting with the full-information algorithms (fqi, exact-pg), which learn from every outcome the
cache holds. Every setting shares the cache's shapes within a grid, so one run trains all settings
of a grid; only a derived view of the cache (without transfer, two experts per step) or another
cache needs a grid of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dersim.env.tables import EnvSpec
from dersim.trainer.algorithms import with_defaults

PAPER = {"reward": "paper", "beta": 5.0, "gamma": 2.0, "alpha": 0.016}
DEPLOYABLE = {"reward": "final", "beta": 0.0, "gamma": 0.0, "alpha": 0.05}
# The default p0: this quantile of the train answer scores (the paper's 0.73 is for its model).
P0_QUANTILE = 0.75
QUICK_STEPS = 10_240
QUICK_SEEDS = 1


FULL_INFORMATION = (
    "fqi",
    "exact-pg",
)  # trained beside PPO in the deployable setting of the main grid


@dataclass(frozen=True)
class Setting:
    """One trained row: a reward family, a terminator and T_max, trained in one grid by one
    algorithm."""

    family: str  # "paper" or "deployable"
    terminator: str
    t_max: int
    grid: str
    algo: str = "ppo"

    @property
    def key(self) -> str:
        base = f"{self.grid}/{self.family}/{self.terminator}/T{self.t_max}"
        return base if self.algo == "ppo" else f"{base}/{self.algo}"

    @property
    def label(self) -> str:
        """'DER paper: oracle terminator, T_max 3' (PPO; another algorithm is named; the grid's view
        is added by the tables)."""
        algo = "" if self.algo == "ppo" else f" ({self.algo})"
        return f"DER {self.family}{algo}: {self.terminator} terminator, T_max {self.t_max}"

    @property
    def uses_reference(self) -> bool:
        return self.terminator == "oracle" or self.grid == "pairs-reference"

    def policy(self, seed: int, p0: float) -> dict:
        rewards = PAPER if self.family == "paper" else DEPLOYABLE
        return with_defaults(
            {
                "algo": self.algo,
                **rewards,
                "p0": p0,
                "t_max": self.t_max,
                "terminator": self.terminator,
                "judge_error": 0.0,
                "judge_threshold": 0.5,
                "seed": seed,
            }
        )


@dataclass(frozen=True)
class Grid:
    """A training grid: a cache, a view of it, and the settings trained together."""

    name: str
    cache: Path
    transfer: bool = True
    experts_per_step: int = 1
    pair_pick: str = "reference"
    settings: tuple[Setting, ...] = field(default_factory=tuple)

    def spec(self, plan: Plan) -> EnvSpec:
        return EnvSpec(
            split="train",
            metric=plan.metric,
            cost_mode=plan.cost_mode,
            t_max=plan.depth,
            terminator="learned",
            reward="final",
            p0=plan.p0,
            transfer=self.transfer,
            experts_per_step=self.experts_per_step,
            pair_pick=self.pair_pick,
        )

    def policies(self, plan: Plan) -> list[dict]:
        return [s.policy(seed, plan.p0) for s in self.settings for seed in range(plan.seeds)]


@dataclass(frozen=True)
class Plan:
    cache: Path
    metric: str
    p0: float
    cost_mode: str
    depth: int
    seeds: int
    steps: int
    grids: tuple[Grid, ...]

    def setting_policies(self, grid: Grid, setting: Setting) -> list[int]:
        """Indices, in `grid`'s policy list, of `setting`'s seeds."""
        start = grid.settings.index(setting) * self.seeds
        return list(range(start, start + self.seeds))


def main_settings(depth: int) -> tuple[Setting, ...]:
    """Everything that fits the cache as built: T_max 1..D for both families, every terminator."""
    paper = [Setting("paper", "oracle", t, "main") for t in range(1, depth + 1)]
    paper += [Setting("paper", term, depth, "main") for term in ("none", "learned", "judge")]
    deployable = [Setting("deployable", "learned", t, "main") for t in range(1, depth + 1)]
    deployable += [
        Setting("deployable", term, depth, "main") for term in ("judge", "none", "oracle")
    ]
    deployable += [
        Setting("deployable", "learned", depth, "main", algo) for algo in FULL_INFORMATION
    ]
    return tuple(paper + deployable)


def both_der(grid: str, depth: int) -> tuple[Setting, ...]:
    """The paper's DER and the deployable DER, at T_max = D (the rows a view or another cache
    needs)."""
    return Setting("paper", "oracle", depth, grid), Setting("deployable", "learned", depth, grid)


def make_plan(
    cache: Path,
    metric: str,
    p0: float,
    cost_mode: str,
    depth: int,
    seeds: int,
    steps: int,
    compare: dict[str, Path],
) -> Plan:
    grids = [
        Grid("main", cache, settings=main_settings(depth)),
        Grid("no-transfer", cache, transfer=False, settings=both_der("no-transfer", depth)),
        Grid(
            "pairs-reference",
            cache,
            experts_per_step=2,
            settings=both_der("pairs-reference", depth),
        ),
        Grid(
            "pairs-judge",
            cache,
            experts_per_step=2,
            pair_pick="judge",
            settings=both_der("pairs-judge", depth),
        ),
    ]
    grids += [
        Grid(f"compare-{name}", path, settings=both_der(f"compare-{name}", depth))
        for name, path in compare.items()
    ]
    return Plan(cache, metric, p0, cost_mode, depth, seeds, steps, tuple(grids))


def quantile_p0(train_answer_scores: np.ndarray) -> float:
    """The P0_QUANTILE quantile of the train answer scores (0.5 for 0/1 scores)."""
    scores = np.asarray(train_answer_scores, dtype=np.float64)
    if np.isin(scores, (0.0, 1.0)).all():
        return 0.5
    return round(float(np.quantile(scores, P0_QUANTILE)), 4)
