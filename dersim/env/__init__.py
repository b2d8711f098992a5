"""The DER environment replayed from a cache: a JAX env (`der_env`) and a plain Gymnasium twin
(`reference`) with exactly the same semantics, written down here once.

Episode. A question is drawn uniformly from the chosen split (`dersim.cache.splits`: train, val,
test or all). The state is its root state (no answer yet), t = 0 calls made, P_prev = 0,
accumulated cost 0.

Actions. 0..N-1 call that expert; action N is STOP (the `learned` terminator). The JAX env always
has N + 1 actions, so that every terminator mode has the same shapes (a policy masks STOP where
its mode does not use it), and clips actions to 0..N; the Gymnasium env offers STOP only in
`learned` mode.

Calling expert a in state s (only while t < T_max; an episode always ends at T_max):
    s' = next_state[s, a],  P = score[s'],  C = cost[s, a],  t' = t + 1,  c = alpha * C / cost_scale
  reward, by reward mode:
    paper  (the paper's: every call earns its answer's score, beta pays improvement)
            r = P - c                          if t == 0
            r = P + beta * (P - P_prev) - c    if t > 0
    final  (only the answer the episode ends with is paid; makes stopping a real decision)
            r = -c, and at done r += P (the score of the final answer); beta is unused
  done, by terminator:
    oracle  (the paper's; reads the reference, so not deployable): stop when the answer reaches
            p0. With judge_error = eps > 0 (RouterBench's noisy evaluator) the decision is
            flipped for a fixed random eps share of the states: stop = (P >= p0) XOR flip[s'],
            where flip[s] = noise[s] < eps and noise is one seeded uniform draw per state;
    judge   (deployable): stop when the judge (`dersim.env.judge`, a classifier fitted on the
            train split's states, never on the routed question's reference) gives the new answer
            probability >= judge_threshold: stop = judge_prob[s'] >= judge_threshold;
    none    (the paper's "w/o Term."): never stops before T_max;
    learned (deployable: the policy decides when to stop, with STOP).
  and always done at t' == T_max. At done r += gamma if P >= p0, else -gamma (P is the final
  answer's true score: the bonus reads the reference in every mode, as training always does).
STOP in state s (any mode): done; the episode's last answer is scored: P = score[s] (0 at the
root), no call, no cost, t unchanged; r = +-gamma as above, plus P under the final reward.

Scores are float32 and P >= p0 compares them with p0 rounded to float32; the judge's and the
noise's comparisons are float32 too.

At done the episode's outcome is reported (final score P, calls t, summed cost, return,
success = P >= p0) and the env auto-resets to a new question (the returned observation is the
new episode's first). Observation: the state's embedding, then a one-hot of t over 0..D (D =
the cache's depth, so T_max can vary without changing shapes), then (by default; a router knows
whom it called) a one-hot of the last action over 0..N (N = none yet).

Exact values. Every setting above is Markov in (t, s), or in (t, s, last action) for a policy that
observes it, so the exact expected return of any policy follows from D backward passes over the
cache (`dersim.env.values`, sharing this module's reward and done rules with the JAX env).

Cost C per call is in the cost mode's raw unit (`dersim.cache.costs`: params, tokens, latency,
latency_norm, usd); outcomes report it raw. cost_scale divides it inside the reward only: with
`auto` it is the mean per-call cost of the dearest expert on the cache's train split, so alpha = 1
means "the dearest call costs as much as the whole score range" on every cache; 1 keeps the
paper's raw units (its alpha = 0.001 per billion parameters). Routes never step past the built
depth: T_max > D is an error.
"""

from __future__ import annotations

import importlib
from typing import Any

from dersim.cache.costs import COST_MODES

TERMINATORS = ("oracle", "learned", "none", "judge")
REWARDS = ("paper", "final")
DEPLOYABLE_TERMINATORS = ("learned", "judge", "none")  # the oracle reads the reference

# The public API, imported on first use so that `import dersim.env` (every command does it for the
# constants above) does not load JAX and Gymnasium.
_API = {
    "EnvSpec": "dersim.env.tables",
    "EnvTables": "dersim.env.tables",
    "load_tables": "dersim.env.tables",
    "EnvParams": "dersim.env.der_env",
    "EnvState": "dersim.env.der_env",
    "make_params": "dersim.env.der_env",
    "reset": "dersim.env.der_env",
    "step": "dersim.env.der_env",
    "DERGymEnv": "dersim.env.reference",
    "EnvError": "dersim.errors",
}

__all__ = ["COST_MODES", "DEPLOYABLE_TERMINATORS", "REWARDS", "TERMINATORS", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'dersim.env' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
