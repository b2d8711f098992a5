"""A trained run's policies, ready to act on live states.

`LiveRun` loads a run directory once (its kept parameters, the best deployable policy chosen on
val, the judge, the embedding projection); `LiveRun.policy(i)` is one servable policy. A policy
acts exactly as it does in the env's greedy episodes (`dersim.trainer.policy.action_scores`: the
same network or linear head and masking, STOP only under the learned terminator), on an env whose
embedding table is the live state's observed embedding. Policies that read the reference answer,
which a live question does not have, are refused: those that stop by the oracle terminator, and
under the two-experts-per-step view those whose pairs keep the answer the reference prefers. The
run's cache must be the one it trained on (`check_run_cache`: a moved copy passes).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dersim.env import DEPLOYABLE_TERMINATORS
from dersim.env.der_env import EnvParams
from dersim.env.judge import JUDGE_FILE, Judge
from dersim.env.tables import EnvSpec, reads_reference
from dersim.errors import DersimError
from dersim.live.observation import ObservedEmbedding
from dersim.trainer.checkpoint import check_run_cache, load_checkpoint
from dersim.trainer.grid import policy_axes
from dersim.trainer.policy import action_scores
from dersim.trainer.run import GridTrainer, TrainState
from dersim.trainer.selection import choose_policy


def per_policy(env_params: EnvParams, index: int) -> EnvParams:
    """One policy's EnvParams out of the stacked ones (per-policy leaves indexed, tables shared)."""
    return jax.tree.map(
        lambda axis, leaf: leaf if axis is None else leaf[index],
        policy_axes(env_params),
        env_params,
        is_leaf=lambda x: x is None,
    )


