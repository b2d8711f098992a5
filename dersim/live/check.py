"""Sim-to-real check: live routes on cached questions must be the cache's replayed routes.

Decoding is greedy, every call starts from an empty KV cache and the KTP shows only the previous
answer, so a live call on a cached (question, previous answer) returns the cached answer byte for
byte, and the policy, seeing the same embeddings, takes the same actions. The check runs the
policy live on N questions of a split and compares, step by step, with its greedy replay from the
cache (`GridTrainer.greedy`): the same expert sequence (STOP included), byte-identical answers,
and the same final state (the question's cached state whose answer is the live final answer, up to
whitespace, is the replay's final state). Any difference means the cache is not exact for this
backend (say, an HTTP server whose sampling defaults differ); each one is reported with both
texts. It also measures how far live state embeddings are from the cached ones, counts per expert
how many of its live calls answered byte for byte as the replay's (on the steps where both called
it), and says whether this machine runs the llama.cpp kernels the cache was built with (the
build's `backend_fingerprint` against this process's, by `replay_key`: the CPU model is shown,
not compared).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dersim.builder.backends.llama_cpp import kernel_fingerprint, replay_key
from dersim.builder.expand import normalise_answer
from dersim.builder.sources.question import Question
from dersim.cache.files import read_manifest
from dersim.cache.reader import open_cache
from dersim.cache.routes import RouteTables, policy_routes, replay
from dersim.env.tables import split_roots
from dersim.live.observation import raw_state_embeddings
from dersim.live.router import STOP, LiveRouter, Route

STOP_TOKEN = "STOP"


@dataclass
class StepAgreement:
    """Per step d: questions where the replay or the live route has a step d, and how many agree."""

    questions: int = 0
    same_expert: int = 0
    same_answer: int = 0


@dataclass
class ExpertAgreement:
    """Per expert: live calls on steps where the replay called it too, and how many answered byte
    for byte alike."""

    compared: int = 0
    same_answer: int = 0


@dataclass
class CheckReport:
    """Agreement of live routes with their replay, mismatches with both texts, embedding distances,
    latency."""

    policy: str
    split: str
    questions: int = 0
    agreeing: int = 0  # every step and the final state agree
    same_final_state: int = 0
    steps: dict[int, StepAgreement] = field(default_factory=lambda: defaultdict(StepAgreement))
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    states_compared: int = (
        0  # live states whose answer is the cached state's: their embeddings compared
    )
    embeddings_equal: int = 0  # ... of which bit for bit
    max_embedding_diff: float = 0.0
    question_seconds: list[float] = field(default_factory=list)
    call_seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    experts: dict[str, ExpertAgreement] = field(
        default_factory=dict
    )  # every expert (or pair), in the run's order
    kernels: dict[str, Any] = field(default_factory=dict)  # `kernel_report` of the cache

    @property
    def full_agreement(self) -> bool:
        return self.agreeing == self.questions

    def to_dict(self) -> dict[str, Any]:
        median = statistics.median
        return {
            "policy": self.policy,
            "split": self.split,
            "questions": self.questions,
            "agreeing": self.agreeing,
            "same_final_state": self.same_final_state,
            "full_agreement": self.full_agreement,
            "steps": {d: vars(a) for d, a in sorted(self.steps.items())},
            "experts": {name: vars(a) for name, a in self.experts.items()},
            "fingerprint": self.kernels,
            "mismatches": self.mismatches,
            "embeddings": {
                "states_compared": self.states_compared,
                "bitwise_equal": self.embeddings_equal,
                "max_abs_diff": self.max_embedding_diff,
            },
            "latency": {
                "median_question_s": median(self.question_seconds)
                if self.question_seconds
                else None,
                "median_call_s": {name: median(v) for name, v in self.call_seconds.items()},
                "calls": {name: len(v) for name, v in self.call_seconds.items()},
            },
        }


def sim_to_real(router: LiveRouter, n: int, split: str = "test") -> CheckReport:
    """Route the first `n` questions of `split` live and compare each with its cached replay."""
    policy = router.policy
    trainer = policy.run.trainer
    roots, ids = split_roots(trainer.tables, trainer.cache, split)
    roots, ids = roots[:n], ids[:n]
    replay = trainer.greedy(policy.run.params, trainer.env_params, roots)
    actions = replay["actions"][policy.index]
    final_states = replay["final_state"][policy.index]
    cache = open_cache(trainer.cache)
    answers = cache.states["answer"].to_list()
    cached_embedding, _ = raw_state_embeddings(trainer.cache)
    rows = {r["question_id"]: r for r in cache.questions.iter_rows(named=True)}
    states_by_answer: dict[str, dict[str, int]] = defaultdict(dict)
    for state, (qid, depth) in enumerate(
        zip(cache.states["question_id"], cache.states["depth"], strict=True)
    ):
        if depth > 0:
            states_by_answer[qid][normalise_answer(answers[state])] = state
    names = trainer.tables.expert_names
    next_state = trainer.tables.next_state
    report = CheckReport(
        policy.name,
        split,
        experts={name: ExpertAgreement() for name in names},
        kernels=kernel_report(read_manifest(trainer.cache)),
    )
    for q, qid in enumerate(ids):
        row = rows[qid]
        question = Question(
            qid, row["question"], row["reference"], tuple(row["references"]), row["label"]
        )
        route = router.route(question)
        replay_tokens, replay_states = _walk_replay(actions[q], int(roots[q]), next_state, names)
        live_states = _live_states(int(roots[q]), route, states_by_answer[qid])
        _compare(
            report, route, replay_tokens, replay_states, live_states, int(final_states[q]), answers
        )
        _compare_embeddings(report, route, live_states, answers, cached_embedding)
        report.question_seconds.append(route.wall_s)
        for step in route.steps:
            report.call_seconds[step.expert].append(step.latency_s)
    return report


def _walk_replay(
    actions: np.ndarray, root: int, next_state: np.ndarray, names: tuple[str, ...]
) -> tuple[list[str], list[int]]:
    """The replay's tokens (expert names, then STOP if it stopped so) and the states it visited."""
    route = policy_routes(actions, len(names))
    outcome = replay(route[None], np.array([root]), RouteTables(next_state), with_path=True)
    calls = int(outcome.calls[0])
    tokens = [names[e] for e in route[:calls]]
    if calls < len(actions) and actions[calls] == len(names):
        tokens.append(STOP_TOKEN)
    return tokens, [int(s) for s in outcome.path[0, : calls + 1]]


