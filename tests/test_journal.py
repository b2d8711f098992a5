"""The call journal: records survive reopening, the newest record of a key wins, shards are merged
as they accumulate (an interrupted merge loses nothing), opening reads only keys, and a damaged
shard is reported by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dersim.builder.journal import MERGE_FAN, CallJournal, CallRecord
from dersim.errors import CacheFormatError


def record(key: str, status: str = "ok", text: str | None = "Yes.") -> CallRecord:
    return CallRecord(
        key, "q", "e", None, text, 3, 2, 0.5, status, "" if status == "ok" else "boom", 1
    )


def test_records_survive_reopening_and_the_newest_wins(tmp_path: Path) -> None:
    journal = CallJournal(tmp_path, flush_every=2)
    journal.add(record("a", "failed", None))
    journal.add(record("b"))
    journal.add(record("a"))  # the retried call succeeded
    journal.flush()
    reopened = CallJournal(tmp_path)
    assert reopened.get("a") == record("a") and reopened.get("b") == record("b")
    assert reopened.get("missing") is None


def test_unflushed_records_are_the_only_loss(tmp_path: Path) -> None:
    journal = CallJournal(tmp_path, flush_every=3)
    for key in "abcd":
        journal.add(record(key))
    # "d" is pending; a SIGKILL now loses it, nothing else.
    assert sorted(CallJournal(tmp_path).keys()) == ["a", "b", "c"]


def shard_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("shard-*.parquet"))


def test_shards_merge_like_a_base_f_counter(tmp_path: Path) -> None:
    """300 flushes are 1*16^2 + 2*16 + 12 in base 16: 15 shards, every record still there and
    the newest version of a rewritten key wins across merges."""
    journal = CallJournal(tmp_path, flush_every=1)
    for index in range(300):
        journal.add(record(f"k{index}"))
    journal.add(record("k5", "failed", None))  # flush 301 rewrites a key merged long ago
    assert (MERGE_FAN, journal.shards()) == (16, 1 + 2 + 13)
    assert len(shard_files(tmp_path)) == journal.shards()
    reopened = CallJournal(tmp_path)
    assert reopened.shards() == journal.shards() and len(reopened) == 300
    wanted = [f"k{index}" for index in range(300)]
    assert reopened.lookup(wanted) == journal.lookup(wanted)
    assert reopened.get("k5") == record("k5", "failed", None)
    assert reopened.get("k6") == record("k6")


def test_an_interrupted_merge_leaves_nothing_behind(tmp_path: Path) -> None:
    """A kill after a merge wrote its shard but before it deleted the merged ones: the next open
    deletes the leftovers (their records are in the merged shard) and answers from the merged."""
    journal = CallJournal(tmp_path, flush_every=1)
    for index in range(MERGE_FAN - 1):
        journal.add(record(f"k{index}"))
    leftover = (tmp_path / "shard-000003.parquet").read_bytes()  # holds k2
    journal.add(record("k2", "failed", None))  # the 16th flush: merged into shard-000001-000016
    assert shard_files(tmp_path) == ["shard-000001-000016.parquet"]
    (tmp_path / "shard-000003.parquet").write_bytes(leftover)
    reopened = CallJournal(tmp_path)
    assert shard_files(tmp_path) == ["shard-000001-000016.parquet"]
    assert reopened.get("k2") == record("k2", "failed", None) and len(reopened) == MERGE_FAN - 1


def test_opening_reads_only_the_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a journal touches its key column only; a look-up reads just the shards that hold
    a wanted key."""
    import pyarrow.parquet as pq

    journal = CallJournal(tmp_path, flush_every=2)
    for index in range(6):
        journal.add(record(f"k{index}"))
    reads: list[tuple[str, list[str] | None]] = []
    real = pq.read_table

    def counted(source: Path, columns: list[str] | None = None, **kwargs: object) -> object:
        reads.append((Path(source).name, columns))
        return real(source, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", counted)
    reopened = CallJournal(tmp_path)
    assert len(reads) == 3 and all(columns == ["key"] for _, columns in reads)
    reads.clear()
    assert reopened.lookup(["k4", "k5", "missing"]) == {"k4": record("k4"), "k5": record("k5")}
    assert reads == [("shard-000003.parquet", None)]


def test_damaged_shard_is_named_and_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-shard-000009.parquet").write_bytes(b"half a file")
    CallJournal(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))
    (tmp_path / "shard-000001.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(CacheFormatError, match=r"shard-000001\.parquet: unreadable journal shard"):
        CallJournal(tmp_path)


def test_a_journal_refuses_calls_from_another_kernel_set(tmp_path: Path) -> None:
    """A build resumed on a machine whose llama.cpp arithmetic differs would mix two kernel sets'
    answers in one cache; the CPU model alone is not a difference (the kernels are portable)."""
    from dersim.builder.journal import KERNELS_FILE, check_kernels
    from dersim.errors import BackendError

    here = {
        "llama_cpp": {
            "llama_cpp_python": "0.3.36",
            "features": ["AVX2", "FMA"],
            "extra_buffer_types": False,
            "default_threads": 2,
            "portable": True,
            "cpu": "AMD EPYC",
        }
    }
    check_kernels(tmp_path, here)
    assert json.loads((tmp_path / KERNELS_FILE).read_text())["llama_cpp"]["features"] == [
        "AVX2",
        "FMA",
    ]
    check_kernels(
        tmp_path, {"llama_cpp": {**here["llama_cpp"], "cpu": "Intel(R) Xeon(R) Platinum 8488C"}}
    )
    native = {
        "llama_cpp": {**here["llama_cpp"], "features": ["AVX2", "AVX512", "FMA"], "portable": False}
    }
    with pytest.raises(
        BackendError, match="its calls ran on other llama_cpp kernels .*features"
    ) as info:
        check_kernels(tmp_path, native)
    assert "\n" not in str(info.value)
    check_kernels(tmp_path, {})  # a synthetic-only recipe has no in-process kernels to compare
