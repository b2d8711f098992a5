"""Route one question live: embed the state, ask the policy, call the real expert, repeat.

The loop is the env's episode (`dersim.env`) with real calls in place of cache lookups:
    state = the question alone (t = 0, no answer, last action N)
    repeat: observe (embedding of "Q: ...\\nA: <answer>", step, last action) -> greedy action;
            STOP (learned terminator) -> done, the current answer is final (empty at the root);
            else call that expert on the question (the KTP shows the current answer after the
            first call); t += 1; done when the judge terminator accepts the new answer
            (P >= judge_threshold, on its raw embedding) or when t reaches max_calls.
max_calls defaults to the policy's T_max and may exceed the cache's depth D live: the route then
says so (`beyond_cache_depth`), and from T_max on the policy is shown step T_max - 1 (see
`LivePolicy.observed_step`). No step reads a reference answer.

The run's view of the cache (`dersim.env.views`) is honoured: without transfer every call sees the
question alone (no KTP); with two experts per step an action calls both experts of its pair from
the same state and keeps the answer the judge prefers (the first on a tie), paying both calls.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dersim.builder.backends.base import Completion
from dersim.builder.embedding import state_text
from dersim.builder.sources.question import Question
from dersim.env.views import expert_pairs, pair_names
from dersim.errors import DersimError
from dersim.live.costs import CallPricer
from dersim.live.policy import LivePolicy
from dersim.live.pool import ExpertPool

STOP, JUDGE, T_MAX = "stop", "judge", "t_max"


def live_question(
    text: str,
    question_id: str | None = None,
    reference: str = "",
    references: tuple[str, ...] = (),
    label: str = "",
) -> Question:
    """A question to route. Routing never reads the reference fields (only the synthetic backend,
    which writes its answers from them, does). The id defaults to a hash of the text, since the
    synthetic backend also seeds its answers by id: the same text always routes alike."""
    qid = question_id or "live-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return Question(
        question_id=qid,
        text=text,
        reference=reference,
        references=references or ((reference,) if reference else ()),
        label=label,
    )


@dataclass(frozen=True)
class Step:
    """One live call."""

    step: int  # 1-based
    expert: str
    expert_id: int
    answer: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # the backend's time for the call
    cost: float  # in the run's cost unit
    judge_prob: float | None  # the judge's P(good enough) of this answer (judge terminator only)


@dataclass
class Route:
    """A routed question: its steps, why it stopped, and the raw embedding of every state
    visited."""

    question: Question
    policy: str
    max_calls: int
    cache_depth: int
    cost_unit: str
    steps: list[Step] = field(default_factory=list)
    stopped_by: str = ""
    wall_s: float = 0.0
    embeddings: list[np.ndarray] = field(
        default_factory=list
    )  # root, then after each call (not serialised)

    @property
    def answer(self) -> str:
        return self.steps[-1].answer if self.steps else ""

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of the route (one output line)."""
        return {
            "id": self.question.question_id,
            "question": self.question.text,
            "answer": self.answer,
            "policy": self.policy,
            "stopped_by": self.stopped_by,
            "calls": len(self.steps),
            "max_calls": self.max_calls,
            "cache_depth": self.cache_depth,
            "beyond_cache_depth": len(self.steps) > self.cache_depth,
            "cost": sum(s.cost for s in self.steps),
            "cost_unit": self.cost_unit,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_s": sum(s.latency_s for s in self.steps),
            "wall_s": self.wall_s,
            "steps": [asdict(s) for s in self.steps],
        }


class LiveRouter:
    """One policy over one expert pool; `route` is safe to call from several threads at once."""

    def __init__(self, policy: LivePolicy, pool: ExpertPool, pricer: CallPricer) -> None:
        actions = pair_names(pool.names) if policy.pairs else pool.names
        if actions != policy.run.trainer.tables.expert_names:
            raise DersimError(
                f"the run's experts {list(policy.run.trainer.tables.expert_names)} are not the "
                f"cache's {list(actions)}"
            )
        self.policy, self.pool, self.pricer = policy, pool, pricer
        self.pairs = expert_pairs(len(pool.names)) if policy.pairs else None

    def route(
        self,
        question: Question,
        max_calls: int | None = None,
        on_step: Callable[[Step], None] | None = None,
    ) -> Route:
        """Route `question` until STOP, the judge or max_calls (default: the policy's T_max)."""
        max_calls = self.policy.t_max if max_calls is None else max_calls
        if max_calls < 1:
            raise DersimError(f"--max-calls {max_calls}: expected at least 1")
        started = time.perf_counter()
        route = Route(
            question, self.policy.name, max_calls, self.policy.max_depth, self.pricer.unit
        )
        answer, last, n_experts = "", self.policy.n_experts, self.policy.n_experts
        raw = self._embed(question, answer)
        route.embeddings.append(raw)
        while True:
            action = self.policy.act(raw, len(route.steps), last)
            if action == n_experts:
                route.stopped_by = STOP
                break
            previous = answer if route.steps and self.policy.transfer else None
            answer, raw, calls, cost = self._act(action, question, previous)
            last = action
            route.embeddings.append(raw)
            prob = self.policy.judge_prob(raw)
            step = Step(
                len(route.steps) + 1,
                self.policy.run.trainer.tables.expert_names[action],
                action,
                answer,
                sum(c.prompt_tokens for c in calls),
                sum(c.completion_tokens for c in calls),
                sum(c.latency_s for c in calls),
                cost,
                prob,
            )
            route.steps.append(step)
            if on_step is not None:
                on_step(step)
            if self.policy.judge_stops(prob):
                route.stopped_by = JUDGE
                break
            if len(route.steps) >= max_calls:
                route.stopped_by = T_MAX
                break
        route.wall_s = time.perf_counter() - started
        return route

    def _act(
        self, action: int, question: Question, previous: str | None
    ) -> tuple[str, np.ndarray, list[Completion], float]:
        """(answer, its state's raw embedding, the calls made, their cost) of one action: one
        expert's call, or under the pairs view both experts' and the answer the judge prefers."""
        experts = [action] if self.pairs is None else list(self.pairs[action])
        calls = [self.pool.call(e, question, previous) for e in experts]
        answers = [c.text.strip() for c in calls]
        raws = [self._embed(question, a) for a in answers]
        keep = int(len(raws) == 2 and self.policy.prefers_second(raws[0], raws[1]))
        cost = sum(self.pricer.cost(e, c) for e, c in zip(experts, calls, strict=True))
        return answers[keep], raws[keep], calls, cost

    def _embed(self, question: Question, answer: str) -> np.ndarray:
        return self.pool.embed([state_text(question.text, answer)])[0]
