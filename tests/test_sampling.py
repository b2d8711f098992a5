"""Sampled experts in the builder and the cache: k seeded calls per (state, expert), a `sample`
column, checks, the sampling baselines of `cache info`, and greedy caches left byte for byte as
they were."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from dersim.builder.build import JOURNAL_DIR, build_cache
from dersim.builder.journal import CallJournal
from dersim.builder.shards import Shard
from dersim.cache.merge import merge_caches
from dersim.cache.reader import open_cache
from dersim.cache.sampling import sampling_summary, sampling_voting
from dersim.cache.schema import TABLE_FILES, TRANSITIONS
from dersim.cache.verify import verify_cache
from dersim.cli import main
from dersim.env.tables import EnvSpec, load_tables
from dersim.errors import EnvError
from dersim.recipe import load_recipe

from conftest import rewrite, synthetic_recipe_text

# sha256 of the tables of `synthetic_recipe_text()` built by dersim before sampled experts existed
# (commit 060ae06): a greedy recipe must keep giving exactly these bytes.
GREEDY_TABLES = {
    "questions.parquet": "8561addaa29bbe80e64adf2f5174cf9c69ae2056471c41a4b87152d4fdf6d504",
    "states.parquet": "47af48e3c11c158c9cfa658e14af7fc52ea84628bf43bc68e447f0a0917e99c2",
    "transitions.parquet": "b45fa54e4e50035b160fc15898cff063d69b10081f02cdf2f16043cdca84747d",
}
SAMPLED = "params_b = 7.0\ntemperature = 0.7\nsamples = 4"  # the "large" expert samples 4


def digests(cache: Path) -> dict[str, str]:
    return {name: hashlib.sha256((cache / name).read_bytes()).hexdigest() for name in TABLE_FILES}


def build(root: Path, text: str, name: str = "cache", **kwargs: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "r.toml").write_text(text, encoding="utf-8")
    build_cache(load_recipe(root / "r.toml"), root / name, show_progress=False, **kwargs)
    return root / name


def test_a_greedy_recipe_gives_the_cache_it_gave_before_sampling(tmp_path: Path) -> None:
    """k = 1 at temperature 0, written out or left to the defaults, is the earlier cache byte for
    byte, with the same journal keys."""
    default = build(tmp_path / "default", synthetic_recipe_text())
    explicit = build(
        tmp_path / "explicit",
        synthetic_recipe_text().replace(
            "params_b = 7.0", "params_b = 7.0\ntemperature = 0.0\ntop_p = 1.0\nsamples = 1"
        ),
    )
    assert digests(default) == digests(explicit) == GREEDY_TABLES
    keys = [CallJournal(c / JOURNAL_DIR).keys() for c in (default, explicit)]
    assert keys[0] == keys[1] and len(keys[0]) == pl.read_parquet(default / TRANSITIONS).height


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sampled")
    return build(root, synthetic_recipe_text(train=12, test=6).replace("params_b = 7.0", SAMPLED))


def test_a_sampled_expert_makes_k_seeded_calls_per_state(sampled: Path) -> None:
    """Every expanded state has one transition per greedy expert and four, samples 0-3, for the
    sampled one; equal samples share a child, different ones do not."""
    assert verify_cache(sampled) == []
    t = pl.read_parquet(sampled / TRANSITIONS)
    per_call = t.group_by("state_id", "expert_id").agg(pl.len(), pl.col("sample").sort())
    assert set(per_call.filter(pl.col("expert_id") < 2)["len"]) == {1}
    large = per_call.filter(pl.col("expert_id") == 2)
    assert set(large["len"]) == {4} and all(s.to_list() == [0, 1, 2, 3] for s in large["sample"])
    children = (
        t.filter(pl.col("expert_id") == 2)
        .group_by("state_id")
        .agg(pl.col("next_state_id").n_unique())
    )
    distinct = set(children["next_state_id"])
    assert 1 in distinct and max(distinct) > 1, "some calls' samples agree, others differ"


def test_a_sampled_build_is_reproducible_resumable_and_shardable(
    sampled: Path, tmp_path: Path
) -> None:
    text = (sampled.parent / "r.toml").read_text(encoding="utf-8")
    again = build(tmp_path / "again", text)
    assert digests(again) == digests(sampled), "the same recipe gives the same cache"
    for name in TABLE_FILES:
        (again / name).unlink()
    recipe = load_recipe(tmp_path / "again" / "r.toml")
    report = build_cache(recipe, again, show_progress=False)
    assert report.calls_made == 0 and digests(again) == digests(sampled), "resumed from the journal"
    parts = [tmp_path / f"part-{i}" for i in range(2)]
    for index, part in enumerate(parts):
        build_cache(recipe, part, show_progress=False, shard=Shard(index, 2))
    merge_caches(parts, tmp_path / "merged")
    assert digests(tmp_path / "merged") == digests(sampled)


def test_verify_checks_the_sample_column(sampled: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sampled, broken, ignore=shutil.ignore_patterns("journal"))
    for change, message in (
        (pl.when(pl.col("expert_id") == 0).then(1).otherwise(pl.col("sample")), "outside [0,"),
        (pl.when(pl.col("expert_id") == 2).then(0).otherwise(pl.col("sample")), "duplicate"),
    ):
        rewrite(broken, TRANSITIONS, lambda t, change=change: t.with_columns(sample=change))
        problems = verify_cache(broken)
        assert any(message in p and "transitions.parquet" in p for p in problems), problems
        rewrite(broken, TRANSITIONS, lambda _: pl.read_parquet(sampled / TRANSITIONS))


def test_the_env_and_the_routers_refuse_a_sampled_cache_in_one_line(sampled: Path) -> None:
    """Until replay draws over a call's children, nothing replays a sampled cache silently."""
    with pytest.raises(EnvError, match="a sampled cache .4 samples per call.") as info:
        load_tables(sampled, EnvSpec(metric="accuracy"))
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(main, ["routers", "--cache", str(sampled)])
    assert result.exit_code != 0 and result.output.count("\n") == 1
    assert "a sampled cache" in result.output


