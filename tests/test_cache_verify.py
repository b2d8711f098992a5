"""`cache verify` and `cache info` on sound and on damaged caches."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from dersim.builder.build import build_cache
from dersim.cache.schema import (
    MANIFEST,
    MANIFEST_HASH,
    STATES,
    TRANSITIONS,
    manifest_hash_line,
)
from dersim.cache.verify import verify_cache
from dersim.recipe import load_recipe

from conftest import rewrite, synthetic_recipe_text


@pytest.fixture(scope="module")
def sound_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    recipe_path = root / "recipe.toml"
    recipe_path.write_text(synthetic_recipe_text(), encoding="utf-8")
    build_cache(load_recipe(recipe_path), root / "cache", show_progress=False)
    return root / "cache"


@pytest.fixture
def cache_copy(sound_cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(sound_cache, target, ignore=shutil.ignore_patterns("journal"))
    return target


def test_sound_cache_has_no_problems(sound_cache: Path) -> None:
    assert verify_cache(sound_cache) == []


def test_changed_bytes_break_the_hash(cache_copy: Path) -> None:
    with (cache_copy / STATES).open("ab") as handle:
        handle.write(b"x")
    assert any("sha256 differs" in p and STATES in p for p in verify_cache(cache_copy))


def test_missing_transition_is_incomplete(cache_copy: Path) -> None:
    rewrite(cache_copy, TRANSITIONS, lambda t: t.slice(1))
    assert any("incomplete to depth D" in p for p in verify_cache(cache_copy))


def test_dangling_next_state_is_out_of_range(cache_copy: Path) -> None:
    rewrite(
        cache_copy,
        TRANSITIONS,
        lambda t: t.with_columns(
            pl.when(pl.int_range(pl.len()) == 0)
            .then(10**6)
            .otherwise(pl.col("next_state_id"))
            .alias("next_state_id")
        ),
    )
    assert any(
        "1 next_state_id value outside 0.." in p and "(row 0)" in p
        for p in verify_cache(cache_copy)
    )


def test_duplicate_answers_and_bad_scores_are_found(cache_copy: Path) -> None:
    def damage(states: pl.DataFrame) -> pl.DataFrame:
        second = states.filter(pl.col("depth") == 1)["state_id"][1]
        first = states.filter(pl.col("depth") == 1)["answer"][0]
        return states.with_columns(
            pl.when(pl.col("state_id") == second)
            .then(pl.lit(first))
            .otherwise(pl.col("answer"))
            .alias("answer"),
            pl.when(pl.col("state_id") == second)
            .then(1.5)
            .otherwise(pl.col("token_f1"))
            .alias("token_f1"),
        )

    rewrite(cache_copy, STATES, damage)
    problems = verify_cache(cache_copy)
    assert any("duplicate another state's answer" in p for p in problems)
    assert any(
        "1 out-of-range (not within [0, 1]) value in column 'token_f1'" in p for p in problems
    )


def test_unreadable_parts_give_one_line_problems(cache_copy: Path) -> None:
    (cache_copy / MANIFEST).write_text("{broken")
    assert verify_cache(cache_copy) == [
        f"{cache_copy / MANIFEST}: does not match {MANIFEST_HASH} (edited or "
        "damaged since it was written; rebuild or re-import the cache)"
    ]
    (cache_copy / MANIFEST_HASH).write_text(manifest_hash_line(b"{broken"))
    assert verify_cache(cache_copy) == [
        f"{cache_copy / MANIFEST}: not valid JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1))"
    ]
    assert verify_cache(cache_copy / "nope") == [f"{cache_copy / 'nope'}: not a cache directory"]
