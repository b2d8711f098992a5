"""The build journal: every finished expert call, kept in small Parquet shards, so builds resume.

A call is identified by a key hashing everything its answer depends on (the expert's settings,
the prompt templates, the question and the previous answer), so a rerun reuses exactly the calls
that would give the same answer, and a changed recipe never reuses stale ones. Shards are written
atomically every `flush_every` calls (or 30 seconds): `kill -9` loses at most the unflushed calls.
The latest record of a key wins, so a failed call that succeeds on a rerun replaces its failure.
Shards are merged as they accumulate, and opening reads only their keys (see `CallJournal`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from dersim.cache.schema import STATUS_OK, write_parquet_atomic
from dersim.errors import BackendError, CacheFormatError
from dersim.recipe import ExpertSpec, PromptSpec, Recipe

SHARD_GLOB = "shard-*.parquet"
# The kernel fingerprints (replay keys) of the in-process backends the journal's calls ran on.
KERNELS_FILE = "kernels.json"
FLUSH_SECONDS = 30.0
MERGE_FAN = 16  # the newest this many shards of equal span are merged into one
INDEX_SCHEMA = {"key": pl.String, "shard": pl.Int64, "row": pl.Int64}

RECORD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("question_id", pa.string()),
        ("expert", pa.string()),
        ("previous_answer", pa.string()),
        ("text", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int16()),
    ]
)


@dataclass(frozen=True)
class CallRecord:
    """One finished call: its answer (or its error after the last attempt) and its cost."""

    key: str
    question_id: str
    expert: str
    previous_answer: str | None
    text: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    status: str
    error: str
    attempts: int

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


# Backend options that change how a call runs but never what it answers.
RUN_ONLY_OPTIONS = {
    "synthetic": {"latency_ms", "fail_rate", "fail_attempts"},
    "llama_cpp": {"n_threads"},
    "openai": {
        "base_url",
        "api_key_env",
        "timeout_s",
        "max_concurrency",
        "replica_failures",
        "replica_probe_s",
    },
}


def answer_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` less the backend's run-only ones (`RUN_ONLY_OPTIONS`)."""
    run_only = RUN_ONLY_OPTIONS.get(backend, set())
    return {k: v for k, v in options.items() if k not in run_only}


def expert_fingerprint(expert: ExpertSpec, prompt: PromptSpec) -> str:
    """A hash of every setting that changes what `expert` answers (not its price, size or speed)."""
    settings = asdict(expert)
    # The sample count is not a setting of any one call (a call's sample index is in its key);
    # top_p = 1 (the default) is left out so that greedy experts keep their keys.
    for irrelevant in ("params_b", "usd_per_mtok_in", "usd_per_mtok_out", "samples"):
        settings.pop(irrelevant)
    if settings["top_p"] == 1.0:
        settings.pop("top_p")
    settings["options"] = answer_options(expert.backend, expert.options)
    settings["prompt"] = asdict(prompt)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def build_fingerprint(recipe: Recipe) -> str:
    """A hash of the recipe less what may differ between the machines of one sharded build: the
    recipe's and the dataset's file paths and the experts' run-only options (servers, timeouts).
    `dersim cache merge` joins only shards whose fingerprints agree."""
    data = recipe.to_manifest()
    data.pop("path")
    data["dataset"].pop("path")
    for expert in data["experts"]:
        expert["options"] = answer_options(expert["backend"], expert["options"])
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def call_key(
    fingerprint: str,
    question_id: str,
    question_text: str,
    previous_answer: str | None,
    sample: int = 0,
) -> str:
    """The identity of one call; `None` (the root prompt, no KTP) differs from an empty answer.
    Sample i > 0 of a sampled expert is its own call (sample 0 has the key a single call has)."""
    parts = [
        fingerprint,
        question_id,
        question_text,
        "\x00root" if previous_answer is None else previous_answer,
        *([f"\x00sample {sample}"] if sample else []),
    ]
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


Span = tuple[int, int]  # the first and last flush a shard holds


