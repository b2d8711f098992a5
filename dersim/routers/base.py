"""The one interface every router implements, and what it may see.

A router is shaped like a scikit-learn estimator: hyperparameters in `__init__`, nothing learned
before `fit(train)`, then `route(questions, willingness_to_pay)` gives every question a route.
Sweeping the willingness to pay (a cost weight lambda, a threshold or a budget: `grid()` says
which values) traces the router's cost-quality curve.

What a router sees: the train questions' root embeddings with every expert's cached first-answer
score and cost (`TrainData`), and, when routing, the questions' root embeddings plus a `World`
that makes calls (cache lookups) and shows the answers' embeddings and the calls' costs, never a
score. Only reference rows (the oracle, a cascade judged by the reference) are handed scores, and
they say so with `uses_reference`.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from dersim.cache.routes import Outcome, RouteTables, replay, replay_from_root
from dersim.env.judge import fit_judge
from dersim.errors import DersimError

if TYPE_CHECKING:
    from dersim.routers.data import RouterData


class RouterError(DersimError):
    """A bad router name, option or setting (one line naming it)."""


@dataclass(frozen=True)
class World:
    """The cache seen as live experts: `next_state[s, e]` is expert e's answer to state s (a call),
    `embedding[s]` that answer's embedding, `cost[s, e]` the call's cost (raw unit)."""

    next_state: np.ndarray  # int32 [S, N], -1 where not built
    embedding: np.ndarray  # float32 [S, d]
    cost: np.ndarray  # float32 [S, N]

    @property
    def n_experts(self) -> int:
        return self.next_state.shape[1]


@dataclass(frozen=True)
class Questions:
    """Questions to route: their root states and root embeddings, and the world to call experts
    in."""

    roots: np.ndarray  # int [Q]
    embedding: np.ndarray  # float32 [Q, d], the root states' embeddings
    world: World

    def __len__(self) -> int:
        return len(self.roots)


@dataclass(frozen=True)
class TrainData:
    """What `fit` learns from: train questions, each expert's first answer's score and cost on them,
    and every answer state of those questions (any depth) with its score, for judges."""

    questions: Questions
    score: np.ndarray  # float [Q, N], expert e's first answer to question q
    cost: np.ndarray  # float [Q, N], that call's cost (raw unit)
    cost_scale: (
        float  # the dearest expert's mean first-call cost: lambda * cost / cost_scale is unitless
    )
    answer_states: np.ndarray  # int [K], answer states (depth > 0) reachable from these questions
    answer_score: np.ndarray  # float [K]
    metric: str
    p0: float  # the good-enough threshold a judge learns

    @property
    def expert_cost(self) -> np.ndarray:
        """float [N]: each expert's mean first-call cost on these questions (raw unit)."""
        return self.cost.mean(axis=0)

    @property
    def expert_score(self) -> np.ndarray:
        return self.score.mean(axis=0)

    @cached_property
    def judge_prob(self) -> np.ndarray:
        """float [S]: a learned judge's probability that each state of the world is good enough
        (score >= p0): `dersim.env.judge` fitted on these questions' answer states, once."""
        world = self.questions.world
        judge = fit_judge(
            world.embedding[self.answer_states], self.answer_score, self.p0, self.metric
        )
        return judge.prob(world.embedding)


@dataclass(frozen=True)
class Routes:
    """A route per question: `calls[q]` are the experts called in order (-1 after the last call).

    With `transfer` each later call sees the previous answer through the Knowledge Transfer Prompt
    (a DER route); without it every call answers the question from scratch. The final answer is the
    last call's, or call `keep[q]`'s (voting keeps the answer it picked)."""

    calls: np.ndarray  # int64 [Q, L]
    transfer: bool = False
    keep: np.ndarray | None = None  # int64 [Q], index into calls[q]

    @classmethod
    def single(cls, experts: np.ndarray) -> Routes:
        """One call per question."""
        return cls(np.asarray(experts, dtype=np.int64)[:, None])

    def replay(self, roots: np.ndarray, world: World) -> Outcome:
        """Replay these routes through the cache, so every router is judged on the same answers.

        Args:
            roots: the questions' root states, one per route.
            world: the cache's successor and cost tables.

        Returns:
            The `Outcome` (`dersim.cache.routes`): final state, calls and cost per question.

        Raises:
            RouterError: a route the cache cannot replay (a gap, an unknown expert, past the built
                depth, a failed call, a kept call that was not made).
        """
        calls = np.asarray(self.calls, dtype=np.int64)
        if calls.ndim != 2 or calls.shape[0] != len(roots) or calls.shape[1] == 0:
            raise RouterError(f"routes of shape {calls.shape} for {len(roots)} questions")
        made = calls >= 0
        if (made[:, 1:] & ~made[:, :-1]).any():
            raise RouterError("a route has a gap before its last call")
        if calls.max() >= world.n_experts:
            raise RouterError(f"a route calls expert {calls.max()} of {world.n_experts}")
        tables = RouteTables(world.next_state, cost=world.cost)
        if self.transfer:
            if self.keep is not None:
                raise RouterError("a route with knowledge transfer keeps its last answer")
            outcome = replay(calls, roots, tables)
            if (outcome.final_state < 0).any():
                raise RouterError(
                    "a route goes past the cache's built depth (or through a failed call)"
                )
            return outcome
        n_calls = made.sum(axis=1)
        if self.keep is not None:
            keep = np.asarray(self.keep, dtype=np.int64)
            if ((keep < -1) | (keep >= n_calls) | ((keep == -1) & (n_calls > 0))).any():
                raise RouterError("a route keeps the answer of a call it did not make")
        outcome = replay_from_root(calls, roots, tables, self.keep)
        if (outcome.final_state < 0).any():
            raise RouterError(
                "a route calls an expert whose first answer is not in the cache (failed call)"
            )
        return outcome


