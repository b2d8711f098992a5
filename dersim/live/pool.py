"""The cache's experts and embedder, live: the same backends, prompts, KTP and generation settings.

Everything comes from the cache's manifest, so a live call renders exactly the request the builder
sent. One backend instance per expert is shared by every route in the process: an in-process
llama.cpp model serialises its own calls (it is not thread-safe), HTTP experts run concurrently
(bounded by their own `max_concurrency`). The embedder is serialised too (a Hugging Face tokenizer
refuses concurrent use).
"""

from __future__ import annotations

import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from dersim.builder.backends import make_backend
from dersim.builder.backends.base import Backend, CallFailed, CallRejected, Completion
from dersim.builder.embedding import Embedder, make_embedder
from dersim.builder.prompts import render_request
from dersim.builder.sources.question import Question
from dersim.cache.reader import read_manifest
from dersim.cache.schema import is_imported
from dersim.errors import DersimError
from dersim.recipe import EmbeddingSpec, ExpertSpec, PromptSpec


class ExpertCallError(DersimError):
    """A live expert call failed after its retries; `rejected` when it can never succeed (e.g. the
    prompt does not fit the expert's context window)."""

    def __init__(self, message: str, rejected: bool) -> None:
        super().__init__(message)
        self.rejected = rejected


def expert_specs(manifest: dict[str, Any], where: Path) -> tuple[ExpertSpec, ...]:
    """The manifest's expert entries (written with `dataclasses.asdict`) as `ExpertSpec`s."""
    known = {f.name for f in fields(ExpertSpec)}
    specs = []
    for entry in manifest["experts"]:
        unknown = sorted(set(entry) - known)
        if unknown:
            raise DersimError(f"{where}: expert entry has unknown key '{unknown[0]}' (written by another dersim "
                              "version?)")
        try:
            specs.append(ExpertSpec(**{**entry, "stop": tuple(entry.get("stop", ()))}))
        except TypeError as exc:
            raise DersimError(f"{where}: expert entry {entry.get('name', '?')!r} is incomplete ({exc})") from None
    return tuple(specs)


class ExpertPool:
    """A cache's experts and state embedder, loaded once and shared by concurrent routes."""

    def __init__(self, cache: Path) -> None:
        manifest = read_manifest(cache)
        where = cache / "manifest.json"
        if is_imported(manifest) or "prompt" not in manifest or "embedding" not in manifest:
            raise DersimError(f"{cache}: an imported cache (or one without prompt and embedding settings) has no "
                              "experts to call live; route with a cache built by dersim build-cache")
        self.experts = expert_specs(manifest, where)
        try:
            self.prompt = PromptSpec(**manifest["prompt"])
        except TypeError as exc:
            raise DersimError(f"{where}: 'prompt' is not a prompt spec of this dersim version ({exc})") from None
        recipe = manifest.get("recipe", {})
        build = recipe.get("build", {})
        self.retries = int(build.get("retries", 2))
        self.backoff_s = float(build.get("backoff_s", 1.0))
        embedding = manifest["embedding"]
        batch = recipe.get("embedding", {}).get("batch_size", EmbeddingSpec.batch_size)
        self.embedder: Embedder = make_embedder(EmbeddingSpec(model=embedding["model"], dim=int(embedding["dim"]),
                                                              batch_size=int(batch)))
        self._embed_lock = threading.Lock()
        self.backends: list[Backend] = []
        try:
            for spec in self.experts:
                self.backends.append(make_backend(spec))
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Raw (unprojected) unit-norm state embeddings, float32 [len(texts), d]."""
        with self._embed_lock:
            return self.embedder.embed(texts)

    def call(self, expert: int, question: Question, previous_answer: str | None) -> Completion:
        """One call of `expert`, retried like the builder's on transient failures."""
        spec = self.experts[expert]
        request = render_request(self.prompt, spec, question, previous_answer)
        error = ""
        for attempt in range(self.retries + 1):
            try:
                return self.backends[expert].complete(request)
            except CallRejected as exc:
                raise ExpertCallError(f"expert '{spec.name}' refused the call: {exc}", rejected=True) from None
            except CallFailed as exc:
                error = str(exc)
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise ExpertCallError(f"expert '{spec.name}' failed after {self.retries + 1} attempts: {error}",
                              rejected=False)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []
