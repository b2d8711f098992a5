"""Cache directory -> the numpy tables the environments replay (no Python loop over rows).

Only the needed columns are read, straight from Parquet through pyarrow into numpy, so a
million-state cache loads in seconds. Both environments are built from these tables' inputs:
the JAX env from `EnvTables` directly, the Gymnasium reference from the same cache files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dersim.cache.reader import read_manifest
from dersim.cache.schema import QUESTIONS, STATES, STATUS_OK, TRANSITIONS
from dersim.env import COST_MODES, TERMINATORS
from dersim.env.projection import project_states
from dersim.errors import DersimError


class EnvError(DersimError):
    """A bad environment setting (unknown metric, T_max beyond the built depth, ...)."""


@dataclass(frozen=True)
class EnvSpec:
    """The user's environment choices; see `dersim.env` for the semantics."""

    split: str = "train"
    metric: str | None = None  # default: bertscore_f1 if the cache has it, else its first metric
    cost_mode: str = "params"
    t_max: int | None = None  # default: the cache's depth
    terminator: str = "oracle"
    alpha: float = 0.001
    beta: float = 5.0
    gamma: float = 2.0
    p0: float = 0.73
    last_action_obs: bool = False
    embedding_dim: int | None = None  # PCA the embeddings to this many dimensions (None: as cached)


@dataclass(frozen=True)
class EnvTables:
    """Everything an episode needs, as numpy arrays (S states, N experts, Q questions of the split)."""

    next_state: np.ndarray  # int32 [S, N], -1 where no call was built
    score: np.ndarray  # float32 [S], the chosen metric
    cost: np.ndarray  # float32 [S, N], the chosen cost of each call
    embedding: np.ndarray  # float32 [S, d], or [S, k] under spec.embedding_dim
    depth: np.ndarray  # int32 [S], depth first reached
    roots: np.ndarray  # int32 [Q], root state of each question of the split
    question_ids: tuple[str, ...]
    expert_names: tuple[str, ...]
    max_depth: int  # D, the cache's built depth
    metric: str
    spec: EnvSpec


def resolve_spec(spec: EnvSpec, manifest: dict, where: Path) -> EnvSpec:
    """Fill defaults from the cache and check every choice (one-line errors naming the option)."""
    metrics = list(manifest["metric_columns"])
    metric = spec.metric or ("bertscore_f1" if "bertscore_f1" in metrics else metrics[0])
    if metric not in metrics:
        raise EnvError(f"{where}: metric '{metric}' is not in the cache (available: {', '.join(metrics)})")
    depth = int(manifest["depth"])
    t_max = depth if spec.t_max is None else spec.t_max
    if not 1 <= t_max <= depth:
        raise EnvError(f"{where}: T_max = {t_max} but the cache is built to depth {depth}; routes never step "
                       "past the built depth (rebuild with a larger --depth)")
    if spec.cost_mode not in COST_MODES:
        raise EnvError(f"unknown cost mode '{spec.cost_mode}' (known: {', '.join(COST_MODES)})")
    if spec.terminator not in TERMINATORS:
        raise EnvError(f"unknown terminator '{spec.terminator}' (known: {', '.join(TERMINATORS)})")
    if spec.split not in ("train", "test", "all"):
        raise EnvError(f"unknown split '{spec.split}' (train, test or all)")
    if spec.cost_mode == "params":
        unknown = [e["name"] for e in manifest["experts"] if e.get("params_b") is None]
        if unknown:
            raise EnvError(f"{where}: expert '{unknown[0]}' has no params_b; choose another cost mode (e.g. usd)")
    return EnvSpec(**{**spec.__dict__, "metric": metric, "t_max": t_max})


def _call_costs(transitions, manifest: dict, mode: str, n_experts: int) -> np.ndarray:
    """The per-call cost of each transition row under `mode`."""
    experts = transitions["expert_id"].to_numpy().astype(np.int64)
    if mode == "params":
        return np.array([e["params_b"] for e in manifest["experts"]], dtype=np.float32)[experts]
    if mode == "tokens":
        tokens = transitions["prompt_tokens"].to_numpy() + transitions["completion_tokens"].to_numpy()
        return (tokens / 1000).astype(np.float32)
    if mode == "usd":
        return transitions["cost_usd"].to_numpy().astype(np.float32)
    latency = transitions["latency_s"].to_numpy().astype(np.float32)
    if mode == "latency":
        return latency
    medians = np.array([np.median(latency[experts == e]) if (experts == e).any() else 1.0
                        for e in range(n_experts)], dtype=np.float32)
    return latency / np.where(medians > 0, medians, 1.0)[experts]


def load_tables(directory: str | Path, spec: EnvSpec = EnvSpec()) -> EnvTables:
    """Read a cache into `EnvTables` for `spec`; the cache must be complete up to T_max."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    spec = resolve_spec(spec, manifest, directory)
    n_experts = len(manifest["experts"])
    states = pq.read_table(directory / STATES, columns=["state_id", "question_id", "depth", spec.metric,
                                                        "embedding"])
    questions = pq.read_table(directory / QUESTIONS, columns=["question_id", "split", "root_state_id"])
    transitions = pq.read_table(directory / TRANSITIONS).filter(pc.equal(pc.field("status"), STATUS_OK))
    n_states = states.num_rows
    if not np.array_equal(states["state_id"].to_numpy(), np.arange(n_states)):
        raise EnvError(f"{directory / STATES}: state_id is not 0..S-1 (run dersim cache verify)")

    rows = transitions["state_id"].to_numpy().astype(np.int64)
    cols = transitions["expert_id"].to_numpy().astype(np.int64)
    next_state = np.full((n_states, n_experts), -1, dtype=np.int32)
    next_state[rows, cols] = transitions["next_state_id"].to_numpy()
    cost = np.zeros((n_states, n_experts), dtype=np.float32)
    cost[rows, cols] = _call_costs(transitions, manifest, spec.cost_mode, n_experts)

    depth = states["depth"].to_numpy().astype(np.int32)
    missing = (depth < spec.t_max)[:, None] & (next_state < 0)
    if missing.any():
        raise EnvError(f"{directory}: {int(missing.any(axis=1).sum())} states reachable within T_max = "
                       f"{spec.t_max} lack some expert's transition (failed calls?); rerun build-cache")
    split = questions["split"].to_numpy(zero_copy_only=False)
    chosen = np.ones(len(split), dtype=bool) if spec.split == "all" else split == spec.split
    if not chosen.any():
        raise EnvError(f"{directory}: the cache has no '{spec.split}' questions")
    embedding_column = states["embedding"].combine_chunks()
    dim = embedding_column.type.list_size
    embedding = embedding_column.flatten().to_numpy().astype(np.float32).reshape(n_states, dim)
    if spec.embedding_dim is not None:
        train_ids = questions["question_id"].filter(pc.equal(questions["split"], "train"))
        embedding = project_states(embedding, states["question_id"].to_numpy(), train_ids.to_numpy(),
                                   spec.embedding_dim, directory)
    return EnvTables(
        next_state=next_state,
        score=states[spec.metric].to_numpy().astype(np.float32),
        cost=cost,
        embedding=embedding,
        depth=depth,
        roots=questions["root_state_id"].to_numpy()[chosen].astype(np.int32),
        question_ids=tuple(np.asarray(questions["question_id"].to_numpy(zero_copy_only=False))[chosen].tolist()),
        expert_names=tuple(e["name"] for e in manifest["experts"]),
        max_depth=int(manifest["depth"]),
        metric=spec.metric,
        spec=spec,
    )
