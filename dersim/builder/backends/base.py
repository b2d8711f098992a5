"""The one small interface every expert backend implements.

A backend turns one `CallRequest` (a rendered prompt plus the question and previous answer it came
from) into one `Completion`. It raises `CallFailed` for errors worth retrying (timeouts, server
errors) and `CallRejected` for errors that will not improve on retry (a 4xx answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dersim.builder.sources.question import Question


@dataclass(frozen=True)
class CallRequest:
    """One expert call: the rendered prompt and what it was rendered from."""

    question: Question
    previous_answer: str | None  # None at the root: the expert sees the question alone
    prompt: str  # the full text for completion-format experts, the user message for chat experts
    max_new_tokens: int
    stop: tuple[str, ...]
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0  # the sample index: sample i of a call is drawn with seed i

    @property
    def sampled(self) -> bool:
        """Whether the answer is a seeded draw (temperature > 0) rather than the greedy one."""
        return self.temperature > 0


@dataclass(frozen=True)
class Completion:
    """What one call returned, with its token counts and wall-clock latency in seconds."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class CallFailed(Exception):
    """A transient failure: the builder retries it with backoff."""


class CallRejected(CallFailed):
    """A permanent failure (e.g. HTTP 4xx): the builder records it without retrying."""


class Backend(Protocol):
    """An expert: `complete` must be deterministic for a given request (greedy decoding, or a
    sampled draw fixed by the request's seed)."""

    name: str
    prompt_format: str  # "chat" or "completion"

    def complete(self, request: CallRequest) -> Completion: ...

    def close(self) -> None: ...
