"""Replicas of an HTTP expert on a loopback fleet: least-loaded choice, failover, probing back."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl
import pytest

from dersim.builder.backends.base import CallRequest
from dersim.builder.backends.openai_http import OpenAIBackend
from dersim.builder.backends.replicas import ReplicaPool
from dersim.builder.build import build_cache
from dersim.builder.fleet import FleetReplica, fleet
from dersim.builder.sources.question import Question
from dersim.cache.reader import open_cache
from dersim.errors import BackendError
from dersim.recipe import ExpertSpec, load_recipe

from conftest import STRATEGYQA


def fleet_recipe_text(base_urls: list[str]) -> str:
    """Two HTTP experts served by the replicas at `base_urls`; 10 + 4 questions, depth 2."""
    urls = ", ".join(f'"{u}"' for u in base_urls)
    experts = "".join(
        f"""
[[experts]]
name = "{name}"
backend = "openai"
model = "{name}-model"
params_b = {size}
options = {{ base_url = [{urls}], timeout_s = 5, max_concurrency = 2, replica_probe_s = 0.2 }}
"""
        for name, size in (("alpha", 1.0), ("beta", 3.0))
    )
    return f"""
name = "fleet"
[dataset]
source = "bigbench"
task = "strategyqa"
path = "{STRATEGYQA}"
train = 10
test = 4
seed = 3
[build]
depth = 2
retries = 1
backoff_s = 0.001
concurrency = 6
[metrics]
names = ["accuracy_yesno", "token_f1"]
[embedding]
model = "hashing"
dim = 16
{experts}"""


def build(root: Path, base_urls: list[str]) -> Path:
    root.mkdir()
    (root / "recipe.toml").write_text(fleet_recipe_text(base_urls), encoding="utf-8")
    build_cache(load_recipe(root / "recipe.toml"), root / "cache", show_progress=False)
    return root / "cache"


def answers_of(cache: Path) -> dict[str, pl.DataFrame]:
    """The cache's tables without the measured latencies (the one column a replica changes)."""
    opened = open_cache(cache)
    return {
        "questions": opened.questions,
        "states": opened.states,
        "transitions": opened.transitions.drop("latency_s"),
    }


def test_a_build_survives_a_killed_replica_and_one_that_fails_for_a_while(tmp_path: Path) -> None:
    with fleet(1) as (healthy,):
        reference = answers_of(build(tmp_path / "one", [healthy.base_url]))
    with fleet(4, latency_s=0.002) as replicas:
        killed, flaky = replicas[0], replicas[1]

        def sabotage() -> None:
            while sum(r.requests for r in replicas) < 20:
                threading.Event().wait(0.005)
            killed.close()
            flaky.fail_with(500, calls=15)

        saboteur = threading.Thread(target=sabotage, daemon=True)
        saboteur.start()
        cache = build(tmp_path / "four", [r.base_url for r in replicas])
        saboteur.join(timeout=5)
        assert not saboteur.is_alive(), "the build ended before the sabotage started"
        # Three 500s in a row take it out of rotation; probes bring it back after the 15.
        assert flaky.requests - flaky.answered >= 3
        assert all(r.answered for r in replicas[2:])
    fleet_tables = answers_of(cache)
    for name, table in reference.items():
        assert fleet_tables[name].equals(table), f"{name} differs from the one-server build"
    rows = pl.concat([pl.read_parquet(shard) for shard in (cache / "journal").glob("shard-*")])
    assert rows.height == rows["key"].n_unique() == reference["transitions"].height
    assert (rows["status"] == "ok").all(), "every call was answered, once"


def test_the_least_loaded_live_replica_takes_the_call() -> None:
    now = [0.0]
    pool = ReplicaPool(
        ["a", "b", "c"], max_in_flight=2, max_failures=2, probe_after_s=1.0, clock=lambda: now[0]
    )
    assert [pool.acquire(set()) for _ in range(4)] == [0, 1, 2, 0]
    pool.release(0, ok=True)
    assert pool.acquire(set()) == 0 and pool.acquire({1}) == 2
    assert pool.acquire({0, 1, 2}) is None


def test_a_failing_replica_leaves_the_rotation_and_is_probed_back() -> None:
    now = [0.0]
    pool = ReplicaPool(
        ["a", "b"], max_in_flight=4, max_failures=2, probe_after_s=1.0, clock=lambda: now[0]
    )
    for _ in range(2):
        assert pool.acquire(set()) == 0
        pool.release(0, ok=False)
    assert "r0 0.0/s down" in pool.status()
    assert [pool.acquire(set()) for _ in range(3)] == [1, 1, 1], "a down replica takes no call"
    assert pool.acquire({1}) is None, "with every other replica down, the call fails at once"
    now[0] = 1.5
    assert pool.acquire({1}) == 0, "after probe_after_s one probe goes to it"
    assert pool.replicas[0].capacity(now[0], 4) == 0, "one probe at a time"
    pool.release(0, ok=False)  # the probe fails: out again, for twice as long
    now[0] = 3.0
    assert pool.replicas[0].is_down(now[0]) and not pool.replicas[0].is_down(3.6)
    now[0] = 3.6
    assert pool.acquire({1}) == 0
    pool.release(0, ok=True)  # back in rotation, with its full window
    assert [pool.acquire({1}) for _ in range(4)] == [0, 0, 0, 0]


def test_one_slow_replica_does_not_hold_the_others_back() -> None:
    with fleet(2) as (slow, fast):
        slow.latency_s = 0.3
        backend = OpenAIBackend(
            ExpertSpec(
                name="e",
                backend="openai",
                params_b=1.0,
                model="m",
                options={"base_url": [slow.base_url, fast.base_url], "max_concurrency": 1},
            )
        )
        question = Question("q", "Is it?", "yes", ("yes",), "yes")
        threads = [
            threading.Thread(
                target=backend.complete, args=(CallRequest(question, None, f"p{i}", 8, ()),)
            )
            for i in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert slow.answered + fast.answered == 6 and fast.answered >= 4


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ([], "needs option 'base_url'"),
        (["http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1"], "lists a replica twice"),
        (["http://127.0.0.1:1/v1", "ftp://x/v1"], "must be an http:// or https:// URL"),
    ],
)
def test_bad_replica_lists_are_one_line_errors(base_url: list[str], message: str) -> None:
    with pytest.raises(BackendError, match=message) as caught:
        OpenAIBackend(
            ExpertSpec(
                name="e", backend="openai", params_b=1.0, model="m", options={"base_url": base_url}
            )
        )
    assert "\n" not in str(caught.value)


def test_every_replica_of_a_fleet_answers_alike() -> None:
    with fleet(2) as replicas:
        answers = [
            r.handle("/v1/chat/completions", {"model": "m", "messages": [{"content": "Is it?"}]})
            for r in replicas
        ]
    assert answers[0] == answers[1] and answers[0][0] == 200
    lone = FleetReplica()
    other = lone.handle("/v1/completions", {"model": "m", "prompt": "Is it? no"})
    lone.close()
    assert other[0] == 200 and other[1]["choices"][0]["text"] != answers[0][1]["choices"][0]
