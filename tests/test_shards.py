"""Sharded builds and their merge: the merged cache is the single build's, table for table."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from dersim.builder.build import build_cache
from dersim.builder.shards import Shard
from dersim.cache.merge import merge_caches
from dersim.cache.schema import TABLE_FILES
from dersim.cache.verify import verify_cache
from dersim.cli import main
from dersim.errors import CacheFormatError, DersimError
from dersim.recipe import load_recipe

from conftest import synthetic_recipe_text

SHARDS = 3


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """(the single build, its SHARDS shard builds) of one synthetic depth-2 recipe."""
    root = tmp_path_factory.mktemp("shards")
    (root / "r.toml").write_text(synthetic_recipe_text(train=12, test=6), encoding="utf-8")
    recipe = load_recipe(root / "r.toml")
    build_cache(recipe, root / "whole", show_progress=False)
    parts = []
    for index in range(SHARDS):
        part = root / f"part-{index}"
        build_cache(recipe, part, show_progress=False, shard=Shard(index, SHARDS))
        parts.append(part)
    return root / "whole", parts


def digests(cache: Path) -> dict[str, str]:
    return {name: hashlib.sha256((cache / name).read_bytes()).hexdigest() for name in TABLE_FILES}


def test_shards_split_the_questions_and_merge_into_the_single_build(
    builds: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    whole, parts = builds
    sizes = [len(load(p)) for p in parts]
    assert sum(sizes) == 18 and all(sizes), "every shard holds some of the questions"
    merged = tmp_path / "merged"
    result = CliRunner().invoke(
        main, ["cache", "merge", *map(str, parts[::-1]), "--out", str(merged)]
    )
    assert result.exit_code == 0, result.output
    assert digests(merged) == digests(whole), "the same ids and the same bytes"
    assert verify_cache(merged) == []


def load(cache: Path) -> list[str]:
    import polars as pl

    return pl.read_parquet(cache / "questions.parquet")["question_id"].to_list()


def test_merge_refuses_a_missing_or_repeated_shard(
    builds: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, parts = builds
    with pytest.raises(CacheFormatError, match="shard 2 of 3 missing"):
        merge_caches(parts[:2], tmp_path / "a")
    with pytest.raises(CacheFormatError, match="shard 1 of 3 again"):
        merge_caches([*parts, parts[1]], tmp_path / "b")
    with pytest.raises(CacheFormatError, match="not a shard"):
        merge_caches([*parts, builds[0]], tmp_path / "c")


def test_merge_refuses_shards_of_another_recipe(
    builds: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, parts = builds
    (tmp_path / "r.toml").write_text(
        synthetic_recipe_text(train=12, test=6).replace("skill = 0.9", "skill = 0.8"),
        encoding="utf-8",
    )
    other = tmp_path / "other-1"
    build_cache(
        load_recipe(tmp_path / "r.toml"), other, show_progress=False, shard=Shard(1, SHARDS)
    )
    result = CliRunner().invoke(
        main,
        ["cache", "merge", str(parts[0]), str(other), str(parts[2]), "--out", str(tmp_path / "m")],
    )
    assert result.exit_code != 0 and result.output.count("\n") == 1
    assert "not a shard of the same build" in result.output
    assert "recipe_fingerprint" in result.output
    assert not (tmp_path / "m" / "manifest.json").exists()


def test_a_shard_built_from_its_own_recipe_copy_merges(
    builds: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Each machine may have its own copy of the recipe, in another folder and with its own
    run-only settings (here the synthetic backend's fail_attempts; for HTTP experts base_url): the
    merge is still the single build, table for table."""
    whole, parts = builds
    copy = tmp_path / "elsewhere" / "r.toml"
    copy.parent.mkdir()
    copy.write_text(synthetic_recipe_text(train=12, test=6, fail_attempts=7), encoding="utf-8")
    own = tmp_path / "own-1"
    build_cache(load_recipe(copy), own, show_progress=False, shard=Shard(1, SHARDS))
    merge_caches([parts[0], own, parts[2]], tmp_path / "merged")
    assert digests(tmp_path / "merged") == digests(whole)


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_a_bad_shard_option_is_a_one_line_error(text: str) -> None:
    with pytest.raises(DersimError, match="--shard"):
        Shard.parse(text)


def test_the_assignment_depends_on_the_id_alone() -> None:
    shard = Shard(0, 4)
    ids = [f"q{i}" for i in range(400)]
    held = [i for i in ids if shard.holds(i)]
    assert 60 < len(held) < 140
    assert [i for i in ids[::-1] if shard.holds(i)] == held[::-1]
