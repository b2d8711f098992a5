"""Cache directory -> the numpy tables the environments replay (no Python loop over rows).

Only the needed columns are read, straight from Parquet through pyarrow into numpy, so a
million-state cache loads in seconds. Both environments are built from these tables' inputs:
the JAX env from `EnvTables` directly, the Gymnasium reference from the same cache files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from dersim.cache.check import read_checked
from dersim.cache.costs import AUTO, COST_MODES, auto_cost_scale, per_call_costs, resolve_cost_scale
from dersim.cache.files import embedding_matrix, read_manifest
from dersim.cache.schema import (
    QUESTIONS,
    STATES,
    STATUS_OK,
    TRANSITIONS,
    is_imported,
    not_replayable,
)
from dersim.cache.splits import DEFAULT_VAL_FRACTION, SPLITS, assign_splits, split_mask
from dersim.env import DEPLOYABLE_TERMINATORS, REWARDS, TERMINATORS
from dersim.env.judge import Judge, fit_judge, oracle_noise
from dersim.env.projection import project_states
from dersim.env.views import PAIR_PICKS, pair_names, with_pairs, without_transfer
from dersim.errors import EnvError

QUESTION_COLUMNS = ("question_id", "split", "root_state_id")


@dataclass(frozen=True)
class EnvSpec:
    """The user's environment choices; see `dersim.env` for the semantics."""

    split: str = "train"  # train (the cache's train questions minus val), val, test or all
    metric: str | None = None  # default: bertscore_f1 if the cache has it, else its first metric
    cost_mode: str = "params"
    cost_scale: str | float = (
        AUTO  # divides C in the reward: auto = the dearest expert's mean train call
    )
    t_max: int | None = None  # default: the cache's depth
    terminator: str = "learned"
    reward: str = "final"
    alpha: float = 0.05
    beta: float = 5.0
    gamma: float = 0.0
    p0: float = 0.73
    judge_error: float = 0.0  # the oracle's decision is flipped on this share of states
    judge_threshold: float = 0.5  # the judge stops when its probability reaches this
    val_fraction: float = DEFAULT_VAL_FRACTION
    split_seed: int = 0
    last_action_obs: bool = (
        True  # observe which expert answered last (a router knows whom it called)
    )
    embedding_dim: int | None = None  # PCA the embeddings to this many dimensions (None: as cached)
    transfer: bool = True  # False: the "without transfer" view (every call answers from scratch)
    experts_per_step: int = 1  # 2: every action calls a pair of experts and keeps the better answer
    pair_pick: str = (
        "reference"  # how a pair's better answer is picked: by the reference or by the judge
    )


@dataclass(frozen=True)
class EnvTables:
    """Everything an episode needs, as numpy arrays (S states, N experts, Q questions of the
    split)."""

    next_state: np.ndarray  # int32 [S, N], -1 where no call was built
    score: np.ndarray  # float32 [S], the chosen metric
    cost: np.ndarray  # float32 [S, N], the cost of each call in the cost mode's raw unit
    embedding: np.ndarray  # float32 [S, d], or [S, k] under spec.embedding_dim
    depth: np.ndarray  # int32 [S], depth first reached
    judge_prob: np.ndarray  # float32 [S], the judge's P(good enough); zeros without a judge
    noise: np.ndarray  # float32 [S], one uniform draw per state (the noisy oracle's flips)
    roots: np.ndarray  # int32 [Q], root state of each question of the split
    question_ids: tuple[str, ...]
    expert_names: tuple[str, ...]
    max_depth: int  # D, the cache's built depth
    metric: str
    cost_scale: float  # resolved divisor of C in the reward
    judge: Judge | None
    spec: EnvSpec


def check_setting(name: str, value: float, low: float = -math.inf, high: float = math.inf) -> None:
    """A reward or judge setting must be a finite number within [low, high] (one-line error)."""
    if not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        bounds = "" if (low, high) == (-math.inf, math.inf) else f" within [{low:g}, {high:g}]"
        raise EnvError(f"--{name.replace('_', '-')} {value}: expected a finite number{bounds}")