class CallJournal:
    """Append-only store of call records in `directory`, opened by an index of its keys.

    Opening reads only the key column of each shard: memory holds (key, shard, row) per call, not
    the records; `lookup` reads the records a depth level asks for, shard by shard. Each flush is a
    new shard; whenever the newest MERGE_FAN shards span equally many flushes, they are rewritten
    as one (`shard-FIRST-LAST.parquet`), like the digits of a base-F counter. A journal of n
    flushes keeps at most (F - 1) log_F n shards and rewrites each record log_F n times: the cost
    of a flush does not grow with the journal, and reopening reads a few dozen files.
    """

    def __init__(self, directory: Path, flush_every: int = 64) -> None:
        self.directory = directory
        self.flush_every = flush_every
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".tmp-*"):
            stale.unlink()
        self._keys: dict[Span, pl.Series] = {}  # shard -> its keys, in row order
        self._index: pl.DataFrame | None = None  # newest (key, shard, row) per key
        self._pending: dict[str, CallRecord] = {}
        self._last_flush = time.monotonic()
        spans = sorted((_span(p) for p in directory.glob(SHARD_GLOB)), key=lambda s: (s[0], -s[1]))
        for span in spans:
            if self._keys and span[0] <= max(self._keys)[1]:
                # Inside a merged shard: left behind by a merge interrupted before its deletes.
                self._path(span).unlink()
                continue
            self._keys[span] = self._read(self._path(span), ["key"])["key"]
            self._merge_newest()
        self._next_flush = 1 + max((last for _, last in self._keys), default=0)

    def _path(self, span: Span) -> Path:
        first, last = span
        name = f"{first:06d}" if first == last else f"{first:06d}-{last:06d}"
        return self.directory / f"shard-{name}.parquet"

    def _read(self, shard: Path, columns: list[str] | None = None) -> pl.DataFrame:
        try:
            table = pq.read_table(shard, columns=columns, schema=RECORD_SCHEMA)
        except Exception as exc:  # pyarrow raises several error types for damaged files
            raise CacheFormatError(
                f"{shard}: unreadable journal shard ({type(exc).__name__}); "
                "delete it to redo only its calls"
            ) from None
        return pl.from_arrow(table)  # type: ignore[return-value]

    def _merge_newest(self) -> None:
        """While the newest MERGE_FAN shards span equally many flushes, write them as one shard
        (newest record per key) and delete them; a kill before the deletes leaves shards inside
        the merged one's span, which the next open deletes."""
        while len(self._keys) >= MERGE_FAN:
            newest = sorted(self._keys)[-MERGE_FAN:]
            if len({last - first for first, last in newest}) != 1:
                return
            merged = pl.concat([self._read(self._path(span)) for span in newest]).unique(
                subset="key", keep="last", maintain_order=True
            )
            span = (newest[0][0], newest[-1][1])
            write_parquet_atomic(merged.to_arrow().cast(RECORD_SCHEMA), self._path(span))
            for old in newest:
                self._path(old).unlink()
                del self._keys[old]
            self._keys[span] = merged["key"]
            self._index = None

    def _newest_rows(self) -> pl.DataFrame:
        """(key, shard, row) of the newest record of every flushed key; shard counts in age
        order."""
        if self._index is None:
            parts = [
                pl.DataFrame({"key": keys}).select(
                    "key",
                    shard=pl.lit(position, dtype=pl.Int64),
                    row=pl.int_range(pl.len(), dtype=pl.Int64),
                )
                for position, keys in enumerate(self._keys[s] for s in sorted(self._keys))
            ]
            frame = pl.concat(parts) if parts else pl.DataFrame(schema=INDEX_SCHEMA)
            self._index = frame.unique(subset="key", keep="last", maintain_order=True)
        return self._index

    def __len__(self) -> int:
        """How many distinct calls the journal holds (flushed or pending)."""
        return len(self.keys())

    def keys(self) -> set[str]:
        """Every call key the journal holds."""
        return set(self._newest_rows()["key"].to_list()) | set(self._pending)

    def shards(self) -> int:
        """How many shard files the journal has now."""
        return len(self._keys)

    def lookup(self, keys: Iterable[str]) -> dict[str, CallRecord]:
        """The newest record of each of `keys` the journal holds; absent keys are left out. Reads
        only the shards that hold one of them."""
        wanted = pl.DataFrame({"key": pl.Series(list(keys), dtype=pl.String)}).unique()
        found = wanted.join(self._newest_rows(), on="key")
        spans = sorted(self._keys)
        records: dict[str, CallRecord] = {}
        for (position,), rows in found.group_by("shard"):
            shard = self._read(self._path(spans[position]))  # type: ignore[call-overload]
            chosen = shard.select(pl.all().gather(rows["row"].sort()))
            for row in chosen.iter_rows(named=True):
                records[row["key"]] = CallRecord(**row)
        if self._pending:  # few (at most flush_every): look them up, not the wanted keys
            pending = wanted.filter(pl.col("key").is_in(pl.Series(list(self._pending))))
            records.update((k, self._pending[k]) for k in pending["key"])
        return records

    def get(self, key: str) -> CallRecord | None:
        """The newest record of `key`, or None."""
        return self.lookup([key]).get(key)

    def add(self, record: CallRecord) -> None:
        """Remember a record; flush a shard when enough calls or seconds have gone by."""
        self._pending[record.key] = record
        if (
            len(self._pending) >= self.flush_every
            or time.monotonic() - self._last_flush > FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Write pending records as one new shard (atomic), then merge shards that are due."""
        if self._pending:
            records = list(self._pending.values())
            table = pa.Table.from_pylist([asdict(r) for r in records], schema=RECORD_SCHEMA)
            span = (self._next_flush, self._next_flush)
            write_parquet_atomic(table, self._path(span))
            self._keys[span] = pl.Series("key", [r.key for r in records], dtype=pl.String)
            self._next_flush += 1
            self._pending.clear()
            self._index = None
            self._merge_newest()
        self._last_flush = time.monotonic()


def _span(path: Path) -> Span:
    """The flushes `shard-FIRST[-LAST].parquet` holds."""
    numbers = [int(part) for part in path.stem.split("-")[1:]]
    return numbers[0], numbers[-1]


def check_kernels(directory: Path, fingerprints: dict[str, dict[str, Any]]) -> None:
    """All calls of a journal come from one kernel set: the first build records its backends'
    replay keys (`dersim.builder.backends.llama_cpp.replay_key`) beside the shards, and a build
    resumed where llama.cpp's arithmetic differs is refused, since its cache would mix two
    machines' answers. Raises `BackendError` naming what differs."""
    from dersim.builder.backends.llama_cpp import replay_key

    path = directory / KERNELS_FILE
    keys = {name: replay_key(fingerprint) for name, fingerprint in fingerprints.items()}
    recorded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for name, key in keys.items():
        if name in recorded and recorded[name] != key:
            differing = ", ".join(
                f"{k} {recorded[name].get(k)!r} here {v!r}"
                for k, v in key.items()
                if recorded[name].get(k) != v
            )
            raise BackendError(
                f"{directory}: its calls ran on other {name} kernels ({differing}); resuming would "
                "mix two kernel sets' answers: install llama-cpp-python as the README says "
                "(builders/portable_llama_cpp.sh) or build into a new --out"
            )
    if keys.keys() - recorded.keys():
        path.write_text(
            json.dumps({**recorded, **keys}, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
