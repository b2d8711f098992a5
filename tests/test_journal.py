"""The call journal: records survive reopening, the newest record of a key wins, many shards are
compacted, and a damaged shard is reported by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dersim.builder.journal import COMPACT_ABOVE, CallJournal, CallRecord
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
    assert sorted(CallJournal(tmp_path).records) == ["a", "b", "c"]


def test_many_shards_are_compacted(tmp_path: Path) -> None:
    journal = CallJournal(tmp_path, flush_every=1)
    for index in range(COMPACT_ABOVE + 5):
        journal.add(record(f"k{index}"))
    assert len(list(tmp_path.glob("shard-*.parquet"))) == COMPACT_ABOVE + 5
    reopened = CallJournal(tmp_path)
    assert len(list(tmp_path.glob("shard-*.parquet"))) == 1
    assert reopened.records == journal.records


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