def _live_states(root: int, route: Route, by_answer: dict[str, int]) -> list[int]:
    """The cache state of each state the live route visited: the root, then the question's state
    whose answer is the live answer up to whitespace (the cache's dedup rule), or -1 when it has
    none."""
    return [root] + [by_answer.get(normalise_answer(step.answer), -1) for step in route.steps]


def _compare(
    report: CheckReport,
    route: Route,
    replay_tokens: list[str],
    replay_states: list[int],
    live_states: list[int],
    replay_final: int,
    answers: list[str],
) -> None:
    live_tokens = [s.expert for s in route.steps] + (
        [STOP_TOKEN] if route.stopped_by == STOP else []
    )
    qid = route.question.question_id
    agree = True
    for d in range(1, max(len(live_tokens), len(replay_tokens)) + 1):
        counts = report.steps[d]
        counts.questions += 1
        replay_token = replay_tokens[d - 1] if d <= len(replay_tokens) else "(ended)"
        live_token = live_tokens[d - 1] if d <= len(live_tokens) else "(ended)"
        if replay_token != live_token:
            agree = False
            report.mismatches.append(
                {
                    "question_id": qid,
                    "step": d,
                    "what": "expert",
                    "replay": replay_token,
                    "live": live_token,
                }
            )
            break  # later steps follow different routes: nothing more to compare
        counts.same_expert += 1
        if live_token == STOP_TOKEN:
            counts.same_answer += 1
            continue
        cached, live = answers[replay_states[d]], route.steps[d - 1].answer
        expert = report.experts[live_token]
        expert.compared += 1
        if cached == live:
            counts.same_answer += 1
            expert.same_answer += 1
            continue
        agree = False
        report.mismatches.append(
            {
                "question_id": qid,
                "step": d,
                "what": "answer",
                "expert": live_token,
                "replay": cached,
                "live": live,
            }
        )
    if live_states[-1] == replay_final:
        report.same_final_state += 1
    else:
        agree = False
        report.mismatches.append(
            {
                "question_id": qid,
                "step": None,
                "what": "final state",
                "replay": answers[replay_final],
                "live": route.answer,
            }
        )
    report.questions += 1
    report.agreeing += agree


