"""End-to-end builds on the synthetic backend: a sound cache, exact reuse of journaled calls,
deeper and larger rebuilds that reuse smaller ones, and failure handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dersim.builder.build import build_cache
from dersim.cache.info import cache_summary
from dersim.cache.reader import open_cache
from dersim.cache.schema import TABLE_FILES
from dersim.cache.verify import verify_cache
from dersim.recipe import load_recipe

from conftest import synthetic_recipe_text


def tables_bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in TABLE_FILES}


def test_synthetic_build_is_sound_complete_and_deduplicated(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(synthetic_recipe_text(depth=3)))
    report = build_cache(recipe, tmp_path / "c", show_progress=False)
    assert verify_cache(tmp_path / "c") == []
    cache = open_cache(tmp_path / "c")
    states, transitions = cache.states, cache.transitions
    assert report.states == states.height and report.transitions == transitions.height
    assert report.calls_made == transitions.height and report.calls_reused == 0
    # Every state above depth D has exactly one transition per expert; states at depth D have none.
    expandable = states.filter(pl.col("depth") < 3).height
    assert transitions.height == expandable * 3
    assert 0 < report.dedup_saving < 1 and transitions.height < report.full_tree_calls
    assert set(cache.metric_columns) == {"accuracy", "token_f1", "rouge_l"}
    embeddings = np.stack(states["embedding"].to_numpy())
    assert embeddings.shape == (states.height, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    summary = cache_summary(cache)
    assert summary["questions"] == {"test": 4, "train": 8}
    accuracy = [e["depth1"]["accuracy"] for e in summary["experts"]]
    assert accuracy[2] > accuracy[0], "the skilled synthetic expert must beat the weak one"
    assert (
        summary["oracle_any_state"]["accuracy"]
        >= summary["oracle_single_call"]["accuracy"]
        >= max(accuracy)
    )


def test_rebuild_reuses_every_call_and_is_byte_identical(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(synthetic_recipe_text()))
    first = build_cache(recipe, tmp_path / "c", show_progress=False)
    before = tables_bytes(tmp_path / "c")
    second = build_cache(recipe, tmp_path / "c", show_progress=False)
    assert second.calls_made == 0 and second.calls_reused == first.transitions
    assert tables_bytes(tmp_path / "c") == before
    fresh = build_cache(recipe, tmp_path / "fresh", show_progress=False)
    assert fresh.calls_made == first.transitions
    assert tables_bytes(tmp_path / "fresh") == before


def test_deeper_and_larger_builds_reuse_the_smaller_build(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(synthetic_recipe_text(depth=3)))
    small = build_cache(recipe, tmp_path / "c", limit=6, depth=2, show_progress=False)
    assert verify_cache(tmp_path / "c") == []
    big = build_cache(recipe, tmp_path / "c", show_progress=False)
    assert big.calls_reused == small.transitions
    assert big.calls_made == big.transitions - small.transitions
    assert verify_cache(tmp_path / "c") == []


def test_transient_failures_are_retried(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(
        write_recipe(synthetic_recipe_text(fail_rate=0.5, fail_attempts=1, retries=1))
    )
    report = build_cache(recipe, tmp_path / "c", show_progress=False)
    assert report.failed == 0
    assert verify_cache(tmp_path / "c") == []
    clean = build_cache(
        load_recipe(write_recipe(synthetic_recipe_text(), "clean.toml")),
        tmp_path / "clean",
        show_progress=False,
    )
    assert tables_bytes(tmp_path / "c").keys() == tables_bytes(tmp_path / "clean").keys()
    assert (
        open_cache(tmp_path / "c")
        .states.drop("embedding")
        .equals(open_cache(tmp_path / "clean").states.drop("embedding"))
    )
    assert clean.failed == 0


def test_persistent_failures_are_recorded_and_a_rerun_completes(
    write_recipe, tmp_path: Path
) -> None:
    failing = load_recipe(write_recipe(synthetic_recipe_text(fail_rate=0.3, retries=1)))
    report = build_cache(failing, tmp_path / "c", show_progress=False)
    assert report.failed > 0 and len(report.failures) == report.failed
    assert "synthetic failure (attempt 2)" in report.failures[0]
    problems = verify_cache(tmp_path / "c")
    assert any("failed calls" in p for p in problems)
    failed_rows = open_cache(tmp_path / "c").transitions.filter(pl.col("status") == "failed")
    assert (
        failed_rows.height == report.failed
        and failed_rows["next_state_id"].null_count() == report.failed
    )

    healed = load_recipe(
        write_recipe(synthetic_recipe_text(), "healed.toml")
    )  # the backend is back
    rerun = build_cache(healed, tmp_path / "c", show_progress=False)
    assert rerun.failed == 0 and rerun.calls_reused > 0
    assert verify_cache(tmp_path / "c") == []
    build_cache(healed, tmp_path / "clean", show_progress=False)
    assert tables_bytes(tmp_path / "c") == tables_bytes(tmp_path / "clean")


@pytest.mark.parametrize("concurrency", [4])
def test_parallel_calls_give_the_same_cache(write_recipe, tmp_path: Path, concurrency: int) -> None:
    serial = load_recipe(write_recipe(synthetic_recipe_text(latency_ms=1)))
    parallel = load_recipe(
        write_recipe(synthetic_recipe_text(latency_ms=1, concurrency=concurrency), "p.toml")
    )
    build_cache(serial, tmp_path / "s", show_progress=False)
    build_cache(parallel, tmp_path / "p", show_progress=False)
    assert tables_bytes(tmp_path / "s") == tables_bytes(tmp_path / "p")