def resolve_spec(spec: EnvSpec, manifest: dict, where: Path) -> EnvSpec:
    """Fill defaults from the cache and check every choice (one-line errors naming the option)."""
    metrics = list(manifest["metric_columns"])
    metric = spec.metric or ("bertscore_f1" if "bertscore_f1" in metrics else metrics[0])
    if metric not in metrics:
        raise EnvError(
            f"{where}: metric '{metric}' is not in the cache (available: {', '.join(metrics)})"
        )
    depth = int(manifest["depth"])
    t_max = depth if spec.t_max is None else spec.t_max
    if not 1 <= t_max <= depth:
        raise EnvError(
            f"{where}: T_max = {t_max} but the cache is built to depth {depth}; routes never step "
            "past the built depth (rebuild with a larger --depth)"
        )
    if spec.cost_mode not in COST_MODES:
        raise EnvError(f"unknown cost mode '{spec.cost_mode}' (known: {', '.join(COST_MODES)})")
    if spec.terminator not in TERMINATORS:
        raise EnvError(f"unknown terminator '{spec.terminator}' (known: {', '.join(TERMINATORS)})")
    if spec.reward not in REWARDS:
        raise EnvError(f"unknown reward '{spec.reward}' (known: {', '.join(REWARDS)})")
    if spec.split not in SPLITS:
        raise EnvError(f"unknown split '{spec.split}' (known: {', '.join(SPLITS)})")
    if spec.cost_mode == "params":
        unknown = [e["name"] for e in manifest["experts"] if e.get("params_b") is None]
        if unknown:
            raise EnvError(
                f"{where}: expert '{unknown[0]}' has no params_b; choose another --cost-mode (e.g. "
                "usd)"
            )
    for name in ("alpha", "beta", "gamma"):
        check_setting(name, getattr(spec, name))
    check_setting("p0", spec.p0, 0.0, 1.0)
    check_setting("judge_error", spec.judge_error, 0.0, 1.0)
    check_setting("judge_threshold", spec.judge_threshold, 0.0, 1.0)
    if spec.experts_per_step not in (1, 2):
        raise EnvError(f"experts per step {spec.experts_per_step}: expected 1 or 2")
    if spec.pair_pick not in PAIR_PICKS:
        raise EnvError(f"unknown pair pick '{spec.pair_pick}' (known: {', '.join(PAIR_PICKS)})")
    if spec.experts_per_step == 2 and len(manifest["experts"]) < 2:
        raise EnvError(f"{where}: two experts per step need at least two experts")
    return replace(spec, metric=metric, t_max=t_max)


def reads_reference(spec: EnvSpec, terminator: str) -> bool:
    """Whether a policy with `terminator` under `spec` reads the reference to decide: the oracle
    terminator does, and so does a pair action that keeps the better answer by the reference."""
    return terminator not in DEPLOYABLE_TERMINATORS or (
        spec.experts_per_step == 2 and spec.pair_pick == "reference"
    )


def incomplete_message(directory: Path, manifest: dict, n_states: int, t_max: int) -> str:
    """Why some reachable state lacks a call, with the advice that fits how the cache was made."""
    imported = is_imported(manifest)
    advice = (
        "re-import it without --no-drop-incomplete (questions where a model has no answer are then "
        "dropped)"
        if imported
        else "rerun build-cache to retry the failed calls"
    )
    return (
        f"{directory}: {n_states} states reachable within T_max = {t_max} lack some expert's "
        f"{'answer' if imported else 'transition (failed calls?)'}; {advice}"
    )