def _compare_embeddings(
    report: CheckReport,
    route: Route,
    live_states: list[int],
    answers: list[str],
    cached: np.ndarray,
) -> None:
    """Live embedding vs cached embedding for every visited state whose live answer is the cached
    one."""
    live_answers = [""] + [s.answer for s in route.steps]
    for state, answer, embedding in zip(live_states, live_answers, route.embeddings, strict=True):
        if state < 0 or answers[state] != answer:
            continue
        diff = float(np.abs(embedding - cached[state]).max())
        report.states_compared += 1
        report.embeddings_equal += diff == 0.0
        report.max_embedding_diff = max(report.max_embedding_diff, diff)


def kernel_report(manifest: dict[str, Any]) -> dict[str, Any]:
    """Whether this machine runs the in-process kernels the cache was built with: `status` is match,
    differs, unknown (a cache built before fingerprints were recorded) or not applicable (no expert
    runs on this machine's kernels); per backend, both fingerprints, what differs and both CPUs."""
    recorded = manifest.get("backend_fingerprint")
    if recorded is None:
        return {"status": "unknown", "backends": {}}
    if not recorded:
        return {"status": "not applicable", "backends": {}}
    backends = {name: _compare_kernels(name, build) for name, build in recorded.items()}
    return {
        "status": "differs" if any(b["differences"] for b in backends.values()) else "match",
        "backends": backends,
    }


def _compare_kernels(backend: str, build: dict[str, Any]) -> dict[str, Any]:
    here = _kernels_here(backend)
    if here is None:
        differences = {"backend": {"build": backend, "here": "not available here"}}
    else:
        mine, theirs = replay_key(here), replay_key(build)
        differences = {
            k: {"build": theirs.get(k), "here": mine.get(k)}
            for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)
        }
    return {
        "build": build,
        "here": here,
        "differences": differences,
        "cpu": {"build": build.get("cpu", "unknown"), "here": (here or {}).get("cpu", "unknown")},
    }


def _kernels_here(backend: str) -> dict[str, Any] | None:
    """This process's fingerprint of `backend` (None: a backend without one, or llama-cpp-python
    missing)."""
    if backend != "llama_cpp":
        return None
    try:
        return kernel_fingerprint()
    except ImportError:
        return None


def describe_kernels(report: dict[str, Any]) -> list[str]:
    """One line per backend of a `kernel_report`, for the terminal."""
    status = report["status"]
    if status == "unknown":
        return ["kernels: unknown: the cache records no fingerprint (built by an older dersim)"]
    if status == "not applicable":
        return [
            "kernels: not applicable: no expert runs in this process on this machine's kernels "
            "(synthetic answers are the same everywhere, HTTP experts answer on their servers)"
        ]
    lines = []
    for backend, entry in report["backends"].items():
        cpus = f"CPU here {entry['cpu']['here']!r}, build {entry['cpu']['build']!r}"
        if not entry["differences"]:
            build = entry["build"]
            lines.append(
                f"kernels ({backend}): match the build's (llama-cpp-python "
                f"{build.get('llama_cpp_python')}, {' '.join(build.get('features', []))}); {cpus}"
            )
            continue
        what = "; ".join(
            _difference(key, d["build"], d["here"]) for key, d in entry["differences"].items()
        )
        lines.append(
            f"kernels ({backend}): DIFFER from the build's: {what}; {cpus}: answers may differ"
        )
    return lines


def _difference(key: str, build: Any, here: Any) -> str:
    if isinstance(build, list) and isinstance(here, list):
        parts = [
            f"{side} only {' '.join(sorted(set(a) - set(b)))}"
            for side, a, b in (("build", build, here), ("here", here, build))
            if set(a) - set(b)
        ]
        return f"{key}: {', '.join(parts)}"
    return f"{key}: build {build}, here {here}"
