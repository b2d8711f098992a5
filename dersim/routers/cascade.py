"""`cascade` (FrugalGPT, arXiv 2305.05176; RouterBench's cascading router) and `cascade+ktp`.

Experts of a chain are called in ascending cost; after each answer a judge accepts it (the route
stops) or not (the next, dearer expert is called); the last expert's answer is always kept. The
chain is a hyperparameter chosen on val, as FrugalGPT searches its chain: every chain of 2 to 4
experts in ascending train cost drawn from the best POOL experts on train and the cheapest one
(2 to min(4, depth) with transfer). The sweep runs the judge's acceptance threshold from 0 (the
first expert's answer is always accepted) to above 1 (the whole chain is called).

Judges: `learned` (deployable): `dersim.env.judge`, a logistic regression fitted on the train
questions' answer states (embedding -> score >= p0), accepts when its probability reaches the
threshold. `oracle` (reads the reference, as RouterBench's cascade): accepts when the answer's
score reaches the threshold. With `judge_error` eps each answer state's decision is flipped with
probability eps (RouterBench's noisy judge; one seeded draw per state).

`cascade` calls every expert on the question from scratch; `cascade+ktp` shows each later expert
the previous answer through the Knowledge Transfer Prompt, which only a DER cache can replay.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from dersim.routers.base import Questions, Router, RouterError, RouterOptions, Routes, TrainData

if TYPE_CHECKING:
    from dersim.routers.data import RouterData

JUDGES = ("learned", "oracle")
POOL = 4
LONGEST = 4


def chains(cost: np.ndarray, score: np.ndarray, longest: int) -> list[tuple[int, ...]]:
    """Every chain of 2..longest experts in ascending cost from the POOL best experts and the
    cheapest."""
    order = np.lexsort(
        (np.arange(len(cost)), -score, cost)
    )  # by cost, the better first among equals
    best = set(np.argsort(-score, kind="stable")[:POOL].tolist())
    pool = [int(e) for e in order if e in best or e == order[0]]
    found = [
        c for k in range(2, min(longest, len(pool)) + 1) for c in itertools.combinations(pool, k)
    ]
    return found or [tuple(pool[:1])]


class CascadeRouter(Router):
    """FrugalGPT's cascade: experts of a chain in ascending cost, each answer accepted or
    passed on by a judge; every call answers the question from scratch.

    Parameters
    ----------
    chain : tuple of int, default=(0,)
        Expert indices in calling order; chosen on val among `candidates`.
    judge : {"learned", "oracle"}, default="learned"
        `learned` is deployable (a logistic regression on answer embeddings); `oracle` reads the
        reference scores (a reference row).
    judge_error : float, default=0.0
        Share of answer states whose judge decision is flipped (one seeded draw per state).
    reference : ndarray of shape (S,), default=None
        Reference score of every state; required by the oracle judge.
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "cascade"
    transfer = False

    def __init__(
        self,
        chain: tuple[int, ...] = (0,),
        judge: str = "learned",
        judge_error: float = 0.0,
        reference: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if judge not in JUDGES:
            raise RouterError(f"--judge {judge}: expected one of {', '.join(JUDGES)}")
        if not 0 <= judge_error <= 1:
            raise RouterError(f"--judge-error {judge_error}: expected a probability in [0, 1]")
        if judge == "oracle" and reference is None:
            raise RouterError("the oracle judge needs the reference scores")
        self.chain, self.judge, self.judge_error, self.reference = (
            tuple(chain),
            judge,
            judge_error,
            reference,
        )
        self.uses_reference = judge == "oracle"
        self.stochastic = judge_error > 0

    @classmethod
    def fixed_settings(cls, data: RouterData, options: RouterOptions) -> dict[str, Any]:
        """The command line's judge (and the reference, for the oracle judge)."""
        return {
            "judge": options.judge,
            "judge_error": options.judge_error,
            "reference": data.score if options.judge == "oracle" else None,
        }

    @classmethod
    def candidates(cls, train: TrainData, depth: int) -> list[dict[str, Any]]:
        longest = min(LONGEST, depth) if cls.transfer else LONGEST
        return [{"chain": c} for c in chains(train.expert_cost, train.expert_score, longest)]

    def fit(self, train: TrainData) -> Self:
        world = train.questions.world
        self.value_ = (
            train.judge_prob if self.judge == "learned" else np.asarray(self.reference, np.float64)
        )
        self.flip_ = (
            np.random.default_rng(self.seed).random(len(world.embedding)) < self.judge_error
        )
        return self

    def grid(self) -> np.ndarray:
        return np.append(np.linspace(0.0, 1.0, 21), 1.01)

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        world, roots = questions.world, questions.roots
        state = roots.copy()
        calls = np.full((len(questions), len(self.chain)), -1, dtype=np.int64)
        active = np.ones(len(questions), dtype=bool)
        for i, expert in enumerate(self.chain):
            calls[active, i] = expert
            answer = world.next_state[state if self.transfer else roots, expert]
            state = np.where(active, answer, state)
            accepted = (self.value_[state] >= willingness_to_pay) ^ self.flip_[state]
            active &= ~accepted
        return Routes(calls, transfer=self.transfer)


class CascadeKTPRouter(CascadeRouter):
    """The cascade with knowledge transfer: each later expert sees the previous answer through
    the Knowledge Transfer Prompt (needs a built cache of depth >= 2). Parameters as
    `CascadeRouter`.
    """

    name = "cascade+ktp"
    transfer = True
