"""The embedding store (re-imports and rebuilds embed only new texts), its safety with several
processes and damaged shards, and the progress lines shown when stderr is not a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dersim.builder.embedding_store as store_module
from dersim.builder.embedding import HashingEmbedder, SentenceTransformerEmbedder
from dersim.builder.embedding_store import STORE_ENV, EmbeddingStore, embed_texts, store_root
from dersim.builder.progress import progress
from dersim.cli import main

from conftest import REPO

TEXTS = [f"Q: what is {i} + {i}?\nA: {2 * i}" for i in range(40)]


class CountingEmbedder(HashingEmbedder):
    """Feature hashing that counts the texts it embeds."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__(dim)
        self.embedded = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.embedded += len(texts)
        return super().embed(texts)


def test_store_embeds_only_new_texts_and_returns_the_same_rows(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    store = EmbeddingStore(embedder, tmp_path)
    first = embed_texts(
        embedder, TEXTS[:30] + TEXTS[:5], store=store
    )  # repeated texts are embedded once
    assert embedder.embedded == 30
    second = embed_texts(embedder, TEXTS, store=EmbeddingStore(embedder, tmp_path))
    assert embedder.embedded == 40
    np.testing.assert_array_equal(second[:30], first[:30])
    np.testing.assert_array_equal(second, HashingEmbedder(16).embed(TEXTS))
    assert (
        EmbeddingStore(HashingEmbedder(32), tmp_path).directory != store.directory
    )  # another width: no reuse


def test_reimport_embeds_only_new_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[int] = []
    real = SentenceTransformerEmbedder.embed
    monkeypatch.setattr(
        SentenceTransformerEmbedder,
        "embed",
        lambda self, texts: counted.append(len(texts)) or real(self, texts),
    )
    rows = [
        {
            "qid": f"q{q}",
            "prompt": f"Is {q} even?",
            "llm": m,
            "output": a,
            "grade": 1.0,
            "usd": 0.001,
        }
        for q in range(4)
        for m, a in (("a", "yes"), ("b", f"{q} is even"))
    ]
    source = tmp_path / "answers.jsonl"
    args = [
        "--question-id",
        "qid",
        "--question",
        "prompt",
        "--model",
        "llm",
        "--answer",
        "output",
        "--score",
        "grade",
        "--out",
        str(tmp_path / "c"),
        "--quiet",
    ]

    def run(*extra: str) -> None:
        result = CliRunner().invoke(
            main, ["cache", "import", "long", str(source), *args, *extra], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output

    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run()
    assert sum(counted) == 12  # 4 roots + 8 answers
    run("--overwrite", "--cost", "usd")  # a cost column added: nothing to embed again
    assert sum(counted) == 12
    rows.append(
        {"qid": "q9", "prompt": "Is 9 even?", "llm": "a", "output": "no", "grade": 1.0, "usd": 0.0}
    )
    rows.append(
        {
            "qid": "q9",
            "prompt": "Is 9 even?",
            "llm": "b",
            "output": "9 is odd",
            "grade": 1.0,
            "usd": 0.0,
        }
    )
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run("--overwrite")
    assert sum(counted) == 15  # only the new question's three states


def test_two_processes_add_to_one_store(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from dersim.builder.embedding import "
        "HashingEmbedder\nimport dersim.builder.embedding_store as store_module\nfrom "
        "dersim.builder.embedding_store import EmbeddingStore, "
        "embed_texts\nstore_module.COMPACT_ABOVE = 4  # merges run while the other process reads "
        "and writes\ntexts = [f'text {i}' for i in range(int(sys.argv[2]), int(sys.argv[2]) + "
        "1500)]\nfor start in range(0, 1500, 150):\n    embed_texts(HashingEmbedder(8), "
        "texts[start:start + 150], store=EmbeddingStore(HashingEmbedder(8), Path(sys.argv[1])))\n"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), str(offset)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for offset in (0, 750)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read()
    texts = [f"text {i}" for i in range(2250)]
    store = EmbeddingStore(HashingEmbedder(8), tmp_path)
    found, rows = store.lookup([store_module.text_key(t) for t in texts])
    assert found.all()
    np.testing.assert_array_equal(rows, HashingEmbedder(8).embed(texts))


def test_damaged_shards_are_ignored_and_many_shards_are_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "COMPACT_ABOVE", 3)
    monkeypatch.setattr(store_module, "CHUNK", 5)
    embedder = CountingEmbedder()
    store = EmbeddingStore(embedder, tmp_path)
    embed_texts(embedder, TEXTS[:10], store=store)
    (store.directory / "shard-0000-damaged.parquet").write_bytes(b"not parquet")
    embed_texts(
        embedder, TEXTS[10:25], store=store
    )  # the 4th shard triggers a merge; the damaged one is dropped
    shards = list(store.directory.glob("shard-*.parquet"))
    assert len(shards) == 3 and not (store.directory / "shard-0000-damaged.parquet").exists()
    embedder.embedded = 0
    np.testing.assert_array_equal(
        embed_texts(embedder, TEXTS[:25], store=store), HashingEmbedder(16).embed(TEXTS[:25])
    )
    assert embedder.embedded == 0


def test_store_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert store_root() == Path(
        os.environ[STORE_ENV]
    )  # set by conftest: tests never write to the home dir
    monkeypatch.delenv(STORE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store_root() == tmp_path / ".cache" / "dersim" / "embeddings"


def test_progress_lines_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress("embedding", 6, "texts", every_s=0.0) as advance:
        advance(2)
        advance(4)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "embedding: 2/6 texts",
        "embedding: 6/6 texts",
    ]
    assert lines[-1].endswith("/s)")
    with progress("embedding", 6, "texts", enabled=False) as advance:
        advance(6)
    assert capsys.readouterr().err == ""
