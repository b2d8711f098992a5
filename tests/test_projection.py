"""The optional PCA of state embeddings (`EnvSpec.embedding_dim`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dersim.builder.build import build_cache
from dersim.env.projection import principal_projection
from dersim.env.tables import EnvSpec, load_tables
from dersim.errors import DersimError
from dersim.recipe import load_recipe

from conftest import synthetic_recipe_text


def low_rank_rows(rng: np.random.Generator, n: int, rank: int, dim: int) -> np.ndarray:
    return (
        rng.normal(size=(n, rank)) @ rng.normal(size=(rank, dim)) + rng.normal(size=dim)
    ).astype(np.float32)


def pairwise(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[:, None] - x[None], axis=-1)


def test_full_rank_projection_keeps_distances_and_orders_by_variance() -> None:
    rng = np.random.default_rng(0)
    rows = low_rank_rows(rng, 40, rank=5, dim=24)
    projected = principal_projection(rows, np.ones(40, dtype=bool), 5, Path("c"))
    assert projected.shape == (40, 5) and projected.dtype == np.float32
    np.testing.assert_allclose(pairwise(projected), pairwise(rows), rtol=1e-4, atol=1e-4)
    variances = projected.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-6)
    np.testing.assert_allclose(projected.mean(axis=0), 0, atol=1e-4)


def test_components_come_from_the_fit_rows_only() -> None:
    rng = np.random.default_rng(1)
    rows = low_rank_rows(rng, 30, rank=6, dim=16)
    fit = np.arange(30) < 20
    before = principal_projection(rows, fit, 4, Path("c"))
    changed = rows.copy()
    changed[~fit] = rng.normal(size=(10, 16)) * 50  # other rows: no influence on the components
    after = principal_projection(changed, fit, 4, Path("c"))
    np.testing.assert_array_equal(before[fit], after[fit])
    assert not np.allclose(before[~fit], after[~fit])


def test_projection_does_not_depend_on_row_order_or_svd_signs() -> None:
    rng = np.random.default_rng(2)
    rows = low_rank_rows(rng, 25, rank=8, dim=12)
    order = rng.permutation(25)
    plain = principal_projection(rows, np.ones(25, dtype=bool), 3, Path("c"))
    shuffled = principal_projection(rows[order], np.ones(25, dtype=bool), 3, Path("c"))
    np.testing.assert_allclose(shuffled, plain[order], rtol=1e-5, atol=1e-5)
    flipped = principal_projection(-rows, np.ones(25, dtype=bool), 3, Path("c"))
    np.testing.assert_allclose(np.abs(flipped), np.abs(plain), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "k, fit_rows, message",
    [
        (0, 10, r"c: --embedding-dim 0 must be between 1 and the cache's embedding size 8"),
        (9, 10, r"--embedding-dim 9 must be between 1 and .* 8"),
        (5, 3, r"--embedding-dim 5 needs at least 5 train states \(the cache has 3\)"),
    ],
)
def test_bad_dimensions_are_one_line_errors(k: int, fit_rows: int, message: str) -> None:
    rows = np.random.default_rng(3).normal(size=(10, 8)).astype(np.float32)
    with pytest.raises(DersimError, match=message) as error:
        principal_projection(rows, np.arange(10) < fit_rows, k, Path("c"))
    assert "\n" not in str(error.value)


def test_tables_fit_on_train_states_and_serve_both_splits(write_recipe, tmp_path: Path) -> None:
    synthetic_cache = tmp_path / "cache"
    build_cache(
        load_recipe(write_recipe(synthetic_recipe_text())), synthetic_cache, show_progress=False
    )
    full = load_tables(synthetic_cache, EnvSpec(metric="token_f1"))
    train = load_tables(synthetic_cache, EnvSpec(metric="token_f1", embedding_dim=4))
    test = load_tables(synthetic_cache, EnvSpec(metric="token_f1", split="test", embedding_dim=4))
    assert train.embedding.shape == (full.embedding.shape[0], 4)
    np.testing.assert_array_equal(
        train.embedding, test.embedding
    )  # one projection for the whole cache
    with pytest.raises(DersimError, match="--embedding-dim 10000 must be between 1 and"):
        load_tables(synthetic_cache, EnvSpec(metric="token_f1", embedding_dim=10_000))
