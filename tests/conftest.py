"""Shared fixtures: paths to the real data, and small recipes written on the fly."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from dersim.cache.schema import MANIFEST, file_sha256, write_manifest, write_parquet_atomic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
STRATEGYQA = SHARED_DATA / "bigbench" / "strategyqa" / "task.json"
EMBEDDING_STORE_ENV = "DERSIM_EMBEDDING_STORE"


@pytest.fixture(scope="session", autouse=True)
def embedding_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedding store for the session (subprocesses inherit it), never the user's home."""
    path = tmp_path_factory.mktemp("embedding-store")
    before = os.environ.get(EMBEDDING_STORE_ENV)
    os.environ[EMBEDDING_STORE_ENV] = str(path)
    yield path
    if before is None:
        del os.environ[EMBEDDING_STORE_ENV]
    else:
        os.environ[EMBEDDING_STORE_ENV] = before


def synthetic_recipe_text(
    *,
    train: int = 8,
    test: int = 4,
    depth: int = 2,
    latency_ms: float = 0.0,
    fail_rate: float = 0.0,
    fail_attempts: int = 1_000_000,
    retries: int = 1,
    flush_every: int = 8,
    dataset: Path = STRATEGYQA,
    concurrency: int = 1,
) -> str:
    """A synthetic-backend recipe over real strategyqa questions (three experts)."""
    experts = "".join(
        f"""
[[experts]]
name = "{name}"
backend = "synthetic"
params_b = {size}
options = {{ skill = {skill}, refine = {refine}, copy = {copy}, latency_ms = {latency_ms}, \
fail_rate = {fail_rate}, fail_attempts = {fail_attempts} }}
"""
        for name, size, skill, refine, copy in (
            ("small", 0.5, 0.3, 0.2, 0.5),
            ("medium", 2.0, 0.6, 0.7, 0.2),
            ("large", 7.0, 0.9, 0.5, 0.0),
        )
    )
    return f"""
name = "tiny"
[dataset]
source = "bigbench"
task = "strategyqa"
path = "{dataset}"
train = {train}
test = {test}
seed = 3
[build]
depth = {depth}
retries = {retries}
backoff_s = 0.001
flush_every = {flush_every}
concurrency = {concurrency}
[metrics]
names = ["accuracy_yesno", "token_f1", "rouge_l"]
[embedding]
model = "hashing"
dim = 32
{experts}"""


def episode_return(env, question: int, actions: list[int]) -> float:
    """The reference env's (`DERGymEnv`) return of taking `actions` on `question` (until the episode
    ends)."""
    env.reset(options={"question": question})
    total = 0.0
    for action in actions:
        _, reward, done, _, _ = env.step(action)
        total += reward
        if done:
            break
    return total


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write recipe text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def rewrite(cache: Path, name: str, edit) -> None:
    """Rewrite one table through `edit` (a polars frame -> frame) and re-hash it in the manifest,
    so that only the deeper checks can catch the damage."""
    table = pq.read_table(cache / name)
    write_parquet_atomic(edit(pl.from_arrow(table)).to_arrow().cast(table.schema), cache / name)
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["files"][name] = file_sha256(cache / name)
    write_manifest(manifest, cache)
