"""Running a level's expert calls: journal look-up, retries with backoff, bounded parallelism,
progress.

Calls already in the journal are reused; the rest run on a thread pool of `concurrency` workers
(in-process backends serialise themselves), at most `window()` of them submitted ahead, so memory
does not grow with the level. A transient error is retried with exponential backoff;
after the last attempt, or on a permanent error, the call is recorded as failed and the build goes
on. Backends are created lazily, so a fully journaled rebuild loads no model.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from dersim.builder.backends.base import Backend, CallFailed, CallRejected, Completion
from dersim.builder.expand import Call
from dersim.builder.journal import CallJournal, CallRecord, call_key, expert_fingerprint
from dersim.builder.progress import progress
from dersim.builder.prompts import render_request
from dersim.builder.sources.question import Question
from dersim.cache.schema import STATUS_FAILED, STATUS_OK
from dersim.recipe import BuildSpec, ExpertSpec, PromptSpec

# Calls submitted ahead of the oldest one awaited: per worker, and at least.
WINDOW_PER_WORKER = 4
MIN_WINDOW = 16


class CallRunner:
    """Executes the builder's calls against the journal and the experts' backends."""

    def __init__(
        self,
        experts: tuple[ExpertSpec, ...],
        prompt: PromptSpec,
        build: BuildSpec,
        journal: CallJournal,
        make_backend: Callable[[ExpertSpec], Backend],
        show_progress: bool = True,
    ) -> None:
        self.experts = experts
        self.prompt = prompt
        self.build = build
        self.journal = journal
        self._make_backend = make_backend
        self._fingerprints = [expert_fingerprint(e, prompt) for e in experts]
        self._backends: dict[int, Backend] = {}
        self._backend_lock = threading.Lock()
        self.show_progress = show_progress
        self.calls_made = 0
        self.calls_reused = 0
        self.backend_seconds = 0.0
        self.setup_seconds = 0.0
        self.calls_per_expert: Counter[str] = Counter()
        self.peak_pending = 0  # the most calls submitted and not yet journaled at once
        self.seconds_per_expert: Counter[str] = Counter()

    def _backend(self, expert: int) -> Backend:
        with self._backend_lock:
            if expert not in self._backends:
                started = time.perf_counter()
                self._backends[expert] = self._make_backend(self.experts[expert])
                self.setup_seconds += time.perf_counter() - started
            return self._backends[expert]

    def _call(self, key: str, call: Call) -> CallRecord:
        """One call with retries; never raises for backend errors."""
        question, previous, expert, sample = call
        spec = self.experts[expert]
        backend = self._backend(expert)
        request = render_request(self.prompt, spec, question, previous, sample)
        error, attempts, completion = "", 0, None
        started = time.perf_counter()
        for attempt in range(self.build.retries + 1):
            attempts = attempt + 1
            try:
                completion = backend.complete(request)
                break
            except CallRejected as exc:
                error = f"rejected: {exc}"
                break
            except CallFailed as exc:
                error = str(exc)
            except Exception as exc:  # an unexpected backend error must not kill a long build
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.build.retries:
                time.sleep(self.build.backoff_s * 2**attempt)
        elapsed = time.perf_counter() - started
        with self._backend_lock:
            self.backend_seconds += elapsed
            self.calls_per_expert[spec.name] += 1
            self.seconds_per_expert[spec.name] += elapsed
        return _record(key, question, spec.name, previous, completion, error, attempts)

    def run_level(self, level: int, calls: list[Call]) -> list[CallRecord]:
        """Records for `calls` (in order): journaled ones reused, the others executed now."""
        keys = [
            call_key(self._fingerprints[e], q.question_id, q.text, prev, j)
            for q, prev, e, j in calls
        ]
        journaled = self.journal.lookup(keys)
        results: list[CallRecord | None] = []
        todo = []
        for index, key in enumerate(keys):
            known = journaled.get(key)
            if known is not None and known.ok:
                results.append(known)
            else:
                results.append(None)
                todo.append(index)
        self.calls_reused += len(calls) - len(todo)
        if not todo:
            return results  # type: ignore[return-value]
        with (
            progress(
                f"depth {level + 1}", len(todo), "calls", self.show_progress, status=self.status
            ) as advance,
            ThreadPoolExecutor(max_workers=self.build.concurrency) as pool,
        ):
            window = self.window()
            pending: deque[tuple[Future, int]] = deque()
            waiting = iter(todo)
            try:
                while True:
                    # Keep `window` calls submitted; take their records in submission order (the
                    # journal's order stays deterministic), so memory does not grow with the level.
                    for index in itertools.islice(waiting, window - len(pending)):
                        pending.append((pool.submit(self._call, keys[index], calls[index]), index))
                    self.peak_pending = max(self.peak_pending, len(pending))
                    if not pending:
                        break
                    future, index = pending.popleft()
                    record = future.result()
                    self.journal.add(record)
                    results[index] = record
                    self.calls_made += 1
                    advance(1)
            finally:
                for future, _ in pending:
                    future.cancel()
                self.journal.flush()
        return results  # type: ignore[return-value]

    def window(self) -> int:
        """How many calls are submitted ahead at most: enough to keep every worker busy while the
        oldest call is awaited."""
        return max(WINDOW_PER_WORKER * self.build.concurrency, MIN_WINDOW)

    def status(self) -> str:
        """What the backends report for the progress line (an HTTP expert's replicas)."""
        with self._backend_lock:
            backends = list(self._backends.values())
        return "; ".join(text for b in backends if (text := getattr(b, "status", lambda: "")()))

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()


def _record(
    key: str,
    question: Question,
    expert: str,
    previous: str | None,
    completion: Completion | None,
    error: str,
    attempts: int,
) -> CallRecord:
    if completion is None:
        return CallRecord(
            key,
            question.question_id,
            expert,
            previous,
            None,
            0,
            0,
            0.0,
            STATUS_FAILED,
            error,
            attempts,
        )
    return CallRecord(
        key,
        question.question_id,
        expert,
        previous,
        completion.text,
        completion.prompt_tokens,
        completion.completion_tokens,
        completion.latency_s,
        STATUS_OK,
        "",
        attempts,
    )
