"""The cache's tables from expanded question graphs, their scores and embeddings.

Global state ids are assigned question by question in breadth-first order, so the same graphs
always give the same ids and the same bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from dersim.builder.expand import QuestionGraph
from dersim.cache.schema import (
    QUESTIONS_SCHEMA,
    SAMPLED_TRANSITIONS_SCHEMA,
    TRANSITIONS_SCHEMA,
    states_schema,
)
from dersim.cache.writer import embedding_column


def state_offsets(graphs: list[QuestionGraph]) -> np.ndarray:
    """The global id of each question's root state (its local ids follow contiguously)."""
    sizes = np.array([len(g.answers) for g in graphs], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def questions_table(graphs: list[QuestionGraph]) -> pa.Table:
    offsets = state_offsets(graphs)
    return pa.table(
        {
            "question_id": [g.question.question_id for g in graphs],
            "split": [g.question.split for g in graphs],
            "question": [g.question.text for g in graphs],
            "reference": [g.question.reference for g in graphs],
            "references": [list(g.question.references) for g in graphs],
            "label": [g.question.label for g in graphs],
            "root_state_id": offsets.astype(np.int32),
        },
        schema=QUESTIONS_SCHEMA,
    )


def states_table(
    graphs: list[QuestionGraph], scores: dict[str, np.ndarray], embeddings: np.ndarray
) -> pa.Table:
    """One row per state: ids, answer, depth, one column per metric, embedding."""
    n_states = sum(len(g.answers) for g in graphs)
    dim = embeddings.shape[1]
    columns: dict[str, Any] = {
        "state_id": np.arange(n_states, dtype=np.int32),
        "question_id": [g.question.question_id for g in graphs for _ in g.answers],
        "answer": [a for g in graphs for a in g.answers],
        "depth": np.array([d for g in graphs for d in g.depths], dtype=np.int16),
    }
    for name, values in scores.items():
        columns[name] = np.asarray(values, dtype=np.float32)
    columns["embedding"] = embedding_column(embeddings)
    return pa.table(columns, schema=states_schema(list(scores), dim))


def transitions_table(
    graphs: list[QuestionGraph], usd_per_mtok: list[tuple[float, float]], sampled: bool = False
) -> pa.Table:
    """One row per call made on the way: (state, expert) -> next state, tokens, latency, US dollars
    (from each expert's (input, output) price per million tokens), status; and, for a recipe with
    sampled experts (`sampled`), the call's sample index."""
    offsets = state_offsets(graphs)
    rows = [
        (
            offset + edge.state,
            edge.expert,
            None if edge.next < 0 else offset + edge.next,
            edge.call.prompt_tokens,
            edge.call.completion_tokens,
            edge.call.latency_s,
            (
                edge.call.prompt_tokens * usd_per_mtok[edge.expert][0]
                + edge.call.completion_tokens * usd_per_mtok[edge.expert][1]
            )
            / 1e6,
            edge.call.status,
            edge.call.error,
            edge.sample,
        )
        for g, offset in zip(graphs, offsets.tolist(), strict=True)
        for edge in g.edges
    ]
    schema = SAMPLED_TRANSITIONS_SCHEMA if sampled else TRANSITIONS_SCHEMA
    return pa.table(
        {name: [row[i] for row in rows] for i, name in enumerate(schema.names)}, schema=schema
    )
