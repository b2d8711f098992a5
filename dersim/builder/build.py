"""`dersim build-cache`: recipe -> questions -> expansion -> scores and embeddings -> cache.

The expensive part (expert calls) is journaled and resumable; scoring is a batched pass redone on
every run, and embeddings come from the shared embedding store, which keeps the first row
computed for each text. So the final files are a pure function of the recipe, the journal and the
store: a resumed build ends byte-identical to an uninterrupted one. One build at a time may write
a directory (`dersim.locking`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dersim import __version__
from dersim.builder.backends import backend_fingerprints, make_backend
from dersim.builder.calls import CallRunner
from dersim.builder.expand import expand
from dersim.builder.journal import CallJournal, build_fingerprint, check_kernels
from dersim.builder.shards import Shard
from dersim.builder.sources import load_questions
from dersim.builder.tables import questions_table, states_table, transitions_table
from dersim.cache.schema import DEDUP_BY_ANSWER, QUESTIONS, STATES, TRANSITIONS
from dersim.cache.writer import write_cache
from dersim.locking import directory_lock
from dersim.ownership import claim_output
from dersim.recipe import Recipe

JOURNAL_DIR = "journal"


@dataclass
class BuildReport:
    """What a build did: sizes, the dedup saving against the full N^D tree, and where time went."""

    out: str
    questions: int
    experts: int
    depth: int
    states: int
    transitions: int
    failed: int
    calls_made: int
    calls_reused: int
    full_tree_calls: int
    backend_seconds: float
    setup_seconds: float
    seconds: dict[str, float] = field(default_factory=dict)
    calls_per_expert: dict[str, int] = field(default_factory=dict)
    seconds_per_expert: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def dedup_saving(self) -> float:
        """Share of the full tree's calls that deduplication avoided."""
        return 1.0 - self.transitions / self.full_tree_calls if self.full_tree_calls else 0.0

    @property
    def overhead(self) -> float:
        """The builder's own share of the expansion's wall time: journal, prompts, bookkeeping (not
        the backend calls, not model loading)."""
        expand = self.seconds.get("expand", 0.0)
        return 1.0 - (self.backend_seconds + self.setup_seconds) / expand if expand else 0.0

    @property
    def outside_calls(self) -> float:
        """Share of the whole build's wall time spent outside backend calls (loading, scoring,
        ...)."""
        total = self.seconds.get("total", 0.0)
        return 1.0 - self.backend_seconds / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "dedup_saving": self.dedup_saving,
            "overhead": self.overhead,
            "outside_calls": self.outside_calls,
        }


def full_tree_calls(n_questions: int, calls_per_state: int, depth: int) -> int:
    """Calls a build without deduplication would make: Q * (M + M^2 + ... + M^D), with M calls per
    state (the number of experts N, or the sum of their samples)."""
    return n_questions * sum(calls_per_state ** (d + 1) for d in range(depth))


def build_cache(
    recipe: Recipe,
    out: Path,
    limit: int | None = None,
    depth: int | None = None,
    show_progress: bool = True,
    shard: Shard | None = None,
) -> BuildReport:
    """Build (or resume, or extend) the cache of `recipe` in `out`, holding its write lock (a
    second writer fails at once; see `dersim.locking`)."""
    with directory_lock(out, "build"):
        claim_output(out, "cache")
        return _build(recipe, out, limit, depth, show_progress, shard)


