"""Training on several devices: a policy count that does not divide the device count is padded
(no silent fallback to one device), the state tables can be split across the devices along the
state axis, and the results equal one device's. The devices are forced
host devices (`--xla_force_host_platform_device_count`), in a subprocess: the flag must be set
before JAX starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dersim.builder.build import build_cache
from dersim.recipe import load_recipe

from conftest import REPO, synthetic_recipe_text

TRAIN = """
import sys
from pathlib import Path
import jax, numpy as np
from dersim.env.tables import EnvSpec
from dersim.trainer.ppo import PPOConfig
from dersim.trainer.run import GridTrainer

cache, out, shard_states = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
config = PPOConfig(num_envs=8, num_steps=8, update_epochs=2, num_minibatches=2, hidden=32,
                   updates_per_chunk=5)
trainer = GridTrainer.from_grid(
    cache, out / "run", EnvSpec(metric="accuracy", p0=0.5, val_fraction=0.25), config,
    {"alpha": [0.0, 0.05, 0.2], "algo": ["ppo", "fqi", "exact-pg"]}, seeds=1, steps=2 * 320,
    shard_states=shard_states)
state, curves = trainer.train(show_progress=False)
params = trainer.kept_params(state)
greedy = trainer.greedy(params, trainer.env_params, trainer.tables.roots)
spread = min(len(x.sharding.device_set) for x in jax.tree.leaves(state.groups[0]))  # ppo
tables = len(trainer.env_params.embedding.sharding.device_set)
np.savez(out / "result.npz", devices=len(jax.devices()), spread=spread, tables=tables,
         states=trainer.state_shards,
         actions=np.asarray(greedy["actions"]),
         *[np.asarray(x) for x in jax.tree.leaves(params)])
curves.drop("seconds", strict=False).write_parquet(out / "curves.parquet")
resumed = GridTrainer.from_run(out / "run").load()
np.savez(out / "resumed.npz", *[np.asarray(x) for x in jax.tree.leaves(
    trainer.kept_params(resumed))])
"""


def run(cache: Path, out: Path, devices: int, shard_states: str = "auto") -> dict[str, np.ndarray]:
    out.mkdir()
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, str(cache), str(out), shard_states],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(np.load(out / "result.npz")) | {"resumed": np.load(out / "resumed.npz")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("devices")
    (root / "r.toml").write_text(synthetic_recipe_text(train=24, test=8), encoding="utf-8")
    build_cache(load_recipe(root / "r.toml"), root / "cache", show_progress=False)
    return root / "cache"


@pytest.fixture(scope="module")
def one_device(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("one-device")
    return run(cache, out / "run", 1) | {"out": out / "run"}


def assert_same_training(one: dict, four: dict, four_out: Path) -> None:
    np.testing.assert_array_equal(one["actions"], four["actions"])
    weights = sorted(k for k in one if k.startswith("arr_"))
    assert weights and weights == sorted(k for k in four if k.startswith("arr_"))
    for key in weights:
        assert one[key].shape == four[key].shape, "padding policies never leave the trainer"
        np.testing.assert_allclose(one[key], four[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(four[key], four["resumed"][key])  # checkpoint round trip
    first = pl.read_parquet(one["out"] / "curves.parquet")
    second = pl.read_parquet(four_out / "curves.parquet")
    assert first.height == second.height and set(first["policy"]) == set(range(9))
    assert first.select("policy", "chunk").equals(second.select("policy", "chunk"))


def test_four_devices_train_three_policies_per_group_as_one_device_does(
    cache: Path, one_device: dict, tmp_path: Path
) -> None:
    four = run(cache, tmp_path / "four", 4)
    assert int(one_device["devices"]) == 1 and int(four["devices"]) == 4
    assert int(four["spread"]) == 4, "PPO's policies are spread over the four devices"
    assert int(four["states"]) == 1 and int(four["tables"]) == 1, "a small cache stays whole"
    assert_same_training(one_device, four, tmp_path / "four")


def test_state_tables_split_across_four_devices_train_as_one_device_does(
    cache: Path, one_device: dict, tmp_path: Path
) -> None:
    """--shard-states on: each device holds a quarter of the state rows (the count, padded with
    unreachable states, need not divide by four), and every policy trains as on one device."""
    n_states = pl.scan_parquet(cache / "states.parquet").select(pl.len()).collect().item()
    assert n_states % 4, "the synthetic cache should need padding"
    four = run(cache, tmp_path / "four", 4, shard_states="on")
    assert int(four["states"]) == 4 and int(four["tables"]) == 4
    assert_same_training(one_device, four, tmp_path / "four")