@dataclass(frozen=True)
class RouterOptions:
    """Command-line settings shared by the routers that use them (`Router.fixed_settings`)."""

    judge: str = (
        "learned"  # the cascades' judge: learned (deployable) or oracle (reads the reference)
    )
    judge_error: float = (
        0.0  # the cascades' judge decision is flipped on this share of answer states
    )
    p0: float | None = None  # the learned judge's good-enough threshold (default: `data.median_p0`)


class Router(ABC):
    """Base class. Subclasses set `name`, implement `fit`, `grid` and `route`, and list the
    hyperparameter values to choose among on the val split in `search`.

    Capabilities are declared on the class, so the comparison reads them before it makes a router:
    `transfer` (its routes call later experts through the Knowledge Transfer Prompt, so it needs a
    built cache of depth >= 2), `uses_reference` (it reads the reference scores to decide: a
    reference row, never deployable) and `stochastic` (results vary with `seed`: reported as the
    mean +- std over seeds). A router whose instance settings change the last two (the cascades'
    oracle judge and judge error) sets them in `__init__`."""

    name: ClassVar[str]
    search: ClassVar[dict[str, tuple]] = {}
    transfer: ClassVar[bool] = False
    stochastic: bool = False
    uses_reference: bool = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @classmethod
    def unavailable(cls, data: RouterData) -> str | None:
        """Why this router cannot run on the cache of `data`, or None."""
        if cls.transfer and data.imported:
            return (
                "an imported cache holds no knowledge-transfer answers (its routes replay as "
                "independent calls)"
            )
        if cls.transfer and data.depth < 2:
            return (
                f"the cache is built to depth {data.depth}; routes with knowledge transfer need "
                "depth >= 2"
            )
        return None

    @classmethod
    def fixed_settings(cls, data: RouterData, options: RouterOptions) -> dict[str, Any]:
        """Constructor arguments that are not hyperparameters (a judge, the reference of a reference
        row), from the command line's `options` and the cache."""
        return {}

    @classmethod
    def candidates(cls, train: TrainData, depth: int) -> list[dict[str, Any]]:
        """The hyperparameter combinations to choose among on val (every combination of `search`;
        `depth` is the longest route the cache replays)."""
        keys = list(cls.search)
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*cls.search.values())
        ]

    @abstractmethod
    def fit(self, train: TrainData) -> Self:
        """Learn from the train questions.

        Args:
            train: their root embeddings, every expert's first-answer score and cost, and the
                world to make calls in (never a score of a later answer).

        Returns:
            The router itself, fitted.
        """

    @abstractmethod
    def grid(self) -> np.ndarray:
        """The willingness-to-pay values the curve sweeps (known after `fit`)."""

    @abstractmethod
    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        """Route every question at one point of the curve.

        Args:
            questions: their root embeddings and the world to make calls in.
            willingness_to_pay: one value of `grid()` (a cost weight, threshold or budget).

        Returns:
            One route per question (`Routes`), replayed through the cache by `Routes.replay`.
        """

    def sweep(self, questions: Questions) -> list[Routes]:
        """Routes at every grid value (routers with costly inference override this to infer
        once)."""
        return [self.route(questions, w) for w in self.grid()]


# Cost weights lambda swept by the trade-off routers (argmax of quality - lambda * cost /
# cost_scale): 0 buys the best predicted quality, 1000 the cheapest expert.
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 37)])


def tradeoff(quality: np.ndarray, cost: np.ndarray, cost_scale: float, weight: float) -> np.ndarray:
    """int [Q]: per question the expert maximising quality - weight * cost / cost_scale
    (`quality` [Q, N]; `cost` [N] or [Q, N]); ties go to the cheaper expert, then the lower id."""
    value = quality - weight * np.broadcast_to(cost, quality.shape) / cost_scale
    best = value.max(axis=1, keepdims=True)
    tied = value >= best - 1e-12
    cheapest = np.where(tied, np.broadcast_to(cost, quality.shape), np.inf)
    return cheapest.argmin(axis=1)


class QualityRouter(Router):
    """A router that predicts each expert's quality per question and takes the best trade-off with
    the expert's mean train cost: argmax_e quality[q, e] - lambda * cost_e / cost_scale."""

    def fit(self, train: TrainData) -> Self:
        self.expert_cost_ = train.expert_cost
        self.cost_scale_ = train.cost_scale
        self.learn(train)
        return self

    @abstractmethod
    def learn(self, train: TrainData) -> None:
        """Fit the quality model."""

    @abstractmethod
    def quality(self, questions: Questions) -> np.ndarray:
        """float [Q, N]: predicted quality (a score, or a win rate against the other experts)."""

    def grid(self) -> np.ndarray:
        return LAMBDAS

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        return Routes.single(
            tradeoff(
                self.quality(questions), self.expert_cost_, self.cost_scale_, willingness_to_pay
            )
        )

    def sweep(self, questions: Questions) -> list[Routes]:
        quality = self.quality(questions)
        return [
            Routes.single(tradeoff(quality, self.expert_cost_, self.cost_scale_, w))
            for w in self.grid()
        ]
