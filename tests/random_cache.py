"""A cache written straight from numpy (no builder), for tests that need control over its graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from dersim.cache.schema import (
    QUESTIONS,
    QUESTIONS_SCHEMA,
    STATES,
    STATUS_FAILED,
    STATUS_OK,
    TRANSITIONS,
    TRANSITIONS_SCHEMA,
    states_schema,
)
from dersim.cache.writer import write_cache


def write_random_cache(
    out: Path,
    *,
    n_questions: int,
    n_experts: int,
    depth: int,
    dim: int,
    seed: int,
    copy: float = 0.2,
    merge: float = 0.2,
    test_fraction: float = 0.3,
    failed_parents_at: int | None = None,
    n_failed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a cache straight from numpy (no builder): per question a full N-ary tree of depth D
    (levels stored contiguously), where each call repeats the current state with probability
    `copy` (a self-loop, as a copying expert gives) or leads to a random state of the next level
    with probability `merge` (deduplicated answers). Random scores, embeddings, tokens, latencies
    and prices. `n_failed` calls from states at depth `failed_parents_at` are recorded as failed.
    Returns the arrays it wrote, for checking a reader against them."""
    rng = np.random.default_rng(seed)
    sizes = np.array([n_experts**d for d in range(depth + 1)])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    per_q = int(sizes.sum())
    n_states = n_questions * per_q
    local_depth = np.repeat(np.arange(depth + 1), sizes)
    base = np.arange(n_questions)[:, None] * per_q  # [Q, 1]

    parents = np.arange(starts[depth])  # local ids of the states with calls (levels < D)
    level = local_depth[parents]
    children = (
        starts[level + 1][:, None]
        + (parents - starts[level])[:, None] * n_experts
        + np.arange(n_experts)
    )
    shape = (n_questions, len(parents), n_experts)
    nxt = np.broadcast_to(base[:, :, None] + children[None], shape).copy()
    state = np.broadcast_to(base[:, :, None] + parents[None, :, None], shape).copy()
    draw = rng.random(shape)
    nxt = np.where(draw < copy, state, nxt)
    merged = (draw >= copy) & (draw < copy + merge)
    next_level = np.broadcast_to((level + 1)[None, :, None], shape)
    random_child = (
        base[:, :, None]
        + starts[next_level]
        + (rng.random(shape) * sizes[next_level]).astype(np.int64)
    )
    nxt = np.where(merged, random_child, nxt)
    expert = np.broadcast_to(np.arange(n_experts), shape)
    state, nxt, expert = state.reshape(-1), nxt.reshape(-1), expert.reshape(-1)
    status = np.full(len(state), STATUS_OK, dtype=object)
    if n_failed:
        eligible = np.flatnonzero(local_depth[state % per_q] == failed_parents_at)
        failed = rng.choice(eligible, n_failed, replace=False)
        status[failed] = STATUS_FAILED
    ok = status == STATUS_OK

    state_depth = np.tile(local_depth, n_questions).astype(np.int16)
    root = state_depth == 0
    accuracy = np.where(root, 0.0, (rng.random(n_states) < 0.45)).astype(np.float32)
    token_f1 = np.where(
        root, 0.0, np.clip(rng.beta(2, 3, n_states) + 0.05 * state_depth, 0, 1)
    ).astype(np.float32)
    embedding = rng.normal(size=(n_states, dim)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    prompt_tokens = rng.integers(20, 400, len(state)).astype(np.int32)
    completion_tokens = rng.integers(1, 120, len(state)).astype(np.int32)
    latency = rng.exponential(0.3 * (1 + expert), len(state)).astype(np.float32)
    usd = (rng.random(len(state)) * 1e-4).astype(np.float32)

    qids = [f"q{i:05d}" for i in range(n_questions)]
    split = np.where(rng.random(n_questions) < test_fraction, "test", "train")
    questions = pa.table(
        {
            "question_id": qids,
            "split": split.tolist(),
            "question": [f"Is {i} a question?" for i in range(n_questions)],
            "reference": ["yes"] * n_questions,
            "references": [["yes"]] * n_questions,
            "label": ["yes"] * n_questions,
            "root_state_id": (np.arange(n_questions) * per_q).astype(np.int32),
        },
        schema=QUESTIONS_SCHEMA,
    )
    schema = states_schema(["accuracy", "token_f1"], dim)
    states = pa.table(
        {
            "state_id": np.arange(n_states, dtype=np.int32),
            "question_id": np.repeat(np.array(qids), per_q).tolist(),
            "answer": ["" if d == 0 else f"answer {s}" for s, d in enumerate(state_depth.tolist())],
            "depth": state_depth,
            "accuracy": accuracy,
            "token_f1": token_f1,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), dim),
        },
        schema=schema,
    )
    transitions = pa.table(
        {
            "state_id": state.astype(np.int32),
            "expert_id": expert.astype(np.int16),
            "next_state_id": pa.array(nxt.astype(np.int32), mask=~ok),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_s": latency,
            "cost_usd": usd,
            "status": status.tolist(),
            "error": pa.array(
                [None if o else "synthetic failure" for o in ok.tolist()], pa.string()
            ),
        },
        schema=TRANSITIONS_SCHEMA,
    )
    params_b = [round(0.5 * 2**e, 2) for e in range(n_experts)]
    write_cache(
        out,
        {QUESTIONS: questions, STATES: states, TRANSITIONS: transitions},
        {
            "dataset": {"id": "random", "source": "numpy"},
            "experts": [
                {"name": f"e{e}", "backend": "synthetic", "params_b": params_b[e]}
                for e in range(n_experts)
            ],
            "depth": depth,
            "dedup": "none",
            "metric_columns": ["accuracy", "token_f1"],
            "embedding": {"model": "random", "dim": dim},
        },
    )
    return {
        "state": state,
        "expert": expert,
        "next": nxt,
        "ok": ok,
        "depth": state_depth,
        "accuracy": accuracy,
        "token_f1": token_f1,
        "embedding": embedding,
        "split": split,
        "params_b": np.array(params_b),
        "tokens": prompt_tokens + completion_tokens,
        "latency": latency,
        "usd": usd,
    }
