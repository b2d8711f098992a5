"""The cache's experts and embedder, live: the same backends, prompts, KTP and generation settings.

What experts answer with comes from the cache's manifest, so a live call renders exactly the
request the builder sent; where calls go and which keys they carry never do. A cache's files may
come from anyone, and an HTTP expert's `base_url` and `api_key_env` would let them send any of
the user's environment variables to any URL. So those come only from the user (`Endpoints`): a
recipe, which must then agree with the manifest on every setting that is not about how calls run
(`dersim.builder.journal.RUN_ONLY_OPTIONS`), or explicit per-expert options. In-process experts
(llama_cpp: a local GGUF verified by sha256; synthetic) need neither.

One backend instance per expert is shared by every route in the process: an in-process
llama.cpp model serialises its own calls (it is not thread-safe), HTTP experts run concurrently
(bounded by their own `max_concurrency`). The embedder is serialised too (a Hugging Face tokenizer
refuses concurrent use).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from dersim.builder.backends import make_backend
from dersim.builder.backends.base import Backend, CallFailed, CallRejected, Completion
from dersim.builder.embedding import Embedder, make_embedder
from dersim.builder.journal import RUN_ONLY_OPTIONS
from dersim.builder.prompts import render_request
from dersim.builder.sources.question import Question
from dersim.cache.files import read_manifest
from dersim.cache.schema import is_imported
from dersim.errors import DersimError
from dersim.recipe import EmbeddingSpec, ExpertSpec, PromptSpec, Recipe

HTTP_BACKEND = "openai"
ENDPOINT_OPTIONS = (
    "base_url",
    "api_key_env",
)  # where a call goes and the variable its key is read from


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
            raise DersimError(
                f"{where}: expert entry has unknown key '{unknown[0]}' (written by another dersim "
                "version?)"
            )
        try:
            specs.append(ExpertSpec(**{**entry, "stop": tuple(entry.get("stop", ()))}))
        except TypeError as exc:
            raise DersimError(
                f"{where}: expert entry {entry.get('name', '?')!r} is incomplete ({exc})"
            ) from None
    return tuple(specs)


@dataclass(frozen=True)
class Endpoints:
    """Where the user says HTTP experts are called and which environment variables hold their keys:
    a recipe (`--recipe`) and per-expert options (`--base-url NAME=URL`, `--api-key-env NAME=VAR`,
    which win over the recipe). Empty: only in-process experts can be called."""

    recipe: Recipe | None = None
    base_urls: Mapping[str, str] = field(default_factory=dict)
    api_key_envs: Mapping[str, str] = field(default_factory=dict)


def live_prompt(manifest: dict[str, Any], where: Path) -> PromptSpec:
    """The cache's prompt settings (question template and KTP)."""
    try:
        return PromptSpec(**manifest["prompt"])
    except TypeError as exc:
        raise DersimError(
            f"{where}: 'prompt' is not a prompt spec of this dersim version ({exc})"
        ) from None


def resolve_experts(cache: Path, endpoints: Endpoints) -> tuple[ExpertSpec, ...]:
    """The experts to call live: the manifest's, with endpoints and key variables from `endpoints`
    only. One-line errors for a recipe that disagrees with the cache, an option naming no HTTP
    expert of it, and an HTTP expert left without an endpoint. Loads nothing: call it before the
    models."""
    manifest = read_manifest(cache)
    where = cache / "manifest.json"
    if is_imported(manifest) or "prompt" not in manifest or "embedding" not in manifest:
        raise DersimError(
            f"{cache}: an imported cache (or one without prompt and embedding settings) has no "
            "experts to call live; route with a cache built by dersim build-cache"
        )
    cached = expert_specs(manifest, where)
    if endpoints.recipe is not None:
        experts = _recipe_experts(endpoints.recipe, cached, live_prompt(manifest, where))
    else:
        experts = tuple(
            replace(e, options={k: v for k, v in e.options.items() if k not in ENDPOINT_OPTIONS})
            for e in cached
        )
    experts = _overlay(experts, endpoints.base_urls, "base_url", "--base-url", "URL")
    experts = _overlay(experts, endpoints.api_key_envs, "api_key_env", "--api-key-env", "VAR")
    for expert in experts:
        if expert.backend == HTTP_BACKEND and not expert.options.get("base_url"):
            raise DersimError(
                f"expert '{expert.name}' is called over HTTP and has no endpoint: pass --base-url "
                f"{expert.name}=URL (and --api-key-env {expert.name}=VAR for a key) or --recipe "
                "RECIPE; a cache's or run's files never choose where calls and keys go"
            )
    return experts


