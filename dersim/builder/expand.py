"""Breadth-first expansion of each question's state graph over distinct answers.

A state is a distinct (question, answer) pair; answers are deduplicated by their normalised text
(whitespace collapsed), and the first text seen in the deterministic order (question, state,
expert, sample) represents the state. A state first reached at depth d < D is expanded by every
expert, so any route of at most D calls replays exactly. A sampled expert (k samples) makes k
calls per state, one edge each; equal samples reach the same child.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from dersim.builder.journal import CallRecord
from dersim.builder.sources.question import Question

ROOT = 0


def normalise_answer(text: str) -> str:
    """The dedup key of an answer: whitespace-insensitive, case- and punctuation-sensitive (a KTP
    shows the text as written, so only whitespace changes are safe to merge)."""
    return " ".join(text.split())


class Edge(NamedTuple):
    """One call made on the way: from `state`, `expert`'s `sample`-th answer led to `next` (-1:
    the call failed)."""

    state: int
    expert: int
    next: int
    call: CallRecord
    sample: int = 0


class Call(NamedTuple):
    """One call to make: `expert`'s `sample`-th answer to `question` after `previous_answer`."""

    question: Question
    previous_answer: str | None
    expert: int
    sample: int = 0


@dataclass
class QuestionGraph:
    """The states and transitions of one question; state 0 is the root (no answer yet)."""

    question: Question
    answers: list[str] = field(default_factory=lambda: [""])
    depths: list[int] = field(default_factory=lambda: [0])
    edges: list[Edge] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def previous_answer(self, state: int) -> str | None:
        """What the KTP shows after `state`: None at the root (the expert sees only the
        question)."""
        return None if state == ROOT else self.answers[state]

    def add_answer(self, text: str, depth: int) -> tuple[int, bool]:
        """The state of `text` (new ones get the next local id) and whether it is new."""
        key = normalise_answer(text)
        if key in self._index:
            return self._index[key], False
        self._index[key] = len(self.answers)
        self.answers.append(text.strip())
        self.depths.append(depth)
        return len(self.answers) - 1, True


# One batch of calls for a depth level (level, calls) -> their records, in the same order.
CallBatch = Callable[[int, list[Call]], list[CallRecord]]


def expand(
    questions: Sequence[Question], samples: Sequence[int], depth: int, run_calls: CallBatch
) -> list[QuestionGraph]:
    """Expand every question to `depth` with experts making `samples[e]` calls per state, one
    level at a time across all questions (so a progress bar per level is meaningful and a
    parallel backend sees many independent calls)."""
    graphs = [QuestionGraph(q) for q in questions]
    frontier = [(g, ROOT) for g in graphs]
    for level in range(depth):
        calls = [(g, s, e, j) for g, s in frontier for e, k in enumerate(samples) for j in range(k)]
        records = run_calls(
            level, [Call(g.question, g.previous_answer(s), e, j) for g, s, e, j in calls]
        )
        frontier = []
        for (g, s, e, j), record in zip(calls, records, strict=True):
            target = -1
            if record.ok:
                target, is_new = g.add_answer(record.text or "", level + 1)
                if is_new:
                    frontier.append((g, target))
            g.edges.append(Edge(s, e, target, record, j))
    return graphs
