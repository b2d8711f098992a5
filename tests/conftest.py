"""Shared fixtures: paths to the real data, and small recipes written on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
STRATEGYQA = SHARED_DATA / "bigbench" / "strategyqa" / "task.json"


def synthetic_recipe_text(*, train: int = 8, test: int = 4, depth: int = 2, latency_ms: float = 0.0,
                          fail_rate: float = 0.0, fail_attempts: int = 1_000_000, retries: int = 1,
                          flush_every: int = 8, dataset: Path = STRATEGYQA, concurrency: int = 1) -> str:
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
        for name, size, skill, refine, copy in (("small", 0.5, 0.3, 0.2, 0.5), ("medium", 2.0, 0.6, 0.7, 0.2),
                                                ("large", 7.0, 0.9, 0.5, 0.0))
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


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write recipe text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
