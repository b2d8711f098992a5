"""In-process llama.cpp experts: llama-cpp-python running a local GGUF file on the CPU.

Decoding is greedy (temperature 0 makes llama-cpp-python use llama.cpp's argmax sampler; the
repeat/frequency/presence penalties are neutral), or for a sampled expert a draw at its
temperature and top_p seeded by the sample index, and every call starts from an empty KV cache, so
a call's answer depends only on its prompt and the model, never on earlier calls: a resumed build
reproduces exactly the answers an uninterrupted one would have produced.

The answer also depends on the arithmetic llama.cpp runs, which it picks by CPU: a build tuned
for the installing CPU (llama-cpp-python's default) uses AVX-512 or AMX kernels where they exist,
and at load time it repacks weights into CPU-specific layouts ("extra buffer types"; on AMX CPUs
this path crashes). So the same greedy call can give another answer on another CPU. dersim pins
one kernel set: llama-cpp-python built for the x86-64-v3 baseline without weight repacking
(`PORTABLE_CMAKE_ARGS`, as the README installs it), models loaded without extra buffer types on
every CPU, and a fixed default thread count. `kernel_fingerprint()` describes what this process
runs; the build records it in the manifest and `dersim route --check` compares it.
"""

from __future__ import annotations

import functools
import importlib
import platform
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from dersim.builder.backends.base import CallFailed, CallRejected, CallRequest, Completion
from dersim.builder.backends.models import resolve_model
from dersim.errors import BackendError
from dersim.recipe import ExpertSpec

OPTIONS = ("n_ctx", "n_threads", "n_batch")
# The thread count every call runs with unless the expert's options say otherwise: fixed, not the
# machine's core count, so that no result can depend on how many cores a machine has.
DEFAULT_THREADS = 2
# How the README builds llama-cpp-python: the x86-64-v3 instruction set (AVX2, FMA, F16C, BMI2)
# that every x86-64 machine of this project has, no native tuning, no runtime weight repacking.
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_CPU_REPACK=OFF"
# Features of llama.cpp's system info that a portable build lacks (a build tuned for this CPU has
# them).
NATIVE_ONLY_FEATURES = (
    "AVX512",
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AVX_VNNI",
    "AMX_INT8",
    "REPACK",
)

# Sampling settings that make llama-cpp-python decode greedily: temperature 0 selects the argmax
# sampler; the rest keeps every other sampler stage (penalties, top-k/p, mirostat) a no-op.
_GREEDY: dict[str, Any] = {
    "temperature": 0.0,
    "top_k": 1,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "mirostat_mode": 0,
}


def sampling(request: CallRequest) -> dict[str, Any]:
    """llama-cpp-python's sampler settings for `request`: greedy, or at temperature > 0 plain
    temperature and nucleus (top_p) sampling, seeded by the request (every other stage off)."""
    if not request.sampled:
        return _GREEDY
    return {
        **_GREEDY,
        "temperature": request.temperature,
        "top_k": 0,  # off: the whole vocabulary, cut by top_p
        "top_p": request.top_p,
        "seed": request.seed,
    }


_LOAD_LOCK = threading.Lock()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; the platform's processor string elsewhere)."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@functools.cache
def kernel_fingerprint() -> dict[str, Any]:
    """What decides this process's llama.cpp arithmetic: llama-cpp-python's version (which pins the
    llama.cpp it vendors), the compiled CPU features (llama.cpp's system info), the buffer types and
    the default thread count; plus the CPU model, for the record (a portable build does not depend
    on it). `portable` says whether the build is the pinned kernel set."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    features = sorted(
        part.split("=")[0].strip()
        for part in info.replace("CPU :", "|").split("|")
        if part.strip().endswith("= 1")
    )
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "features": features,
        "extra_buffer_types": False,
        "default_threads": DEFAULT_THREADS,
        "portable": not set(features) & set(NATIVE_ONLY_FEATURES),
        "cpu": cpu_model(),
    }


def replay_key(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The part of a kernel fingerprint two machines must share for byte-identical answers."""
    return {k: v for k, v in fingerprint.items() if k != "cpu"}


@contextmanager
def without_extra_buffers() -> Iterator[None]:
    """While the body runs, make llama-cpp-python's default model params turn off llama.cpp's extra
    buffer types (`use_extra_bufts`: AMX and repacked weight layouts, chosen by CPU); its `Llama`
    has no argument for it. Wrap a whole `llama_cpp.server` run in it to serve with the pinned
    kernels."""
    module = importlib.import_module("llama_cpp.llama_cpp")
    defaults = module.llama_model_default_params

    def without() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _LOAD_LOCK:
        module.llama_model_default_params = without
        try:
            yield
        finally:
            module.llama_model_default_params = defaults


