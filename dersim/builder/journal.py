"""The build journal: every finished expert call, kept in small Parquet shards, so builds resume.

A call is identified by a key hashing everything its answer depends on (the expert's settings,
the prompt templates, the question and the previous answer), so a rerun reuses exactly the calls
that would give the same answer, and a changed recipe never reuses stale ones. Shards are written
atomically every `flush_every` calls (or 30 seconds): `kill -9` loses at most the unflushed calls.
The latest record of a key wins, so a failed call that succeeds on a rerun replaces its failure.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dersim.cache.schema import STATUS_OK, write_parquet_atomic
from dersim.errors import BackendError, CacheFormatError
from dersim.recipe import ExpertSpec, PromptSpec

SHARD_GLOB = "shard-*.parquet"
# The kernel fingerprints (replay keys) of the in-process backends the journal's calls ran on.
KERNELS_FILE = "kernels.json"
FLUSH_SECONDS = 30.0
COMPACT_ABOVE = 64  # shards; more are merged into one when a journal is opened

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


def expert_fingerprint(expert: ExpertSpec, prompt: PromptSpec) -> str:
    """A hash of every setting that changes what `expert` answers (not its price, size or speed)."""
    settings = asdict(expert)
    for irrelevant in ("params_b", "usd_per_mtok_in", "usd_per_mtok_out"):
        settings.pop(irrelevant)
    run_only = RUN_ONLY_OPTIONS.get(expert.backend, set())
    settings["options"] = {k: v for k, v in expert.options.items() if k not in run_only}
    settings["prompt"] = asdict(prompt)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def call_key(
    fingerprint: str, question_id: str, question_text: str, previous_answer: str | None
) -> str:
    """The identity of one call; `None` (the root prompt, no KTP) differs from an empty answer."""
    parts = [
        fingerprint,
        question_id,
        question_text,
        "\x00root" if previous_answer is None else previous_answer,
    ]
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


class CallJournal:
    """Append-only store of call records in `directory`, loaded whole at start."""

    def __init__(self, directory: Path, flush_every: int = 64) -> None:
        self.directory = directory
        self.flush_every = flush_every
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".tmp-*"):
            stale.unlink()
        self.records: dict[str, CallRecord] = {}
        self._pending: list[CallRecord] = []
        self._last_flush = time.monotonic()
        shards = sorted(directory.glob(SHARD_GLOB))
        self._next_shard = 1 + max((int(p.stem.split("-")[1]) for p in shards), default=0)
        for shard in shards:
            self._load(shard)
        if len(shards) > COMPACT_ABOVE:
            self._compact(shards)

    def _load(self, shard: Path) -> None:
        try:
            table = pq.read_table(shard, schema=RECORD_SCHEMA)
        except Exception as exc:  # pyarrow raises several error types for damaged files
            raise CacheFormatError(
                f"{shard}: unreadable journal shard ({type(exc).__name__}); "
                "delete it to redo only its calls"
            ) from None
        for row in table.to_pylist():
            self.records[row["key"]] = CallRecord(**row)

    def _compact(self, shards: list[Path]) -> None:
        """Merge all shards into one new shard, then delete the old ones (a kill in between only
        leaves duplicate records, and the newest shard wins on the next load)."""
        self._pending = list(self.records.values())
        self.flush()
        for shard in shards:
            shard.unlink()

    def get(self, key: str) -> CallRecord | None:
        return self.records.get(key)

    def add(self, record: CallRecord) -> None:
        """Remember a record; flush a shard when enough calls or seconds have gone by."""
        self.records[record.key] = record
        self._pending.append(record)
        if (
            len(self._pending) >= self.flush_every
            or time.monotonic() - self._last_flush > FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Write pending records as one new shard (atomic)."""
        if self._pending:
            table = pa.Table.from_pylist([asdict(r) for r in self._pending], schema=RECORD_SCHEMA)
            write_parquet_atomic(table, self.directory / f"shard-{self._next_shard:06d}.parquet")
            self._next_shard += 1
            self._pending.clear()
        self._last_flush = time.monotonic()


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
