"""A tiny synthetic cache and a run trained on it, for the `dersim route` and `dersim serve` tests."""

from __future__ import annotations

from pathlib import Path

from dersim.builder.build import build_cache
from dersim.env.tables import EnvSpec
from dersim.recipe import load_recipe
from dersim.trainer.ppo import PPOConfig
from dersim.trainer.run import GridTrainer

from conftest import synthetic_recipe_text

SMALL = PPOConfig(num_envs=8, num_steps=8, update_epochs=2, num_minibatches=2, hidden=32, updates_per_chunk=10)
TERMINATORS = ("learned", "none", "judge", "oracle")  # one policy each, in this order


def synthetic_run(root: Path) -> tuple[Path, Path]:
    """(cache, run): 14 strategyqa questions, 3 synthetic experts, depth 2, hashed 32-d embeddings;
    one policy per terminator, observing the top 8 principal components."""
    recipe = root / "recipe.toml"
    recipe.write_text(synthetic_recipe_text(train=10, test=4, depth=2), encoding="utf-8")
    build_cache(load_recipe(recipe), root / "cache", show_progress=False)
    spec = EnvSpec(metric="token_f1", p0=0.5, embedding_dim=8)
    trainer = GridTrainer.from_grid(root / "cache", root / "run", spec, SMALL, {"terminator": list(TERMINATORS)},
                                    seeds=1, steps=2 * SMALL.steps_per_chunk)
    trainer.train(show_progress=False)
    return root / "cache", root / "run"
