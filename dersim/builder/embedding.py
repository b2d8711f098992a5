"""State embeddings: the observation the DER agent sees for a (question, latest answer) state.

Two embedders share one small interface: all-MiniLM-L6-v2 through sentence-transformers (the real
thing, about 50-150 texts/s on two CPU cores; on a GPU when one is present) and deterministic
feature hashing (no model, thousands of texts/s) for very large synthetic caches. Rows are float32
and unit-norm in both.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dersim.builder.local_models import hub_offline, local_model_path, torch_device
from dersim.errors import BackendError
from dersim.recipe import EmbeddingSpec

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

HASHING = "hashing"


def state_text(question: str, answer: str) -> str:
    """The text embedded for a state; the root state has an empty answer."""
    return f"Q: {question}\nA: {answer}"


class Embedder(Protocol):
    """Turns texts into unit-norm float32 rows of width `dim`."""

    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 array [len(texts), dim], every row of L2 norm 1."""
        ...

    def describe(self) -> dict[str, Any]:
        """How the embeddings were made, for the cache manifest."""
        ...


# ---------------------------------------------------------------------------------------------
# sentence-transformers
# ---------------------------------------------------------------------------------------------


@cache
def _sentence_transformer(path: str, device: str = "cpu") -> SentenceTransformer:
    """One model per folder, device and process (loading takes seconds)."""
    hub_offline()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder, on `[embedding].device` (a GPU when
    "auto" finds one), with normalised outputs, in batches of `[embedding].batch_size`."""

    def __init__(self, spec: EmbeddingSpec) -> None:
        self.name = spec.model
        self.path = local_model_path(spec.model)
        self.batch_size = spec.batch_size
        self.model = _sentence_transformer(str(self.path), torch_device(spec.device))
        self.dim = int(self.model.get_embedding_dimension() or 0)
        if spec.dim != self.dim:
            raise BackendError(
                f"[embedding].dim = {spec.dim} but model '{spec.model}' gives {self.dim}-dim "
                f"embeddings; set dim = {self.dim}"
            )

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings; texts beyond the model's max_seq_length tokens are truncated. The
        last bits of a row depend on the batch it was computed in (up to ~2e-7)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(rows, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Model name and folder, width, truncation length and library version."""
        return {
            "kind": "sentence-transformers",
            "model": self.name,
            "path": str(self.path),
            "dim": self.dim,
            "max_seq_length": self.model.max_seq_length,
            "normalized": True,
            "sentence_transformers_version": version("sentence-transformers"),
        }


# ---------------------------------------------------------------------------------------------
# Feature hashing
# ---------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


@cache
def _feature_hash(feature: str) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(
        hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little"
    )


class HashingEmbedder:
    """Signed feature hashing of lower-cased word unigrams and bigrams into `dim` buckets.

    Bucket = hash mod dim, sign = the hash's top bit. A text without words (or whose features
    cancel exactly) gets the fixed unit vector e_0, so every row stays unit-norm.
    """

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise BackendError(f"[embedding].dim must be > 0 for the hashing embedder, got {dim}")
        self.dim = dim

    def _row(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
        hashes = np.fromiter(
            (_feature_hash(f) for f in features), dtype=np.uint64, count=len(features)
        )
        row = np.zeros(self.dim, dtype=np.float64)
        signs = np.where(hashes >> np.uint64(63), -1.0, 1.0)
        np.add.at(row, (hashes % np.uint64(self.dim)).astype(np.int64), signs)
        norm = np.linalg.norm(row)
        if norm == 0.0:
            row[0], norm = 1.0, 1.0
        return row / norm

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm hashed embeddings, float32 [len(texts), dim]."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._row(text)
        return out

    def describe(self) -> dict[str, Any]:
        """The hashing scheme, enough to recompute every row."""
        return {
            "kind": HASHING,
            "model": HASHING,
            "dim": self.dim,
            "features": "lower-cased \\w+ word unigrams and space-joined bigrams, counted",
            "hash": "blake2b digest_size=8 little-endian; bucket = h mod dim, sign = -1 if h >> 63",
            "empty_text": "e_0",
            "normalized": True,
        }


def make_embedder(spec: EmbeddingSpec) -> Embedder:
    """The embedder `spec.model` names: "hashing", a packaged model name, or a local model
    folder."""
    if spec.model == HASHING:
        return HashingEmbedder(spec.dim)
    return SentenceTransformerEmbedder(spec)
