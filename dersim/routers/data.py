"""A cache as the routers' data: the env tables (`dersim.env.tables`) cut into train, val and test.

The val questions are a seeded part of the cache's train questions (`dersim.cache.splits`):
hyperparameters are chosen on them, then the chosen router is refitted on train + val (all of the
cache's train questions) and reported on test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dersim.cache.costs import COST_UNITS
from dersim.cache.files import read_manifest
from dersim.cache.routes import reachable_states
from dersim.cache.splits import DEFAULT_VAL_FRACTION
from dersim.env.tables import EnvSpec, load_tables, split_roots
from dersim.routers.base import Questions, RouterError, TrainData, World


def default_cost_mode(manifest: dict) -> str:
    """`params` (billions of parameters, the paper's cost) when every expert has a size, else
    `usd`."""
    return "params" if all(e.get("params_b") is not None for e in manifest["experts"]) else "usd"


def median_p0(scores: np.ndarray) -> float:
    """The judge's good-enough threshold: 0.5 for 0/1 scores (right or wrong), else the median
    answer score, so that the judge learns to tell the better half of the answers."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isin(scores, (0.0, 1.0)).all():
        return 0.5
    return float(np.median(scores))


@dataclass(frozen=True)
class RouterData:
    """The cache for routing: the world, the reference scores (for replay and reference rows only),
    and the root states of each split."""

    cache: Path
    world: World
    score: (
        np.ndarray
    )  # float32 [S], the chosen metric; routers never see it (reference rows excepted)
    roots: dict[str, np.ndarray]  # train (minus val), val, test
    expert_names: tuple[str, ...]
    metric: str
    cost_mode: str
    cost_scale: float
    depth: int
    imported: bool  # answers written without seeing another answer: no knowledge transfer to replay

    @property
    def cost_unit(self) -> str:
        return COST_UNITS[self.cost_mode]

    @property
    def n_experts(self) -> int:
        return len(self.expert_names)

    def questions(self, split: str) -> Questions:
        roots = self.split_roots(split)
        return Questions(roots, self.world.embedding[roots], self.world)

    def split_roots(self, split: str) -> np.ndarray:
        """Roots of `split`; `fit` is train + val (the cache's whole train split)."""
        if split == "fit":
            return np.concatenate([self.roots["train"], self.roots["val"]])
        return self.roots[split]

    def first_calls(self, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score [Q, N], cost [Q, N]) of every expert's first answer to each question."""
        answers = self.world.next_state[roots]
        return self.score[answers], self.world.cost[roots]

    def train_data(self, split: str, p0: float | None) -> TrainData:
        """What a router fits on: the questions of `split` (train, or fit = train + val)."""
        roots = self.split_roots(split)
        score, cost = self.first_calls(roots)
        answers = reachable_states(roots, self.world.next_state, self.depth)
        answer_score = self.score[answers]
        return TrainData(
            questions=Questions(roots, self.world.embedding[roots], self.world),
            score=score,
            cost=cost,
            cost_scale=self.cost_scale,
            answer_states=answers,
            answer_score=answer_score,
            metric=self.metric,
            p0=median_p0(answer_score) if p0 is None else p0,
        )


def load_router_data(
    cache: Path,
    metric: str | None = None,
    cost_mode: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    verify: bool = True,
) -> RouterData:
    """Read `cache` for routing, checked as every reader checks it (the tables' sha256 unless not
    `verify`); one-line errors."""
    manifest = read_manifest(cache)
    mode = cost_mode or default_cost_mode(manifest)
    if val_fraction <= 0:
        raise RouterError(
            f"--val-fraction {val_fraction}: routers choose hyperparameters on val; it must be > 0"
        )
    tables = load_tables(
        cache,
        EnvSpec(
            split="train",
            metric=metric,
            cost_mode=mode,
            terminator="none",
            val_fraction=val_fraction,
        ),
        verify=verify,
    )
    roots = {
        split: split_roots(tables, cache, split)[0].astype(np.int64)
        for split in ("train", "val", "test")
    }
    world = World(tables.next_state, tables.embedding, tables.cost)
    return RouterData(
        cache=cache,
        world=world,
        score=tables.score,
        roots=roots,
        expert_names=tables.expert_names,
        metric=tables.metric,
        cost_mode=mode,
        cost_scale=tables.cost_scale,
        depth=tables.max_depth,
        imported="import" in manifest,
    )
