"""The committed real caches: they verify, and hold what the README promises."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dersim.cli import main

from conftest import REPO

BUNDLED = {
    # name: (train, test, minimum depth, maximum new tokens)
    "strategyqa": (200, 100, 3, 64),
    "math": (150, 50, 2, 96),
}
MAX_BYTES = 30 * 2**20


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_cache_verifies_and_matches_its_description(name: str) -> None:
    train, test, min_depth, max_tokens = BUNDLED[name]
    directory = REPO / "cache" / name
    runner = CliRunner()
    verified = runner.invoke(main, ["cache", "verify", str(directory)])
    assert verified.exit_code == 0, verified.output
    info = runner.invoke(main, ["cache", "info", str(directory), "--json"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    assert summary["questions"] == {"test": test, "train": train}
    assert summary["depth"] >= min_depth and summary["failed_calls"] == 0
    experts = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))["experts"]
    assert [e["backend"] for e in experts] == ["llama_cpp"] * 3
    assert all(e["max_new_tokens"] <= max_tokens and e["temperature"] == 0 for e in experts)
    # Every route of up to D calls replays: the full tree minus the merged answers.
    assert (
        summary["transitions"]
        == sum(summary["states_per_depth"][str(d)] for d in range(summary["depth"])) * 3
    )
    assert sum(p.stat().st_size for p in directory.iterdir()) < MAX_BYTES
    assert not (directory / "journal").exists()


def test_the_sampled_math_cache_holds_four_samples_per_call_and_its_journal() -> None:
    """cache/math-sampled: the math experts at temperature 0.7 with 4 samples, 32 questions at
    depth 1, every sample a transition, its sampling baselines reported, and its journal holding
    every call of the tables (so the build resumes)."""
    from dersim.builder.journal import CallJournal

    directory = REPO / "cache" / "math-sampled"
    runner = CliRunner()
    assert runner.invoke(main, ["cache", "verify", str(directory)]).exit_code == 0
    info = runner.invoke(main, ["cache", "info", str(directory), "--json"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    assert summary["questions"] == {"test": 8, "train": 24} and summary["failed_calls"] == 0
    assert summary["transitions"] == 32 * 3 * 4
    sampling = summary["sampling"]
    assert [(e["samples"], e["temperature"]) for e in sampling] == [(4, 0.7)] * 3
    assert all(e["distinct_share"] > 0.9 for e in sampling), "sampled answers rarely repeat"
    assert summary["sampling_voting"]["calls"] == 12
    assert len(CallJournal(directory / "journal").keys()) >= summary["transitions"]
