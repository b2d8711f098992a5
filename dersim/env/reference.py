"""The DER environment as a plain Gymnasium env: the ground truth that the JAX env is tested
against.

Written for clarity, not speed. It reads the cache itself with `open_cache`, builds a dict of the
built calls with a Python loop and follows the semantics of `dersim.env` line by line; it shares
only `resolve_spec` (defaults and validation of the `EnvSpec`) with the JAX env's loader, and
raises the same `EnvError` messages.

Differences from the JAX env, all standard Gymnasium:
- no auto-reset: after `terminated` the caller resets; stepping an ended episode is an error;
- the action space is `Discrete(N + 1)` (N = STOP) in `learned` mode and `Discrete(N)` otherwise;
- at termination the returned observation is the final state's, and `info` holds the episode's
  outcome (final_score, calls, cost, return, success, question: as the JAX env's outcome dict);
- `truncated` is always False: reaching T_max is part of the task (t is in the observation).
Scores are float32 in the cache; P >= p0 is decided in float32 (p0 rounded to float32), exactly
as the JAX env does. Rewards and costs are summed in float64.

    env = DERGymEnv("cache/synthetic", EnvSpec(metric="accuracy", p0=0.5))
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dersim.cache.costs import require_priced, resolve_cost_scale
from dersim.cache.reader import open_cache
from dersim.cache.schema import STATUS_OK
from dersim.env.judge import oracle_noise
from dersim.env.projection import project_states
from dersim.env.tables import (
    EnvError,
    EnvSpec,
    chosen_questions,
    fit_state_judge,
    incomplete_message,
    question_assignment,
    resolve_spec,
)


class DERGymEnv(gym.Env):
    """One DER episode at a time over the cache in `cache_dir` (see `dersim.env` for the rules).

    The resolved settings (defaults filled in from the cache) are `env_spec`; Gymnasium's own
    `spec` attribute (its registry entry) is left alone.

    Args:
        cache_dir: the cache directory (read with `open_cache`, checked).
        spec: the environment's settings; the twin replays the cache as built (transfer, one
            expert per step).
        render_mode: None or "ansi" (the episode so far as text).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        cache_dir: str | Path,
        spec: EnvSpec = EnvSpec(),  # noqa: B008 (frozen, immutable)
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode '{render_mode}' is not supported (known: ansi)")
        self.render_mode = render_mode
        directory = Path(cache_dir)
        cache = open_cache(directory)
        spec = resolve_spec(spec, cache.manifest, directory)
        if not spec.transfer or spec.experts_per_step != 1:
            raise EnvError(
                "the Gymnasium twin replays the cache as built: the derived views (no transfer, "
                "two experts per step) exist in the JAX env only"
            )
        self.env_spec = spec
        self.cache_dir = directory
        self.max_depth = cache.depth
        self.expert_names = tuple(cache.expert_names)
        self.n_experts = len(self.expert_names)
        self.stop_action = self.n_experts  # only offered by the learned terminator

        # States: ids must be 0..S-1 so that they index the arrays below (and match the JAX env).
        state_ids = cache.states["state_id"].to_list()
        if state_ids != list(range(len(state_ids))):
            raise EnvError(
                f"{directory / 'states.parquet'}: state_id is not 0..S-1 (run dersim cache verify)"
            )
        self.n_states = len(state_ids)
        self.score = cache.states[spec.metric].to_numpy().astype(np.float32)
        self.embedding = (
            np.stack(cache.states["embedding"].to_numpy())
            .astype(np.float32)
            .reshape(self.n_states, -1)
        )
        self.depth = cache.states["depth"].to_list()
        self.answers = cache.states["answer"].to_list()

        # Questions: this run's train / val / test assignment, and the chosen split in cache order
        # (the JAX env's question index).
        assigned = question_assignment(cache.questions["split"].to_numpy(), spec)
        chosen = chosen_questions(assigned, spec.split, directory)
        rows = list(cache.questions.iter_rows(named=True))
        self.roots = [
            int(row["root_state_id"]) for row, keep in zip(rows, chosen, strict=True) if keep
        ]
        self.question_ids = [
            row["question_id"] for row, keep in zip(rows, chosen, strict=True) if keep
        ]
        self.question_texts = [
            row["question"] for row, keep in zip(rows, chosen, strict=True) if keep
        ]
        state_questions = cache.states["question_id"].to_numpy()
        train_ids = [
            row["question_id"]
            for row, split in zip(rows, assigned, strict=True)
            if split == "train"
        ]
        cache_train_ids = {row["question_id"] for row in rows if row["split"] == "train"}

        # The judge (an input table, fitted by the same function as the JAX env's) and the noise.
        self.judge_prob = np.zeros(self.n_states, np.float32)
        if spec.terminator == "judge":
            train_states = np.isin(state_questions, train_ids)
            judge = fit_state_judge(
                self.embedding, self.score, np.asarray(self.depth), train_states, spec
            )
            self.judge_prob = judge.prob(self.embedding)
        self.noise = oracle_noise(self.n_states, spec.split_seed)
        if spec.embedding_dim is not None:
            self.embedding = project_states(
                self.embedding,
                state_questions,
                np.asarray(train_ids),
                spec.embedding_dim,
                directory,
            )

        # Calls: (state, expert) -> (next state, cost of the call), built calls only.
        self.calls = self._read_calls(cache, spec)
        missing = [
            s
            for s in range(self.n_states)
            if self.depth[s] < spec.t_max
            and any((s, e) not in self.calls for e in range(self.n_experts))
        ]
        if missing:
            raise EnvError(incomplete_message(directory, cache.manifest, len(missing), spec.t_max))
        self.cost_scale = resolve_cost_scale(
            spec.cost_scale, self._auto_scale(state_questions, cache_train_ids), str(directory)
        )

        self.p0 = np.float32(spec.p0)  # scores are float32: compare at their precision
        n_actions = self.n_experts + 1 if spec.terminator == "learned" else self.n_experts
        self.action_space = spaces.Discrete(n_actions)
        obs_dim = (
            self.embedding.shape[1]
            + self.max_depth
            + 1
            + (self.n_experts + 1 if spec.last_action_obs else 0)
        )
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)

        self._question: int | None = None
        self._state = 0
        self._t = 0
        self._prev_score = 0.0
        self._last_action = self.n_experts
        self._cost = 0.0
        self._return = 0.0
        self._done = True

    def _read_calls(self, cache, spec: EnvSpec) -> dict[tuple[int, int], tuple[int, float]]:
        """Every built call, with its cost under `spec.cost_mode`."""
        ok = [row for row in cache.transitions.iter_rows(named=True) if row["status"] == STATUS_OK]
        medians = []
        for expert in range(self.n_experts):
            latencies = [float(row["latency_s"]) for row in ok if row["expert_id"] == expert]
            median = statistics.median(latencies) if latencies else 1.0
            medians.append(median if median > 0 else 1.0)
        calls = {}
        for row in ok:
            expert = int(row["expert_id"])
            if spec.cost_mode == "params":
                cost = float(cache.manifest["experts"][expert]["params_b"])
            elif spec.cost_mode == "tokens":
                cost = (row["prompt_tokens"] + row["completion_tokens"]) / 1000
            elif spec.cost_mode == "latency":
                cost = float(row["latency_s"])
            elif spec.cost_mode == "latency_norm":
                cost = float(row["latency_s"]) / medians[expert]
            else:  # usd
                cost = float(row["cost_usd"])
            calls[(int(row["state_id"]), expert)] = (int(row["next_state_id"]), cost)
        return calls

    def _auto_scale(self, state_questions: np.ndarray, train_ids: set[str]) -> float:
        """The mean cost per call of the dearest expert over calls from the cache's train
        questions."""
        per_expert: dict[int, list[float]] = {}
        for (state, expert), (_, cost) in self.calls.items():
            if state_questions[state] in train_ids:
                per_expert.setdefault(expert, []).append(cost)
        return require_priced(
            max((float(np.mean(c)) for c in per_expert.values()), default=0.0),
            self.env_spec.cost_mode,
            str(self.cache_dir),
        )

    # -----------------------------------------------------------------------------------------
    # Gymnasium API
    # -----------------------------------------------------------------------------------------

    def observation(self) -> np.ndarray:
        """Embedding of the current state, one-hot of t over 0..D, optionally one-hot of the last
        action over 0..N (N: none yet)."""
        step = np.zeros(self.max_depth + 1, dtype=np.float32)
        step[self._t] = 1.0
        parts = [self.embedding[self._state], step]
        if self.env_spec.last_action_obs:
            last = np.zeros(self.n_experts + 1, dtype=np.float32)
            last[self._last_action] = 1.0
            parts.append(last)
        return np.concatenate(parts).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Start an episode.

        Args:
            seed: reseeds the env's generator (Gymnasium's convention).
            options: {"question": index} starts on that question of the split; else one is drawn
                uniformly.

        Returns:
            (observation, info) with info holding the question's index and its root state.
        """
        super().reset(seed=seed)
        options = options or {}
        if "question" in options:
            question = options["question"]
            if (
                isinstance(question, bool)
                or not isinstance(question, int | np.integer)
                or not 0 <= question < len(self.roots)
            ):
                raise ValueError(
                    f"options['question'] = {question!r}: expected a question index in "
                    f"0..{len(self.roots) - 1} of the '{self.env_spec.split}' split"
                )
            question = int(question)
        else:
            question = int(self.np_random.integers(len(self.roots)))
        self._question = question
        self._state = self.roots[question]
        self._t = 0
        self._prev_score = 0.0
        self._last_action = self.n_experts
        self._cost = 0.0
        self._return = 0.0
        self._done = False
        return self.observation(), {"question": question, "state": self._state}

    def _check_action(self, action: Any) -> int:
        integral = isinstance(action, int | np.integer) or (
            isinstance(action, np.ndarray)
            and action.shape == ()
            and np.issubdtype(action.dtype, np.integer)
        )
        if isinstance(action, bool) or not integral:
            raise ValueError(
                f"invalid action {action!r}: expected an integer in 0..{self.action_space.n - 1}"
            )
        action = int(action)
        if action == self.stop_action and self.env_spec.terminator != "learned":
            raise ValueError(
                f"invalid action {action}: STOP ({action}) is only offered by the 'learned' "
                f"terminator (this env uses '{self.env_spec.terminator}'); experts are "
                f"0..{self.n_experts - 1}"
            )
        if not 0 <= action < self.action_space.n:
            raise ValueError(
                f"invalid action {action}: expected an integer in 0..{self.action_space.n - 1}"
            )
        return action

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One call (action 0..N-1) or STOP (action N), by the same rules as the JAX env.

        Returns:
            (observation, reward, terminated, truncated, info): truncated is always False (T_max
            ends an episode as terminated); info holds the state and t, and when the episode ends
            its final_score, calls, cost, success, question and return.
        """
        if self._question is None:
            raise RuntimeError("step() before reset(): call reset() to start an episode")
        if self._done:
            raise RuntimeError(
                "step() after the episode ended: call reset() to start a new one (no auto-reset)"
            )
        action = self._check_action(action)
        spec = self.env_spec
        final = spec.reward == "final"
        if action == self.stop_action:
            # STOP: no call, no cost, t unchanged; the current answer is scored.
            score = self.score[self._state]
            reached = bool(score >= self.p0)
            reward = 0.0
            done = True
        else:
            next_state, cost = self.calls[(self._state, action)]
            score = self.score[next_state]
            reached = bool(score >= self.p0)
            t = self._t + 1
            price = spec.alpha * cost / self.cost_scale
            if final:
                reward = -price
            elif self._t == 0:
                reward = float(score) - price
            else:
                reward = float(score) + spec.beta * (float(score) - self._prev_score) - price
            if spec.terminator == "oracle":
                flipped = bool(self.noise[next_state] < np.float32(spec.judge_error))
                done = (reached != flipped) or t == spec.t_max
            elif spec.terminator == "judge":
                done = (
                    bool(self.judge_prob[next_state] >= np.float32(spec.judge_threshold))
                    or t == spec.t_max
                )
            else:  # "none" and "learned": the episode ends at T_max (or on STOP)
                done = t == spec.t_max
            self._state = next_state
            self._t = t
            self._prev_score = float(score)
            self._cost += cost
        if done:
            reward += (spec.gamma if reached else -spec.gamma) + (float(score) if final else 0.0)
        self._last_action = action
        self._return += reward
        self._done = done
        info: dict[str, Any] = {"state": self._state, "t": self._t}
        if done:
            info.update(
                final_score=float(score),
                calls=self._t,
                cost=self._cost,
                success=reached,
                question=self._question,
            )
            info["return"] = self._return
        return self.observation(), float(reward), done, False, info

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() without a render_mode: create the env with render_mode='ansi'"
            )
            return None
        if self._question is None:
            return "(no episode yet: call reset())"
        answer = self.answers[self._state] or "(no answer yet)"
        return (
            f"question {self._question} ({self.question_ids[self._question]}): "
            f"{self.question_texts[self._question]}\nt = {self._t}, state {self._state}, "
            f"{self.env_spec.metric} = "
            f"{float(self.score[self._state]):.3f}{' (ended)' if self._done else ''}\nanswer: "
            f"{answer}\n"
        )
