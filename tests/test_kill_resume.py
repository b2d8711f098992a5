"""A build killed with SIGKILL at any moment, then rerun, ends identical to an uninterrupted build
and does not redo the calls that were journaled before the kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dersim.cache.schema import MANIFEST, TABLE_FILES
from dersim.cache.verify import verify_cache

from conftest import REPO, synthetic_recipe_text


def run_build(recipe: Path, out: Path) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dersim",
            "build-cache",
            str(recipe),
            "--out",
            str(out),
            "--quiet",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize("shards_before_kill", [0, 3])
def test_sigkill_then_resume_matches_an_uninterrupted_build(
    write_recipe, tmp_path: Path, shards_before_kill: int
) -> None:
    recipe = write_recipe(
        synthetic_recipe_text(train=10, test=4, depth=3, latency_ms=4, flush_every=8)
    )
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dersim",
            "build-cache",
            str(recipe),
            "--out",
            str(killed),
            "--quiet",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = killed / "journal"
    deadline = time.monotonic() + 60
    while (
        len(list(journal.glob("shard-*.parquet"))) < max(shards_before_kill, 1)
        and time.monotonic() < deadline
    ):
        if shards_before_kill == 0 and journal.exists():
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / MANIFEST).exists(), (
        "the build finished before the kill; the test proves nothing"
    )
    journaled = len(list(journal.glob("shard-*.parquet")))

    resumed = run_build(recipe, killed)
    clean = run_build(recipe, tmp_path / "clean")
    assert resumed["calls_made"] + resumed["calls_reused"] == clean["calls_made"]
    if journaled:
        assert resumed["calls_reused"] >= 8 * journaled, "journaled calls must not be redone"
    for name in TABLE_FILES:
        assert (killed / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert verify_cache(killed) == []