def _answer_settings(spec: ExpertSpec) -> dict[str, Any]:
    """Every setting of an expert but those about how its calls run (endpoint, key, timeouts,
    speed)."""
    settings = asdict(spec)
    run_only = RUN_ONLY_OPTIONS.get(spec.backend, set())
    settings["options"] = {k: v for k, v in spec.options.items() if k not in run_only}
    settings["stop"] = list(spec.stop)
    return settings


def _first_difference(
    mine: dict[str, Any], theirs: dict[str, Any], prefix: str = ""
) -> tuple[str, Any, Any] | None:
    """(dotted key, recipe value, cache value) of the first setting that differs, or None."""
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found is not None:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def _recipe_experts(
    recipe: Recipe, cached: tuple[ExpertSpec, ...], prompt: PromptSpec
) -> tuple[ExpertSpec, ...]:
    """The recipe's experts, once every one agrees with the cache's on all that changes answers or
    costs."""
    names, cache_names = [e.name for e in recipe.experts], [e.name for e in cached]
    if names != cache_names:
        raise DersimError(
            f"{recipe.path}: its experts {names} are not the cache's {cache_names} (same names, "
            "same order)"
        )
    for mine, theirs in zip(recipe.experts, cached, strict=True):
        found = _first_difference(_answer_settings(mine), _answer_settings(theirs))
        if found is not None:
            key, a, b = found
            raise DersimError(
                f"{recipe.path}: expert '{mine.name}' differs from the cache's in '{key}' (recipe "
                f"{a!r}, cache {b!r}); route with the recipe the cache was built with"
            )
    found = _first_difference(asdict(recipe.prompt), asdict(prompt))
    if found is not None:
        raise DersimError(
            f"{recipe.path}: [prompt] differs from the cache's in '{found[0]}' (recipe "
            f"{found[1]!r}, cache {found[2]!r})"
        )
    return recipe.experts


def _overlay(
    experts: tuple[ExpertSpec, ...], values: Mapping[str, str], key: str, option: str, metavar: str
) -> tuple[ExpertSpec, ...]:
    """`experts` with option `key` set from `values` (expert name -> value); each name an HTTP
    expert."""
    by_name = {e.name: e for e in experts}
    for name, value in values.items():
        expert = by_name.get(name)
        if expert is None:
            raise DersimError(
                f"{option} {name}={value}: the cache has no expert '{name}' (its experts: "
                f"{', '.join(by_name)})"
            )
        if expert.backend != HTTP_BACKEND:
            raise DersimError(
                f"{option} {name}={metavar}: expert '{name}' runs in process (backend "
                f"{expert.backend}) and takes no endpoint or key"
            )
    return tuple(
        replace(e, options={**e.options, key: values[e.name]}) if e.name in values else e
        for e in experts
    )


def _detail(exc: Exception, name: str) -> str:
    """A backend's error without the "expert '<name>': " its messages start with (the pool's say it
    once)."""
    return str(exc).removeprefix(f"expert '{name}': ")


class ExpertPool:
    """A cache's experts and state embedder, loaded once and shared by concurrent routes."""

    def __init__(self, cache: Path, endpoints: Endpoints | None = None) -> None:
        self.experts = resolve_experts(cache, endpoints or Endpoints())
        manifest = read_manifest(cache)
        self.prompt = live_prompt(manifest, cache / "manifest.json")
        recipe = manifest.get("recipe", {})
        build = recipe.get("build", {})
        self.retries = int(build.get("retries", 2))
        self.backoff_s = float(build.get("backoff_s", 1.0))
        embedding = manifest["embedding"]
        batch = recipe.get("embedding", {}).get("batch_size", EmbeddingSpec.batch_size)
        self.embedder: Embedder = make_embedder(
            EmbeddingSpec(
                model=embedding["model"], dim=int(embedding["dim"]), batch_size=int(batch)
            )
        )
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
                raise ExpertCallError(
                    f"expert '{spec.name}' refused the call: {_detail(exc, spec.name)}",
                    rejected=True,
                ) from None
            except CallFailed as exc:
                error = _detail(exc, spec.name)
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise ExpertCallError(
            f"expert '{spec.name}' failed after {self.retries + 1} attempts: {error}",
            rejected=False,
        )

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []
