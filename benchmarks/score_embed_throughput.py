"""Scoring and embedding throughput: texts/s batched against one text at a time, in one process.

BERTScore (`dersim.builder.scoring.PairScorer`, all-MiniLM-L6-v2 layer 6) on (answer, reference)
pairs of a bundled cache: the baseline is batch size 1 (bert-score one text at a time, which the
caches were built with), against unpadded batches of equal token length, with the largest
difference from the baseline (float32 rounding). bert-score's own padded batches are shown for
reference with their difference (which is why the builder does not use them). Then the state
embedding (sentence-transformers MiniLM) at batch size 1 against the recipe default of 64. The
device is `--device` ("auto": a CUDA GPU when torch sees one). No embedding store is used: every
text is computed.

    python benchmarks/score_embed_throughput.py [--cache cache/strategyqa] [--pairs 300]
                                                [--device auto] [--batch 32]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from dersim.builder.embedding import make_embedder, state_text
from dersim.builder.local_models import torch_device
from dersim.builder.scoring import PairScorer
from dersim.recipe import EmbeddingSpec, MetricSpec


def cache_pairs(cache: Path, n: int) -> tuple[list[str], list[str], list[str]]:
    """Answers, their references and their questions for the first `n` answered states."""
    states = pl.read_parquet(cache / "states.parquet", columns=["question_id", "answer"])
    questions = pl.read_parquet(
        cache / "questions.parquet", columns=["question_id", "question", "reference"]
    )
    rows = (
        states.join(questions, on="question_id")
        .filter(pl.col("answer").str.strip_chars() != "")
        .head(n)
    )
    return rows["answer"].to_list(), rows["reference"].to_list(), rows["question"].to_list()


def timed(work) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    result = work()
    return np.asarray(result), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("cache/strategyqa"))
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=32, help="BERTScore batch size")
    args = parser.parse_args()
    answers, references, questions = cache_pairs(args.cache, args.pairs)
    pairs = [
        PairScorer.pair_text(a.strip(), r.strip()) for a, r in zip(answers, references, strict=True)
    ]
    spec = MetricSpec(names=("bertscore",), device=args.device)
    device = torch_device(args.device)
    n = len(pairs)

    table = Table(title=f"{n} states of {args.cache} on {device}")
    for column in ("what", "batch", "texts/s", "x baseline", "max |diff| from baseline"):
        table.add_column(column)

    PairScorer(replace(spec, batch_size=1)).embed(pairs[:4])  # load the model before timing
    single, base = timed(lambda: PairScorer(replace(spec, batch_size=1)).embed(pairs))
    table.add_row("BERTScore, one text at a time", "1", f"{n / base:.1f}", "1.00", "baseline")
    batched, seconds = timed(lambda: PairScorer(replace(spec, batch_size=args.batch)).embed(pairs))
    table.add_row(
        "BERTScore, unpadded batches",
        str(args.batch),
        f"{n / seconds:.1f}",
        f"{base / seconds:.2f}",
        f"{np.abs(batched - single).max():.1e}",
    )
    model = PairScorer(spec).scorer
    padded, seconds = timed(
        lambda: np.stack(
            [v.numpy() for v in model.score(answers, references, batch_size=args.batch)], 1
        )
    )
    table.add_row(
        "bert-score's padded batches (not used)",
        str(args.batch),
        f"{n / seconds:.1f}",
        f"{base / seconds:.2f}",
        f"{np.abs(padded - single).max():.1e}",
    )

    texts = [state_text(q, a) for q, a in zip(questions, answers, strict=True)]
    embed_spec = EmbeddingSpec(device=args.device)
    one_at_a_time = make_embedder(replace(embed_spec, batch_size=1))
    one_at_a_time.embed(texts[:4])
    single, base = timed(lambda: one_at_a_time.embed(texts))
    table.add_row(
        "MiniLM embedding, one text at a time", "1", f"{n / base:.1f}", "1.00", "baseline"
    )
    batched, seconds = timed(lambda: make_embedder(embed_spec).embed(texts))
    table.add_row(
        "MiniLM embedding, padded batches",
        str(embed_spec.batch_size),
        f"{n / seconds:.1f}",
        f"{base / seconds:.2f}",
        f"{np.abs(batched - single).max():.1e}",
    )
    Console().print(table)


if __name__ == "__main__":
    main()