def question_assignment(cache_splits: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """Per question: train, val or test for this spec (see `dersim.cache.splits`)."""
    return assign_splits(cache_splits, spec.val_fraction, spec.split_seed)


def chosen_questions(assigned: np.ndarray, split: str, where: Path) -> np.ndarray:
    chosen = split_mask(assigned, split)
    if not chosen.any():
        hint = " (--val-fraction is 0)" if split == "val" else ""
        raise EnvError(f"{where}: the cache has no '{split}' questions{hint}")
    return chosen


def fit_state_judge(
    embedding: np.ndarray,
    score: np.ndarray,
    depth: np.ndarray,
    train_states: np.ndarray,
    spec: EnvSpec,
) -> Judge:
    """The judge for `spec` (its metric and p0), fitted on the train split's answer states."""
    rows = train_states & (depth > 0)
    return fit_judge(embedding[rows], score[rows], spec.p0, spec.metric)


def load_tables(
    directory: str | Path,
    spec: EnvSpec = EnvSpec(),
    with_judge: bool | None = None,
    verify: bool = True,
) -> EnvTables:
    """Read a cache into `EnvTables` for `spec`; the cache must be complete up to T_max.

    The cache is checked first (`dersim.cache.check.read_checked`: hashes unless not `verify`, ids,
    finite scores of the metric, finite embeddings), so a damaged cache is refused with one line
    before any work.

    Args:
        directory: the cache directory.
        spec: the environment's settings (metric, cost mode, split, view, terminator, ...); unset
            fields are resolved from the cache's manifest.
        with_judge: fit the judge on the train split's answer states (default: when
            spec.terminator is 'judge').
        verify: check the table files' sha256 against the manifest (the CLI's --no-verify: False).

    Returns:
        The tables of the chosen split under the spec's view, with the resolved spec.

    Raises:
        CacheFormatError: a damaged or incomplete cache (one line naming the file).
        EnvError: a setting the cache cannot serve (unknown metric, T_max past the built depth).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if reason := not_replayable(directory, manifest):
        raise EnvError(reason)
    spec = resolve_spec(spec, manifest, directory)
    manifest, read = read_checked(
        directory,
        {
            STATES: ["question_id", "depth", spec.metric, "embedding"],
            QUESTIONS: QUESTION_COLUMNS,
            TRANSITIONS: None,
        },
        verify_hashes=verify,
        metrics=[spec.metric],
    )
    n_experts = len(manifest["experts"])
    states, questions = read[STATES], read[QUESTIONS]
    transitions = read[TRANSITIONS].filter(pc.equal(pc.field("status"), STATUS_OK))
    n_states = states.num_rows

    rows = transitions["state_id"].to_numpy().astype(np.int64)
    cols = transitions["expert_id"].to_numpy().astype(np.int64)
    next_state = np.full((n_states, n_experts), -1, dtype=np.int32)
    next_state[rows, cols] = transitions["next_state_id"].to_numpy()
    per_call = per_call_costs(
        spec.cost_mode,
        cols,
        [e.get("params_b") for e in manifest["experts"]],
        transitions["prompt_tokens"].to_numpy(),
        transitions["completion_tokens"].to_numpy(),
        transitions["latency_s"].to_numpy(),
        transitions["cost_usd"].to_numpy(),
        str(directory),
    )
    cost = np.zeros((n_states, n_experts), dtype=np.float32)
    cost[rows, cols] = per_call

    depth = states["depth"].to_numpy().astype(np.int32)
    missing = (depth < spec.t_max)[:, None] & (next_state < 0)
    if missing.any():
        raise EnvError(
            incomplete_message(directory, manifest, int(missing.any(axis=1).sum()), spec.t_max)
        )
    question_ids = np.asarray(questions["question_id"].to_numpy(zero_copy_only=False))
    state_questions = np.asarray(states["question_id"].to_numpy(zero_copy_only=False))
    cache_splits = np.asarray(questions["split"].to_numpy(zero_copy_only=False))
    assigned = question_assignment(cache_splits, spec)
    chosen = chosen_questions(assigned, spec.split, directory)
    cache_train_states = np.isin(state_questions, question_ids[cache_splits == "train"])
    # The auto scale is computed even when a number is given: it refuses a mode whose costs are all
    # zero.
    scale = resolve_cost_scale(
        spec.cost_scale,
        auto_cost_scale(
            per_call, cols, n_experts, cache_train_states[rows], spec.cost_mode, str(directory)
        ),
        str(directory),
    )
    train_states = np.isin(state_questions, question_ids[assigned == "train"])

    embedding = embedding_matrix(states)
    score = states[spec.metric].to_numpy().astype(np.float32)
    judge = None
    needs_judge = spec.terminator == "judge" or (
        spec.experts_per_step == 2 and spec.pair_pick == "judge"
    )
    if with_judge if with_judge is not None else needs_judge:
        judge = fit_state_judge(embedding, score, depth, train_states, spec)
    judge_prob = judge.prob(embedding) if judge else np.zeros(n_states, np.float32)
    expert_names = tuple(e["name"] for e in manifest["experts"])
    if not spec.transfer:
        order = np.argsort(question_ids)
        position = order[np.searchsorted(question_ids, state_questions, sorter=order)]
        state_root = questions["root_state_id"].to_numpy().astype(np.int64)[position]
        next_state, cost = without_transfer(next_state, cost, state_root)
    if spec.experts_per_step == 2:
        if spec.pair_pick == "judge" and judge is None:
            raise EnvError(
                "pairs picked by the judge need the judge (load the tables with with_judge=True)"
            )
        next_state, cost = with_pairs(
            next_state, cost, judge_prob if spec.pair_pick == "judge" else score
        )
        expert_names = pair_names(expert_names)
    if spec.embedding_dim is not None:
        embedding = project_states(
            embedding,
            state_questions,
            question_ids[assigned == "train"],
            spec.embedding_dim,
            directory,
        )
    return EnvTables(
        next_state=next_state,
        score=score,
        cost=cost,
        embedding=embedding,
        depth=depth,
        judge_prob=judge_prob,
        noise=oracle_noise(n_states, spec.split_seed),
        roots=questions["root_state_id"].to_numpy()[chosen].astype(np.int32),
        question_ids=tuple(question_ids[chosen].tolist()),
        expert_names=expert_names,
        max_depth=int(manifest["depth"]),
        metric=spec.metric,
        cost_scale=scale,
        judge=judge,
        spec=replace(spec, cost_scale=scale),
    )


def split_roots(
    tables: EnvTables, directory: Path, split: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Root states and question ids of another split of the same cache, under the tables' spec."""
    questions = read_checked(directory, {QUESTIONS: QUESTION_COLUMNS}, verify_hashes=False)[1][
        QUESTIONS
    ]
    assigned = question_assignment(
        np.asarray(questions["split"].to_numpy(zero_copy_only=False)), tables.spec
    )
    chosen = chosen_questions(assigned, split, directory)
    ids = np.asarray(questions["question_id"].to_numpy(zero_copy_only=False))[chosen]
    return questions["root_state_id"].to_numpy()[chosen].astype(np.int32), tuple(ids.tolist())