def _check_spec(spec: ExpertSpec) -> ModuleType:
    """Validate the expert's options and return the `llama_cpp` module (a clear error if absent)."""
    for key, value in spec.options.items():
        if key not in OPTIONS:
            raise BackendError(
                f"expert '{spec.name}': unknown llama_cpp option '{key}' "
                f"(allowed: {', '.join(OPTIONS)})"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise BackendError(
                f"expert '{spec.name}': option '{key}' must be a positive integer, got {value!r}"
            )
    try:
        import llama_cpp
    except ImportError:
        raise BackendError(
            f"expert '{spec.name}': the llama_cpp backend needs llama-cpp-python: "
            "pip install 'dersim[llm]' -c constraints.txt"
        ) from None
    return llama_cpp


class LlamaCppBackend:
    """One expert backed by a llama.cpp model held in this process; calls are serialized."""

    def __init__(self, spec: ExpertSpec, model_path: Path) -> None:
        llama_cpp = _check_spec(spec)
        self.name = spec.name
        self.prompt_format = spec.prompt_format
        n_threads = spec.options.get("n_threads", DEFAULT_THREADS)
        n_ctx = spec.options.get("n_ctx", 2048)
        try:
            with without_extra_buffers():
                self._llm = llama_cpp.Llama(
                    model_path=str(model_path),
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    n_batch=spec.options.get("n_batch", 512),
                    seed=0,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(
                f"expert '{spec.name}': llama.cpp cannot load {model_path}: {exc}"
            ) from None
        if spec.prompt_format == "chat" and "tokenizer.chat_template" not in self._llm.metadata:
            # llama-cpp-python would silently fall back to the llama-2 [INST] format.
            self._llm.close()
            raise BackendError(
                f"expert '{spec.name}': {model_path.name} has no chat template (a base "
                f'model?); use prompt_format = "completion" with a few-shot prompt'
            )
        if self._llm.n_ctx() != n_ctx:
            # llama.cpp pads the context (to a multiple of 256) but llama-cpp-python sizes its token
            # buffers by the requested n_ctx, so prompts between the two crash instead of being
            # refused.
            padded = self._llm.n_ctx()
            self._llm.close()
            raise BackendError(
                f"expert '{spec.name}': option 'n_ctx' = {n_ctx} is padded to {padded} by "
                f"llama.cpp; use a multiple of 256"
            )
        self._lock = threading.Lock()
        # One throw-away token, so that one-time start-up work (weight repacking, buffer allocation)
        # counts as loading, not as the first call's latency.
        self._llm.create_completion("Hello", max_tokens=1, **_GREEDY)

    def complete(self, request: CallRequest) -> Completion:
        """Decode one answer (greedy, or the request's seeded draw) from an empty KV cache."""
        stop = list(request.stop) or None
        with self._lock:
            self._llm.reset()  # forget the previous call: no KV-cache prefix reuse across calls
            start = time.perf_counter()
            try:
                if self.prompt_format == "chat":
                    out = self._llm.create_chat_completion(
                        messages=[{"role": "user", "content": request.prompt}],
                        max_tokens=request.max_new_tokens,
                        stop=stop,
                        **sampling(request),
                    )
                    text = out["choices"][0]["message"]["content"] or ""
                else:
                    out = self._llm.create_completion(
                        request.prompt,
                        max_tokens=request.max_new_tokens,
                        stop=stop,
                        **sampling(request),
                    )
                    text = out["choices"][0]["text"]
            except ValueError as exc:
                if "exceed context window" in str(exc):
                    raise CallRejected(
                        f"expert '{self.name}': prompt does not fit the context window "
                        f"({exc}); raise options.n_ctx"
                    ) from None
                raise
            except RuntimeError as exc:
                raise CallFailed(f"expert '{self.name}': llama.cpp failed: {exc}") from exc
            latency_s = time.perf_counter() - start
        usage = out["usage"]
        return Completion(
            text=text.strip(),
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            latency_s=latency_s,
        )

    def close(self) -> None:
        """Free the model and its context."""
        with self._lock:
            self._llm.close()


def make_llama_cpp_backend(spec: ExpertSpec) -> LlamaCppBackend:
    """Check the spec, fetch or find the model file (verified by sha256), and load it."""
    _check_spec(spec)  # fail before a long download if the options or llama-cpp-python are wrong
    return LlamaCppBackend(spec, resolve_model(spec.model, spec.sha256))
