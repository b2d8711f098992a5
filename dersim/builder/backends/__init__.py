"""Expert backends: in-process llama.cpp, OpenAI-compatible HTTP and a deterministic synthetic
one."""

from __future__ import annotations

from dersim.builder.backends.base import Backend
from dersim.errors import BackendError
from dersim.recipe import ExpertSpec


def make_backend(spec: ExpertSpec) -> Backend:
    """Instantiate the backend an expert's recipe entry names (heavy imports happen lazily)."""
    if spec.backend == "synthetic":
        from dersim.builder.backends.synthetic import SyntheticBackend

        return SyntheticBackend(spec)
    if spec.backend == "llama_cpp":
        from dersim.builder.backends.llama_cpp import make_llama_cpp_backend

        return make_llama_cpp_backend(spec)
    if spec.backend == "openai":
        from dersim.builder.backends.openai_http import OpenAIBackend

        return OpenAIBackend(spec)
    raise BackendError(
        f"expert '{spec.name}': backend '{spec.backend}' is not available in this version"
    )


def backend_fingerprints(experts: list[ExpertSpec]) -> dict[str, dict]:
    """The kernel fingerprint of each in-process backend the experts use (so far: llama_cpp), for
    the manifest: what decides whether another machine's answers are byte-identical."""
    if not any(e.backend == "llama_cpp" for e in experts):
        return {}
    from dersim.builder.backends.llama_cpp import kernel_fingerprint

    return {"llama_cpp": kernel_fingerprint()}
