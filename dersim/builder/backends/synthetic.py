"""A deterministic synthetic expert with controllable skill and refinement, for tests and scale.

It is not a language model: it writes answers from the question's reference, so that the real
metrics (accuracy, token F1, ROUGE-L, BERTScore) see a known quality. An answer is the label word
(correct or wrong) followed by the first `level / levels` of the reference's words. Options:
- `skill` in [0, 1]: chance of a correct label and the mean detail level on a fresh question;
- `refine` in [0, 1]: how much of a previous answer's quality the expert keeps and builds on;
- `copy` in [0, 1]: chance of repeating the previous answer verbatim (small models often do);
- `fix` in [0, 1]: chance of correcting a wrong previous answer (an expert that needs a draft);
- `topics`: a table from a question's first word (lower case) to the expert's skill on such
  questions, in place of `skill` (experts good at some kinds of question, visible in the text);
- `levels`: detail levels (more levels, more distinct states);
- `latency_ms`: sleep per call, to simulate a backend's speed (and the latency it reports);
- `fail_rate`, `fail_attempts`: that share of calls fails on its first `fail_attempts` attempts
  (in each process), to exercise retries and failure records.
Every draw is seeded by a hash of (seed, expert, question, previous answer), so any call gives the
same answer in any process and in any order: the property that makes cached builds exact. At
temperature > 0 the request's seed (its sample index) joins the hash: each sample is an
independent draw from the same answer distribution (its magnitude does not matter), so a
sample's chance of a correct label is exactly what it is for the greedy expert.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from dersim.builder.backends.base import CallFailed, CallRequest, Completion
from dersim.builder.sources.question import Question
from dersim.errors import BackendError
from dersim.recipe import ExpertSpec


@dataclass(frozen=True)
class SyntheticSkill:
    """The behaviour knobs of one synthetic expert (see the module docstring)."""

    skill: float = 0.5
    refine: float = 0.5
    copy: float = 0.0
    fix: float = 0.0
    topics: dict[str, float] = field(default_factory=dict)
    levels: int = 4
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    fail_attempts: int = 1_000_000
    seed: int = 0


def first_word(text: str) -> str:
    """The question's first word, lower case, without punctuation ('' for a text without words)."""
    words = re.findall(r"\w+", text.lower())
    return words[0] if words else ""


def _wrong_label(label: str) -> str:
    """A deterministic wrong answer for a yes/no or numeric label."""
    if label.lower() in ("yes", "no"):
        return "No" if label.lower() == "yes" else "Yes"
    try:
        return f"{float(label) + 1:g}"
    except ValueError:
        return "unknown"


def _detail_words(question: Question) -> list[str]:
    """The reference's words without a leading yes/no label."""
    return re.sub(r"^\s*(yes|no)\b[.,!]?\s*", "", question.reference, flags=re.IGNORECASE).split()


class SyntheticBackend:
    """Deterministic expert whose answer quality follows `SyntheticSkill`."""

    prompt_format = "chat"

    def __init__(self, spec: ExpertSpec) -> None:
        self.name = spec.name
        known = set(SyntheticSkill.__dataclass_fields__)
        unknown = set(spec.options) - known
        if unknown:
            raise BackendError(
                f"expert '{spec.name}': unknown synthetic option '{sorted(unknown)[0]}' "
                f"(known: {', '.join(sorted(known))})"
            )
        try:
            self.skill = SyntheticSkill(**spec.options)
        except TypeError as exc:
            raise BackendError(f"expert '{spec.name}': bad synthetic options: {exc}") from None
        for key in ("skill", "refine", "copy", "fix", "fail_rate"):
            if not 0.0 <= getattr(self.skill, key) <= 1.0:
                raise BackendError(
                    f"expert '{spec.name}': synthetic option '{key}' must be in [0, 1]"
                )
        if not isinstance(self.skill.topics, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and 0.0 <= v <= 1.0
            for k, v in self.skill.topics.items()
        ):
            raise BackendError(
                f"expert '{spec.name}': synthetic option 'topics' must map first words to skills "
                "in [0, 1]"
            )
        if self.skill.levels < 1:
            raise BackendError(f"expert '{spec.name}': synthetic option 'levels' must be >= 1")
        self._attempts: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def _rng(self, request: CallRequest) -> tuple[bytes, np.random.Generator]:
        key = hashlib.blake2b(
            "\x1f".join(
                [
                    str(self.skill.seed),
                    self.name,
                    request.question.question_id,
                    "\x00" if request.previous_answer is None else request.previous_answer,
                    *([f"sample {request.seed}"] if request.sampled else []),
                ]
            ).encode(),
            digest_size=16,
        ).digest()
        return key, np.random.default_rng(int.from_bytes(key, "little"))

    def _read_answer(self, question: Question, answer: str) -> tuple[bool, int]:
        """Recover (correct, level) of a previous synthetic answer from its text."""
        words = answer.split()
        correct = bool(words) and words[0].rstrip(".").lower() == question.label.lower()
        detail = len(_detail_words(question))
        level = round((len(words) - 1) / detail * self.skill.levels) if detail and words else 0
        return correct, min(max(level, 0), self.skill.levels)

    def _write_answer(self, question: Question, correct: bool, level: int) -> str:
        label = question.label or "Answer"
        head = (label.capitalize() if correct else _wrong_label(label).capitalize()) + "."
        detail = _detail_words(question)
        return " ".join([head, *detail[: round(len(detail) * level / self.skill.levels)]])

    def complete(self, request: CallRequest) -> Completion:
        """Answer deterministically; may fail on purpose (see `fail_rate`)."""
        started = time.perf_counter()
        key, rng = self._rng(request)
        flaky, copy_draw, correct_draw, level_noise = rng.random(4)
        if flaky < self.skill.fail_rate:
            with self._lock:
                attempt = self._attempts.get(key, 0)
                self._attempts[key] = attempt + 1
            if attempt < self.skill.fail_attempts:
                raise CallFailed(f"synthetic failure (attempt {attempt + 1})")
        s = replace(
            self.skill,
            skill=self.skill.topics.get(first_word(request.question.text), self.skill.skill),
        )
        own_level = int(np.clip(round(s.skill * s.levels + (level_noise - 0.5) * 2), 0, s.levels))
        if request.previous_answer is None:
            text = self._write_answer(request.question, bool(correct_draw < s.skill), own_level)
        elif copy_draw < s.copy:
            text = request.previous_answer
        else:
            prev_correct, prev_level = self._read_answer(request.question, request.previous_answer)
            p_correct = s.skill + (s.refine if prev_correct else s.fix) * (1 - s.skill)
            level = round(s.refine * max(prev_level, own_level) + (1 - s.refine) * own_level)
            text = self._write_answer(request.question, bool(correct_draw < p_correct), level)
        if s.latency_ms > 0:
            time.sleep(max(0.0, s.latency_ms / 1000 - (time.perf_counter() - started)))
        # The simulated latency, not the measured one: synthetic caches stay byte-reproducible.
        return Completion(
            text=text,
            prompt_tokens=len(request.prompt.split()),
            completion_tokens=len(text.split()),
            latency_s=s.latency_ms / 1000,
        )

    def close(self) -> None:
        """Nothing to release."""
