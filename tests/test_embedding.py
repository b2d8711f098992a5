"""State embeddings: the packaged MiniLM through sentence-transformers, and feature hashing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dersim.builder.embedding import Embedder, HashingEmbedder, make_embedder, state_text
from dersim.errors import BackendError
from dersim.recipe import EmbeddingSpec

TEXTS = [
    state_text(
        "Do hamsters provide food for any animals?", "Yes. Hamsters are prey animals eaten by owls."
    ),
    state_text("Do hamsters provide food for any animals?", "Yes, owls and snakes eat hamsters."),
    state_text("Would a pear sink in water?", "No. A pear is less dense than water, so it floats."),
    state_text("Would a pear sink in water?", ""),
]


def _cosine(rows: np.ndarray, i: int, j: int) -> float:
    return float(rows[i] @ rows[j])


def test_state_text() -> None:
    assert state_text("Is it?", "Yes.") == "Q: Is it?\nA: Yes."
    assert state_text("Is it?", "") == "Q: Is it?\nA: "


# ---------------------------------------------------------------------------------------------
# MiniLM


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return make_embedder(EmbeddingSpec(model="all-MiniLM-L6-v2", dim=384, batch_size=2))


def test_minilm_shape_norm_and_determinism(minilm: Embedder) -> None:
    rows = minilm.embed(TEXTS)
    assert minilm.dim == 384
    assert rows.shape == (4, 384) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(minilm.embed(TEXTS), rows)
    assert minilm.embed([]).shape == (0, 384)


def test_minilm_similar_states_are_closer(minilm: Embedder) -> None:
    rows = minilm.embed(TEXTS)
    assert _cosine(rows, 0, 1) > _cosine(rows, 0, 2) + 0.2
    assert _cosine(rows, 2, 3) > _cosine(rows, 1, 3)


def test_minilm_truncates_long_texts(minilm: Embedder) -> None:
    rows = minilm.embed(["Hamsters are prey animals. " * 600])
    assert rows.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_minilm_describe(minilm: Embedder) -> None:
    info = minilm.describe()
    assert info["kind"] == "sentence-transformers" and info["dim"] == 384
    assert Path(info["path"], "config.json").is_file()
    assert info["max_seq_length"] == 256


def test_dim_mismatch_names_the_key(minilm: Embedder) -> None:
    with pytest.raises(BackendError, match=r"\[embedding\].dim = 256 .* gives 384-dim"):
        make_embedder(EmbeddingSpec(model="all-MiniLM-L6-v2", dim=256))


def test_unknown_model() -> None:
    with pytest.raises(BackendError, match="model 'all-mpnet-base-v2' not found"):
        make_embedder(EmbeddingSpec(model="all-mpnet-base-v2", dim=768))


# ------------------------------------------------------------------------------------- hashing

_SUBPROCESS = """
import sys
from dersim.builder.embedding import make_embedder
from dersim.recipe import EmbeddingSpec
embedder = make_embedder(EmbeddingSpec(model="hashing", dim=64))
sys.stdout.write(embedder.embed([sys.argv[1]]).tobytes().hex())
"""


def test_hashing_is_the_same_in_another_process() -> None:
    hashing = make_embedder(EmbeddingSpec(model="hashing", dim=64))
    here = hashing.embed([TEXTS[0]])
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[1])}
    there = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, TEXTS[0]],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert there == here.tobytes().hex()
    assert np.count_nonzero(here) > 10


def test_hashing_rows_are_unit_norm_and_empty_text_is_e0() -> None:
    hashing = make_embedder(EmbeddingSpec(model="hashing", dim=32))
    assert isinstance(hashing, HashingEmbedder) and hashing.dim == 32
    rows = hashing.embed([*TEXTS, "", "!!! ..."])
    assert rows.shape == (6, 32) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    expected = np.zeros(32, dtype=np.float32)
    expected[0] = 1.0
    np.testing.assert_array_equal(rows[4], expected)
    np.testing.assert_array_equal(rows[5], expected)
    assert hashing.embed([]).shape == (0, 32)


def test_hashing_sees_words_and_word_order() -> None:
    hashing = make_embedder(EmbeddingSpec(model="hashing", dim=1024))
    rows = hashing.embed(
        [
            "the pear floats in water",
            "The pear FLOATS in water!",
            "water in floats pear the",
            "owls eat hamsters at night",
        ]
    )
    np.testing.assert_allclose(rows[0], rows[1])  # case and punctuation do not count
    assert 0.3 < _cosine(rows, 0, 2) < 0.9  # same unigrams, different bigrams
    assert _cosine(rows, 0, 2) > abs(_cosine(rows, 0, 3))
    assert hashing.describe()["dim"] == 1024


def test_hashing_rejects_a_non_positive_dim() -> None:
    with pytest.raises(BackendError, match=r"\[embedding\].dim must be > 0"):
        make_embedder(EmbeddingSpec(model="hashing", dim=0))
