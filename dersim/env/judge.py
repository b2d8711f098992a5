"""The judge terminator: a classifier that says "this answer is good enough" without the reference.

It is a logistic regression from a state's embedding to P >= p0, fitted on the answer states
(depth > 0) of the train split's questions only, so routing a val, test or live question never
reads that question's reference. The oracle terminator needs the reference; the judge is its
deployable stand-in, and its accuracy on val and test says how good a stand-in it is.

A fitted judge is a weight vector and a bias (saved as JSON beside a run, never pickled); the
env precomputes its probability for every state, and a policy-level threshold turns it into a
stop decision (`prob >= threshold`), so one judge serves a sweep of thresholds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dersim.errors import DersimError

JUDGE_FILE = "judge.json"


@dataclass(frozen=True)
class Judge:
    """P(score >= p0 | embedding) = sigmoid(embedding @ coef + intercept)."""

    coef: tuple[float, ...]
    intercept: float
    metric: str
    p0: float
    fitted_on: int  # answer states it was fitted on
    positive_rate: float  # share of those states with P >= p0

    def prob(self, embedding: np.ndarray) -> np.ndarray:
        """float32 [S]: the probability that each state's answer is good enough."""
        logits = np.asarray(embedding, dtype=np.float64) @ np.asarray(self.coef) + self.intercept
        return (1 / (1 + np.exp(-logits))).astype(np.float32)

    def accuracy(self, embedding: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> float:
        """Share of states where the judge's stop decision equals the reference's (P >= p0)."""
        if len(score) == 0:
            return float("nan")
        truth = np.asarray(score, np.float32) >= np.float32(self.p0)
        return float(((self.prob(embedding) >= threshold) == truth).mean())

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Judge:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{**data, "coef": tuple(float(c) for c in data["coef"])})
        except FileNotFoundError:
            raise DersimError(f"{path}: missing (the run has no judge)") from None
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            raise DersimError(f"{path}: not a judge file ({exc})") from None


def oracle_noise(n_states: int, seed: int) -> np.ndarray:
    """float32 [S]: one seeded uniform draw per state; the noisy oracle flips its decision on the
    states whose draw is below judge_error (fixed per state, so a state is always judged alike)."""
    return np.random.default_rng(seed).random(n_states, dtype=np.float32)


def fit_judge(embedding: np.ndarray, score: np.ndarray, p0: float, metric: str) -> Judge:
    """Fit on the rows given (the caller picks the train split's answer states). Deterministic.

    With one class only (every answer good, or none), the judge always says that class."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(score, np.float32) >= np.float32(p0)
    if len(labels) == 0:
        raise DersimError("the judge needs answer states on the train split to fit on")
    rate = float(labels.mean())
    if rate in (0.0, 1.0):
        bias = 30.0 if rate == 1.0 else -30.0
        return Judge(
            tuple(0.0 for _ in range(embedding.shape[1])),
            bias,
            metric,
            float(p0),
            len(labels),
            rate,
        )
    model = LogisticRegression(C=1.0, max_iter=5000)
    model.fit(np.asarray(embedding, dtype=np.float64), labels)
    return Judge(
        tuple(float(c) for c in model.coef_[0]),
        float(model.intercept_[0]),
        metric,
        float(p0),
        len(labels),
        rate,
    )