class LiveRun:
    """A run directory loaded for live routing: every policy's kept parameters and what they
    observe."""

    def __init__(self, run_dir: Path, cache: Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        check_run_cache(self.run_dir, cache)
        self.trainer = GridTrainer.from_run(self.run_dir, cache)
        self.name = self.run_dir.resolve().name
        # The checkpoint restored into an abstract template: the trainer's own load() compiles and
        # runs the grid's initialisation only to get that structure (seconds for nothing live).
        state = load_checkpoint(self.trainer.out, jax.eval_shape(self.trainer.initial_state))
        self.params = self.trainer.kept_params(state)
        self.best = self._best(state)
        self.observed = ObservedEmbedding(self.trainer.cache, self.trainer.spec)
        judged = any(p["terminator"] == "judge" for p in self.trainer.policies) or picks_by_judge(
            self.trainer.spec
        )
        self.judge = Judge.load(self.run_dir / JUDGE_FILE) if judged else None
        network = self.trainer.network
        self.logits_fn = jax.jit(
            lambda params, env, rows, t, last: action_scores(
                network, params, env.replace(embedding=rows), jnp.zeros((1,), jnp.int32), t, last
            )[0]
        )

    def _best(self, state: TrainState) -> int | None:
        """The best deployable policy on val (on train when the run has no val split)."""
        chosen = self.trainer.best_on_val(state)
        if chosen is not None:
            return chosen["policy"]
        result = self.trainer.greedy(
            self.params, self.trainer.env_params, self.trainer.tables.roots
        )
        score = self.trainer.tables.score[result["final_state"]].mean(axis=1)
        return choose_policy(
            self.trainer.policies, score, result["env_cost"].mean(axis=1), self.trainer.spec
        )

    @property
    def servable(self) -> list[int]:
        """Indices of the policies that can run live (reading no reference answer)."""
        spec = self.trainer.spec
        return [
            i
            for i, p in enumerate(self.trainer.policies)
            if not reads_reference(spec, p["terminator"])
        ]

    def model_names(self) -> dict[str, int]:
        """OpenAI model names: der-<run>-<policy> for each servable policy, der-<run> for the
        best."""
        names = {f"der-{self.name}-{i}": i for i in self.servable}
        if self.best is not None:
            names = {f"der-{self.name}": self.best, **names}
        return names

    def policy(self, index: int | None = None) -> LivePolicy:
        """Policy `index` (default: the best deployable one); one-line errors for the oracle or a
        bad index."""
        n = len(self.trainer.policies)
        if index is None:
            if self.best is None:
                why = (
                    "keeps each pair's better answer by the reference (pair_pick 'reference')"
                    if _pairs_by_reference(self.trainer.spec)
                    else "stops by the oracle terminator"
                )
                raise DersimError(
                    f"{self.run_dir}: every policy {why}, which reads the reference answer; none "
                    "can route live"
                )
            index = self.best
        if not 0 <= index < n:
            raise DersimError(f"--policy {index}: the run has policies 0..{n - 1}")
        settings = self.trainer.policies[index]
        if settings["terminator"] not in DEPLOYABLE_TERMINATORS:
            raise DersimError(
                f"--policy {index} stops by the oracle terminator, which reads the reference "
                "answer; a live question has none (choose a learned, judge or none policy)"
            )
        if _pairs_by_reference(self.trainer.spec):
            raise DersimError(
                f"--policy {index} keeps each pair's better answer by the reference answer "
                "(pair_pick 'reference'), which a live question does not have (a pairs run picked "
                "by the judge can route live)"
            )
        return LivePolicy(self, index)


def picks_by_judge(spec: EnvSpec) -> bool:
    """Whether each step calls a pair of experts and keeps the answer the judge prefers."""
    return spec.experts_per_step == 2 and spec.pair_pick == "judge"


def _pairs_by_reference(spec: EnvSpec) -> bool:
    return spec.experts_per_step == 2 and spec.pair_pick == "reference"


class LivePolicy:
    """One deployable policy of a `LiveRun`: its action for a live state, and its judge."""

    def __init__(self, run: LiveRun, index: int) -> None:
        self.run = run
        self.index = index
        self.settings = run.trainer.policies[index]
        self.terminator: str = self.settings["terminator"]
        self.t_max = int(self.settings["t_max"])
        self.judge_threshold = float(self.settings["judge_threshold"])
        self.n_experts = len(
            run.trainer.tables.expert_names
        )  # actions but STOP (pairs of experts, under pairs)
        self.max_depth = run.trainer.tables.max_depth
        self.transfer = (
            run.trainer.spec.transfer
        )  # False: every call answers from the question alone (no KTP)
        self.pairs = run.trainer.spec.experts_per_step == 2
        self._params = jax.tree.map(lambda x: x[index], run.params)
        self._env = per_policy(run.trainer.env_params, index)

    @property
    def name(self) -> str:
        return f"der-{self.run.name}-{self.index}"

    def observed_step(self, t: int) -> int:
        """The step the policy is shown after t calls: t itself within its T_max; beyond it (live
        routes may go deeper) the last step it ever acted on in training, T_max - 1: an episode ends
        at T_max, so the step slots from T_max on were never trained."""
        return min(t, self.t_max - 1)

    def logits(self, raw_embedding: np.ndarray, t: int, last_action: int) -> np.ndarray:
        """Masked logits [N + 1] for the state whose raw embedding is `raw_embedding` [d]."""
        rows = jnp.asarray(self.run.observed(raw_embedding[None, :]))
        step, last = (
            jnp.asarray([self.observed_step(t)], jnp.int32),
            jnp.asarray([last_action], jnp.int32),
        )
        return np.asarray(self.run.logits_fn(self._params, self._env, rows, step, last))

    def act(self, raw_embedding: np.ndarray, t: int, last_action: int) -> int:
        """The greedy action: an expert index, or N (STOP, learned terminator only)."""
        return int(np.argmax(self.logits(raw_embedding, t, last_action)))

    def judge_prob(self, raw_embedding: np.ndarray) -> float | None:
        """The judge's P(good enough) for a new answer state (None unless the terminator is the
        judge)."""
        if self.terminator != "judge" or self.run.judge is None:
            return None
        return float(self.run.judge.prob(raw_embedding[None, :])[0])

    def prefers_second(self, first: np.ndarray, second: np.ndarray) -> bool:
        """The pair view's pick between two answers' raw embeddings, as
        `dersim.env.views.with_pairs` makes it: the second only when the judge gives it a strictly
        higher probability."""
        assert self.run.judge is not None, "a pairs run picked by the judge has its judge"
        prob = self.run.judge.prob
        return bool(prob(second[None, :])[0] > prob(first[None, :])[0])

    def judge_stops(self, prob: float | None) -> bool:
        """The env's rule, in float32: stop when prob >= judge_threshold."""
        return prob is not None and np.float32(prob) >= np.float32(self.judge_threshold)
