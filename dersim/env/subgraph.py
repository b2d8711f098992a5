"""The decision points of each question: where a route can be after exactly t calls.

Episodes never cross questions, so the decision points a route of fewer than D calls reaches from a
question's root (its state, and the last action when the policy observes it) form a small tree of
levels: one root row at t = 0, at most N rows at t = 1, N^2 at t = 2, fewer where answers
coincide. `question_rows` lists them per question and step, padded to a common width, with the row
each call leads to; exact values over them (`dersim.env.values.row_values`) need only these rows,
not the whole cache, and a minibatch of questions is a slice of them. `flat_rows` is the same
rows without padding, for the regressions of fqi.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuestionRows:
    """Per step t = 0..T-1, arrays [Q, W_t] (W_t the widest question's row count; padded rows repeat
    the root with last action N and are marked invalid), and per t < T-1 the row of step t + 1 that
    each call leads to, [Q, W_t, N] (0 where the call leads nowhere that is used)."""

    states: tuple[np.ndarray, ...]
    lasts: tuple[np.ndarray, ...]
    valid: tuple[np.ndarray, ...]
    following: tuple[np.ndarray, ...]

    @property
    def n_questions(self) -> int:
        return self.states[0].shape[0]


def question_rows(
    next_state: np.ndarray, roots: np.ndarray, steps: int, with_last: bool
) -> QuestionRows:
    """The decision points of every question of `roots` after 0..steps-1 calls (the last action is N
    at t = 0, and always N for a policy that does not observe it: one row per state)."""
    n_experts = next_state.shape[1]
    roots = np.asarray(roots, dtype=np.int64)
    n_questions = len(roots)
    width = n_experts + 1
    states, lasts, valid, following = (
        [roots[:, None]],
        [np.full((n_questions, 1), n_experts)],
        [np.ones((n_questions, 1), bool)],
        [],
    )
    for _ in range(steps - 1):
        called = next_state[states[-1]]  # [Q, W, N]
        usable = valid[-1][..., None] & (called >= 0)
        last = (
            np.broadcast_to(np.arange(n_experts), called.shape)
            if with_last
            else np.full(called.shape, n_experts)
        )
        key = np.where(
            usable, np.maximum(called, 0).astype(np.int64) * width + last, -1
        )  # -1: no row
        # Distinct keys per question, numbered in key order: global keys offset by the question.
        span = int(key.max(initial=0)) + 2
        offset = (np.arange(n_questions) * span)[:, None, None]
        distinct = np.unique((key + 1 + offset)[usable])
        question = distinct // span
        counts = np.bincount(question, minlength=n_questions)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        position = np.arange(len(distinct)) - starts[question]
        row_width = max(int(counts.max(initial=0)), 1)
        local = distinct % span - 1
        grid = np.full((n_questions, row_width), -1, np.int64)
        grid[question, position] = local
        found = np.searchsorted(distinct, key + 1 + offset) - starts[:, None, None]
        following.append(np.where(usable, found, 0).astype(np.int32))
        valid.append(grid >= 0)
        states.append(np.where(grid >= 0, grid // width, roots[:, None]))
        lasts.append(np.where(grid >= 0, grid % width, n_experts))
    return QuestionRows(
        tuple(s.astype(np.int32) for s in states),
        tuple(x.astype(np.int32) for x in lasts),
        tuple(valid),
        tuple(following),
    )


def flat_rows(rows: QuestionRows) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """The valid rows of every step without padding, question by question: ([(states, lasts)] per
    step, and per step t < T-1 the flat index at t + 1 of the row each call leads to, [n_t, N])."""
    flat = [(s[v], x[v]) for s, x, v in zip(rows.states, rows.lasts, rows.valid, strict=True)]
    following = []
    for t, step_following in enumerate(rows.following):
        counts = rows.valid[t + 1].sum(axis=1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        global_index = step_following + starts[:, None, None]
        following.append(global_index[rows.valid[t]].astype(np.int32))
    return flat, following
