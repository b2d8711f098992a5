"""`cascade` (FrugalGPT, arXiv 2305.05176; RouterBench's cascading router) and `cascade+ktp`.

Experts are called in cost order; after each answer a judge accepts it (the route stops) or not
(the next, dearer expert is called); the last expert's answer is always kept. The chain is the
cheapest expert followed by the `length - 1` best experts of the train cost-quality frontier (each
expert on it is better than every cheaper one). The sweep runs the judge's acceptance threshold
from 0 (the cheapest expert's answer is always accepted) to above 1 (the whole chain is called).

Judges: `learned` (deployable): `dersim.env.judge`, a logistic regression fitted on the train
questions' answer states (embedding -> score >= p0), accepts when its probability reaches the
threshold. `oracle` (reads the reference, as RouterBench's cascade): accepts when the answer's
score reaches the threshold. With `judge_error` eps each answer state's decision is flipped with
probability eps (RouterBench's noisy judge; one seeded draw per state).

`cascade` calls every expert on the question from scratch; `cascade+ktp` shows each later expert
the previous answer through the Knowledge Transfer Prompt, which only a DER cache can replay.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from dersim.env.judge import fit_judge
from dersim.routers.base import Questions, Router, RouterError, Routes, TrainData

JUDGES = ("learned", "oracle")


def frontier(cost: np.ndarray, score: np.ndarray) -> list[int]:
    """Experts by ascending mean cost that score better than every cheaper expert."""
    chain, best = [], -np.inf
    for e in np.lexsort((-score, cost)):
        if score[e] > best:
            chain.append(int(e))
            best = score[e]
    return chain


class CascadeRouter(Router):
    name = "cascade"
    transfer = False
    search = {"length": (2, 3, 4)}

    def __init__(self, length: int = 2, judge: str = "learned", judge_error: float = 0.0,
                 reference: np.ndarray | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        if judge not in JUDGES:
            raise RouterError(f"--judge {judge}: expected one of {', '.join(JUDGES)}")
        if not 0 <= judge_error <= 1:
            raise RouterError(f"--judge-error {judge_error}: expected a probability in [0, 1]")
        if judge == "oracle" and reference is None:
            raise RouterError("the oracle judge needs the reference scores")
        self.length, self.judge, self.judge_error, self.reference = length, judge, judge_error, reference
        self.uses_reference = judge == "oracle"
        self.stochastic = judge_error > 0

    def fit(self, train: TrainData) -> Self:
        chain = frontier(train.expert_cost, train.expert_score)
        self.chain_ = chain if len(chain) <= self.length else [chain[0], *chain[len(chain) - self.length + 1:]]
        world = train.questions.world
        if self.judge == "learned":
            embedding = world.embedding[train.answer_states]
            self.value_ = fit_judge(embedding, train.answer_score, train.p0, train.metric).prob(world.embedding)
        else:
            self.value_ = np.asarray(self.reference, np.float64)
        self.flip_ = np.random.default_rng(self.seed).random(len(world.embedding)) < self.judge_error
        return self

    def grid(self) -> np.ndarray:
        return np.append(np.linspace(0.0, 1.0, 21), 1.01)

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        world, roots = questions.world, questions.roots
        state = roots.copy()
        calls = np.full((len(questions), len(self.chain_)), -1, dtype=np.int64)
        active = np.ones(len(questions), dtype=bool)
        for i, expert in enumerate(self.chain_):
            calls[active, i] = expert
            answer = world.next_state[state if self.transfer else roots, expert]
            state = np.where(active, answer, state)
            accepted = (self.value_[state] >= willingness_to_pay) ^ self.flip_[state]
            active &= ~accepted
        return Routes(calls, transfer=self.transfer)


class CascadeKTPRouter(CascadeRouter):
    name = "cascade+ktp"
    transfer = True
