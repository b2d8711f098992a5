"""Derived views of a cache: the same answers, replayed under another rule (the paper's ablations).

- Without transfer: every call answers from scratch, as if the expert never saw the previous
  answer, so calling expert e in state s gives e's first answer to the question,
  `next_state'[s, e] = next_state[root(s), e]`, at that call's cost; the final answer is the last
  call's. No new LLM call is needed: the cache already holds every expert's first answer.
- Two experts per step: an action is a pair {i, j} of experts called from the same state; the
  next state is the better of their two answers and the cost is both calls'. "Better" is by the
  env's metric (`pick = "reference"`: reads the reference, so such a policy is not deployable)
  or by the judge's probability (`pick = "judge"`: deployable).
Views are pure functions of the env tables; the JAX env replays them like any cache.
"""

from __future__ import annotations

import itertools

import numpy as np

PAIR_PICKS = ("reference", "judge")


def without_transfer(
    next_state: np.ndarray, cost: np.ndarray, state_root: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(next_state', cost') [S, N]: every call made from the question's root state."""
    return next_state[state_root], cost[state_root]


def expert_pairs(n_experts: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n_experts), 2))


def pair_names(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{names[i]}+{names[j]}" for i, j in expert_pairs(len(names)))


def with_pairs(
    next_state: np.ndarray, cost: np.ndarray, preference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(next_state', cost') [S, N(N-1)/2]: pair k = (i, j) leads to the answer of i or j with the
    higher `preference` (the score, or the judge's probability; ties go to i) and costs both calls;
    -1 where either call was not built."""
    pairs = np.asarray(expert_pairs(next_state.shape[1]), dtype=np.int64).reshape(-1, 2)
    first, second = next_state[:, pairs[:, 0]], next_state[:, pairs[:, 1]]
    built = (first >= 0) & (second >= 0)
    take_second = preference[np.maximum(second, 0)] > preference[np.maximum(first, 0)]
    chosen = np.where(take_second, second, first)
    both = cost[:, pairs[:, 0]] + cost[:, pairs[:, 1]]
    return np.where(built, chosen, -1).astype(np.int32), both.astype(np.float32)