def majority_of(k: int, p: float) -> float:
    """P(more than half of k independent samples are right), k odd."""
    return sum(math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(k // 2 + 1, k + 1))


def test_self_consistency_matches_the_analytic_majority_vote(tmp_path: Path) -> None:
    """Three synthetic experts whose samples are right with chance 0.6, independently, 5 samples
    each, 600 questions: each one's per-sample accuracy is 0.6, its 5-sample majority 0.683, and
    sampling-voting over all 15 samples 0.787, each within 4 standard errors; `cache info --json`
    reports them."""
    text = synthetic_recipe_text(train=500, test=100, depth=1)
    for skill in ("0.3", "0.6", "0.9"):
        text = text.replace(f"skill = {skill},", "skill = 0.6,")
    for size in ("0.5", "2.0", "7.0"):
        text = text.replace(
            f"params_b = {size}", f"params_b = {size}\ntemperature = 1.0\nsamples = 5"
        )
    cache = build(tmp_path, text)
    experts = sampling_summary(open_cache(cache))
    assert [(e["samples"], e["questions"]) for e in experts] == [(5, 600)] * 3

    def close(value: float, p: float, n: int) -> bool:
        return abs(value - p) < 4 * math.sqrt(p * (1 - p) / n)

    for e in experts:
        assert close(e["per_sample"]["accuracy"]["mean"], 0.6, 3000)
        assert close(e["self_consistency"]["accuracy"]["mean"], majority_of(5, 0.6), 600)
        assert e["best_of_k_reference"]["accuracy"]["mean"] > majority_of(5, 0.6) + 0.1
    voting = sampling_voting(open_cache(cache))
    assert voting["calls"] == 15
    assert close(voting["scores"]["accuracy"]["mean"], majority_of(15, 0.6), 600)
    result = CliRunner().invoke(main, ["cache", "info", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["sampling"] == experts and summary["sampling_voting"] == voting
