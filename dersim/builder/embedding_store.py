"""The embedding store: every embedding a build or import computed, kept on disk and shared, so
a rebuild or re-import embeds only the texts it has not seen before. BERTScore's (P, R, F1) of an
(answer, reference) pair is kept the same way (`dersim.builder.scoring.PairScorer`).

Rows are keyed by (embedder, sha256 of the text). The store lives in `$DERSIM_EMBEDDING_STORE`,
else `~/.cache/dersim/embeddings`, with one folder per embedder: its model name and a hash of its
`describe()` (less the local model path), so a changed model, width or library version never
reuses old rows (feature hashing is not stored: it is nearly as fast). A folder holds
append-only Parquet shards (key, embedding) with unique names, each written atomically, so
several processes may add to it at once. Readers hold a shared `flock` on the folder while they
read; merging many shards into one takes it exclusively (and is skipped while anyone reads). A
shard that cannot be read is ignored: its texts are embedded again. Nothing is pickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from dersim.builder.embedding import Embedder, HashingEmbedder
from dersim.builder.progress import progress
from dersim.cache.schema import write_parquet_atomic
from dersim.cache.writer import embedding_column

STORE_ENV = "DERSIM_EMBEDDING_STORE"
SHARD_GLOB = "shard-*.parquet"
LOCK_FILE = ".lock"
CHUNK = 512  # texts embedded, then stored, at a time: an interrupted run keeps what it computed
COMPACT_ABOVE = 64  # shards; more are merged into one after a write


def store_root() -> Path:
    """`$DERSIM_EMBEDDING_STORE`, else `~/.cache/dersim/embeddings`."""
    value = os.environ.get(STORE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "dersim" / "embeddings"


def embedder_id(embedder: Embedder) -> str:
    """`<model>-<hash of describe() less the local path>`: one store folder per embedder."""
    described = {k: v for k, v in embedder.describe().items() if k != "path"}
    digest = hashlib.sha256(
        json.dumps(described, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(described.get("model", "model")))[-48:]
    return f"{name}-{digest}"


def text_key(text: str) -> bytes:
    """The sha256 digest of a text (UTF-8): its key in the store."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingStore:
    """The store folder of one embedder."""

    def __init__(self, embedder: Embedder, root: Path | None = None) -> None:
        self.directory = (root or store_root()) / embedder_id(embedder)
        self.dim = embedder.dim
        self.schema = pa.schema(
            [("key", pa.binary(32)), ("embedding", pa.list_(pa.float32(), self.dim))]
        )

    @contextmanager
    def _locked(self, mode: int) -> Iterator[bool]:
        """Holds `flock(mode | LOCK_NB)` on the folder's lock file; yields whether it got it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, mode if mode == fcntl.LOCK_SH else mode | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _shards(self) -> list[Path]:
        return sorted(self.directory.glob(SHARD_GLOB))

    def lookup(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(found bool [n], float32 [n, dim] rows, zero where not found) for `keys`."""
        found = np.zeros(len(keys), dtype=bool)
        rows = np.zeros((len(keys), self.dim), dtype=np.float32)
        if not keys or not self.directory.is_dir():
            return found, rows
        wanted = pl.DataFrame(
            {"key": keys, "index": np.arange(len(keys))},
            schema={"key": pl.Binary, "index": pl.Int64},
        )
        with self._locked(fcntl.LOCK_SH):
            for shard in self._shards():
                try:
                    stored = pl.read_parquet(shard, columns=["key"]).with_row_index("row")
                    hits = wanted.join(stored, on="key").unique("index")
                    hits = hits.filter(~pl.Series(found[hits["index"].to_numpy()]))
                    if hits.height == 0:
                        continue
                    column = pq.read_table(shard, columns=["embedding"])[
                        "embedding"
                    ].combine_chunks()
                    if column.type.list_size != self.dim:
                        continue
                    vectors = column.flatten().to_numpy().reshape(-1, self.dim)
                except Exception:  # a damaged or vanished shard: its texts are embedded again
                    continue
                index = hits["index"].to_numpy()
                rows[index] = vectors[hits["row"].to_numpy()]
                found[index] = True
                if found.all():
                    break
        return found, rows

    def add(self, keys: list[bytes], rows: np.ndarray) -> None:
        """Store `rows` under `keys` as a new shard (atomic; unique name)."""
        if not keys:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_arrays(
            [pa.array(keys, pa.binary(32)), embedding_column(rows)], schema=self.schema
        )
        write_parquet_atomic(
            table, self.directory / f"shard-{uuid.uuid4().hex}.parquet", compression_level=1
        )
        if len(self._shards()) > COMPACT_ABOVE:
            self.compact()

    def compact(self) -> None:
        """Merge every shard into one (first row of a key wins), unless another process is
        reading."""
        with self._locked(fcntl.LOCK_EX) as locked:
            shards = self._shards()
            if not locked or len(shards) < 2:
                return
            tables = []
            for shard in shards:
                try:
                    table = pq.read_table(shard, schema=self.schema)
                except Exception:  # dropped: its texts are embedded again when needed
                    continue
                tables.append(table)
            if tables:
                merged = pl.from_arrow(pa.concat_tables(tables)).unique(
                    "key", keep="first", maintain_order=True
                )
                write_parquet_atomic(
                    merged.to_arrow().cast(self.schema),
                    self.directory / f"shard-{uuid.uuid4().hex}.parquet",
                    compression_level=1,
                )
            for shard in shards:
                shard.unlink(missing_ok=True)


def embedding_store(embedder: Embedder) -> EmbeddingStore | None:
    """The store of `embedder` in the default location (see `store_root`); None for feature
    hashing, which already embeds 10k-28k texts/s here (a store hit: 36k-53k/s; see
    benchmarks/build_overhead.py) and is meant for large synthetic caches that would fill a
    store."""
    return None if isinstance(embedder, HashingEmbedder) else EmbeddingStore(embedder)


def embed_texts(
    embedder: Embedder,
    texts: list[str],
    *,
    show_progress: bool = False,
    store: EmbeddingStore | None = None,
    label: str = "embedding",
) -> np.ndarray:
    """float32 [len(texts), dim]: each distinct text's embedding from `store` when it holds it,
    else computed (CHUNK texts at a time, each chunk then added to the store) with a progress
    line. With no `store`, everything is computed. A store keeps the first row computed for a
    text, so every later build or import gets exactly those bits (MiniLM's last bits depend on
    the batch a text is embedded in). `label` names the progress line."""
    keys = [text_key(t) for t in texts]
    first: dict[bytes, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    distinct = list(first)
    if store is None:
        found, rows = (
            np.zeros(len(distinct), dtype=bool),
            np.zeros((len(distinct), embedder.dim), np.float32),
        )
    else:
        found, rows = store.lookup(distinct)
    todo = np.flatnonzero(~found)
    with progress(label, len(todo), "texts", show_progress) as advance:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            rows[chunk] = embedder.embed([texts[first[distinct[i]]] for i in chunk])
            if store is not None:
                store.add([distinct[i] for i in chunk], rows[chunk])
            advance(len(chunk))
    position = {key: i for i, key in enumerate(distinct)}
    return rows[np.fromiter((position[k] for k in keys), dtype=np.int64, count=len(keys))]