def _build(
    recipe: Recipe,
    out: Path,
    limit: int | None,
    depth: int | None,
    show_progress: bool,
    shard: Shard | None,
) -> BuildReport:
    from dersim.builder.embedding import make_embedder, state_text
    from dersim.builder.embedding_store import embed_texts, embedding_store
    from dersim.builder.scoring import metric_manifest, score_answers

    depth = depth or recipe.build.depth
    started = time.perf_counter()
    questions = load_questions(recipe.dataset, limit)
    n_recipe_questions = len(questions)
    if shard is not None:
        questions, positions = shard.select(questions)
    embedder = make_embedder(recipe.embedding)
    journal = CallJournal(out / JOURNAL_DIR, recipe.build.flush_every)
    fingerprints = backend_fingerprints(recipe.experts)
    check_kernels(out / JOURNAL_DIR, fingerprints)
    runner = CallRunner(
        recipe.experts, recipe.prompt, recipe.build, journal, make_backend, show_progress
    )
    prepared = time.perf_counter()
    try:
        graphs = expand(questions, [e.samples for e in recipe.experts], depth, runner.run_level)
    finally:
        runner.close()
    expanded = time.perf_counter()

    state_questions = [g.question for g in graphs for _ in g.answers]
    answers = [a for g in graphs for a in g.answers]
    scores = score_answers(answers, state_questions, recipe.metrics, show_progress)
    scored = time.perf_counter()
    embeddings = embed_texts(
        embedder,
        [state_text(q.text, a) for q, a in zip(state_questions, answers, strict=True)],
        show_progress=show_progress,
        store=embedding_store(embedder),
    )
    embedded = time.perf_counter()

    tables = {
        QUESTIONS: questions_table(graphs),
        STATES: states_table(graphs, scores, embeddings),
        TRANSITIONS: transitions_table(
            graphs,
            [(e.usd_per_mtok_in, e.usd_per_mtok_out) for e in recipe.experts],
            sampled=recipe.sampled,
        ),
    }
    n_train = sum(q.split == "train" for q in questions)
    write_cache(
        out,
        tables,
        {
            "dersim_version": __version__,
            "dataset": {
                "id": recipe.name,
                "source": recipe.dataset.source,
                "path": str(recipe.dataset.path),
                "task": recipe.dataset.task,
                "seed": recipe.dataset.seed,
                "splits": {"train": n_train, "test": len(questions) - n_train},
            },
            "experts": [asdict(e) for e in recipe.experts],
            "prompt": asdict(recipe.prompt),
            "depth": depth,
            "dedup": DEDUP_BY_ANSWER,
            "metrics": metric_manifest(recipe.metrics),
            "metric_columns": list(scores),
            "embedding": {**embedder.describe(), "dim": int(embeddings.shape[1])},
            "build": {
                "limit": limit,
                "retries": recipe.build.retries,
                "concurrency": recipe.build.concurrency,
            },
            "backend_fingerprint": fingerprints,
            "recipe": recipe.to_manifest(),
            "recipe_fingerprint": build_fingerprint(recipe),
            **(
                {}
                if shard is None
                else {
                    "shard": {
                        "index": shard.index,
                        "count": shard.count,
                        "recipe_questions": n_recipe_questions,
                        "positions": positions,
                    }
                }
            ),
        },
    )
    finished = time.perf_counter()

    failed = [edge.call for g in graphs for edge in g.edges if edge.next < 0]
    return BuildReport(
        out=str(out),
        questions=len(questions),
        experts=len(recipe.experts),
        depth=depth,
        states=len(answers),
        transitions=sum(len(g.edges) for g in graphs),
        failed=len(failed),
        calls_made=runner.calls_made,
        calls_reused=runner.calls_reused,
        full_tree_calls=full_tree_calls(
            len(questions), sum(e.samples for e in recipe.experts), depth
        ),
        backend_seconds=runner.backend_seconds,
        setup_seconds=runner.setup_seconds,
        seconds={
            "setup": prepared - started,
            "expand": expanded - prepared,
            "score": scored - expanded,
            "embed": embedded - scored,
            "write": finished - embedded,
            "total": finished - started,
        },
        calls_per_expert=dict(runner.calls_per_expert),
        seconds_per_expert=dict(runner.seconds_per_expert),
        failures=[f"{r.question_id} / {r.expert}: {r.error}" for r in failed],
    )
