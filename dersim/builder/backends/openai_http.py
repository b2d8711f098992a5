"""OpenAI-compatible HTTP experts: vLLM, Ollama, llama.cpp's server, TGI, hosted APIs.

Only the standard library is used (urllib + json). A chat expert posts one user message to
`{base_url}/chat/completions`; a completion expert posts its full prompt to
`{base_url}/completions`. Decoding is greedy (temperature 0, top_p 1, seed 0), or for a sampled
expert its temperature and top_p with the sample index as the seed (a server that ignores `seed`
gives a cache that no rebuild reproduces). Servers differ in how
exactly they honour that: llama-cpp-python's server, for one, applies its default repeat penalty
(1.1) on top of the argmax, which no standard request field switches off, so its answers can differ
from those of the in-process llama_cpp backend on the same model and prompt.

Options (`[[experts]] options = {...}`):
- `base_url` (required): the API root, e.g. "http://127.0.0.1:8000/v1", or a list of them: the
  expert's replicas (`replicas.py`: least-loaded live replica first, a failing one out of rotation
  and probed back, a failed call retried on the others);
- `served_model`: the model name sent in requests (default: the expert's `model`);
- `api_key_env`: the name of an environment variable holding an API key, read once at start-up
  and sent as `Authorization: Bearer ...`; the key itself never appears in errors, the journal or
  the manifest (only the variable's name does);
- `timeout_s` (default 60): per-request timeout (connect and each read);
- `max_concurrency` (default 4): the most requests of this expert in flight at once, per replica;
- `replica_failures` (default 3): transient failures in a row that take a replica out of rotation;
- `replica_probe_s` (default 5): how long before an out-of-rotation replica is probed again.

Errors: an HTTP 4xx answer (except 408, 409 and 429) will not improve on retry and raises
`CallRejected`; 408/409/429, 5xx, refused or reset connections, timeouts and malformed answers
raise `CallFailed`, which the builder retries with backoff.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from dersim.builder.backends.base import CallFailed, CallRejected, CallRequest, Completion
from dersim.builder.backends.replicas import ReplicaPool
from dersim.errors import BackendError
from dersim.recipe import ExpertSpec

OPTIONS = (
    "base_url",
    "served_model",
    "api_key_env",
    "timeout_s",
    "max_concurrency",
    "replica_failures",
    "replica_probe_s",
)
RETRYABLE_4XX = (408, 409, 429)
_BODY_CHARS = 200  # how much of an error answer's body goes into the error message

# The standard request fields that make a compatible server decode greedily and reproducibly.


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: urllib would re-send the Authorization header to the new host and
    turn the POST into a GET; a redirect answer becomes an HTTPError instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_options(spec: ExpertSpec) -> dict[str, Any]:
    """Validate the expert's options; return them with defaults filled in."""
    where = f"expert '{spec.name}'"
    for key in spec.options:
        if key not in OPTIONS:
            raise BackendError(
                f"{where}: unknown openai option '{key}' (allowed: {', '.join(OPTIONS)})"
            )
    opts = spec.options
    given = opts.get("base_url")
    base_urls = given if isinstance(given, list) else [given]
    if not base_urls or not all(isinstance(u, str) and u for u in base_urls):
        raise BackendError(
            f"{where}: the openai backend needs option 'base_url', a URL or a list of replicas' "
            'URLs (e.g. "http://127.0.0.1:8000/v1")'
        )
    if len(set(base_urls)) != len(base_urls):
        raise BackendError(f"{where}: option 'base_url' lists a replica twice")
    hosts = []
    for base_url in base_urls:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise BackendError(
                f"{where}: option 'base_url' must be an http:// or https:// URL, got {base_url!r}"
            )
        if parsed.username or parsed.password or parsed.query or parsed.fragment:
            raise BackendError(
                f"{where}: option 'base_url' must not hold credentials, a query or a fragment "
                "(use option 'api_key_env' for a key)"
            )
        hosts.append(parsed.hostname)
    served_model = opts.get("served_model", spec.model)
    if not isinstance(served_model, str) or not served_model:
        raise BackendError(
            f"{where}: the openai backend needs option 'served_model' or key 'model' "
            "(the model name the server expects)"
        )
    api_key_env = opts.get("api_key_env", "")
    if not isinstance(api_key_env, str):
        raise BackendError(
            f"{where}: option 'api_key_env' must be the name of an environment variable, "
            f"got {api_key_env!r}"
        )
    timeout_s = opts.get("timeout_s", 60.0)
    if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or timeout_s <= 0:
        raise BackendError(
            f"{where}: option 'timeout_s' must be a positive number, got {timeout_s!r}"
        )
    max_concurrency = opts.get("max_concurrency", 4)
    if (
        not isinstance(max_concurrency, int)
        or isinstance(max_concurrency, bool)
        or max_concurrency <= 0
    ):
        raise BackendError(
            f"{where}: option 'max_concurrency' must be a positive integer, got {max_concurrency!r}"
        )
    failures = opts.get("replica_failures", 3)
    if not isinstance(failures, int) or isinstance(failures, bool) or failures <= 0:
        raise BackendError(
            f"{where}: option 'replica_failures' must be a positive integer, got {failures!r}"
        )
    probe_s = opts.get("replica_probe_s", 5.0)
    if not isinstance(probe_s, int | float) or isinstance(probe_s, bool) or not 0 < probe_s < 1e6:
        raise BackendError(
            f"{where}: option 'replica_probe_s' must be a positive number, got {probe_s!r}"
        )
    return {
        "base_urls": [u.rstrip("/") for u in base_urls],
        "served_model": served_model,
        "api_key_env": api_key_env,
        "timeout_s": float(timeout_s),
        "max_concurrency": max_concurrency,
        "replica_failures": failures,
        "replica_probe_s": float(probe_s),
        "hosts": hosts,
    }


class OpenAIBackend:
    """One expert served over an OpenAI-compatible HTTP API by one or more replicas; calls may run
    in parallel (at most `max_concurrency` per replica)."""

    def __init__(self, spec: ExpertSpec) -> None:
        opts = _check_options(spec)
        self.name = spec.name
        self.prompt_format = spec.prompt_format
        self.model = opts["served_model"]
        self.timeout_s = opts["timeout_s"]
        endpoint = "chat/completions" if spec.prompt_format == "chat" else "completions"
        self.urls = [f"{base_url}/{endpoint}" for base_url in opts["base_urls"]]
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self._secret = ""
        if env := opts["api_key_env"]:
            key = os.environ.get(env, "")
            if not key:
                raise BackendError(
                    f"expert '{spec.name}': environment variable '{env}' (option "
                    "'api_key_env') is not set or empty"
                )
            self._secret = key
            self._headers["Authorization"] = f"Bearer {key}"
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if any(_is_loopback(host) for host in opts["hosts"]):
            handlers.append(urllib.request.ProxyHandler({}))  # a proxy cannot reach our loopback
        self._opener = urllib.request.build_opener(*handlers)
        self.replicas = ReplicaPool(
            self.urls, opts["max_concurrency"], opts["replica_failures"], opts["replica_probe_s"]
        )

    def __repr__(self) -> str:
        return f"OpenAIBackend(name={self.name!r}, urls={self.urls!r}, model={self.model!r})"

    def status(self) -> str:
        """The replicas' calls/s and which are down, when there are several ('' for one)."""
        return f"{self.name}: {self.replicas.status()}" if len(self.urls) > 1 else ""

    def _redact(self, text: str) -> str:
        """`text` without the API key (some servers echo the key they refuse)."""
        return text.replace(self._secret, "***") if self._secret else text

    def _body(self, request: CallRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_new_tokens,
            # Greedy (0, 1, seed 0), or a sampled expert's draw: its sample index is the seed.
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        if self.prompt_format == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _post(self, url: str, body: dict[str, Any]) -> bytes:
        """POST `body` to `url`; the raw answer of a 2xx response, or CallFailed / CallRejected."""
        data = json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, headers=self._headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            code = exc.code
            try:
                raw = exc.read(4096)
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                exc.close()
            text = " ".join(raw.decode("utf-8", "replace").split())
            if len(text) > _BODY_CHARS:
                text = text[:_BODY_CHARS] + "..."
            message = self._redact(f"HTTP {code} from {url}: {text or exc.reason}")
            if code >= 500 or code in RETRYABLE_4XX:
                raise CallFailed(f"expert '{self.name}': {message}") from None
            raise CallRejected(f"expert '{self.name}': {message}") from None
        except urllib.error.URLError as exc:
            raise CallFailed(
                self._redact(f"expert '{self.name}': cannot reach {url}: {exc.reason}")
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, truncated answers
            detail = str(exc) or type(exc).__name__
            raise CallFailed(
                self._redact(f"expert '{self.name}': request to {url} failed: {detail}")
            ) from None

    def _post_to_replicas(self, body: dict[str, Any]) -> tuple[bytes, str, float]:
        """(raw answer, the replica's URL, seconds) from the first replica that answers; a
        transient failure moves the call to a replica it has not tried; CallFailed once every
        replica failed it, CallRejected at once (a refusal is the request's, not the replica's)."""
        tried: set[int] = set()
        failure: CallFailed | None = None
        while True:
            index = self.replicas.acquire(exclude=tried)
            if index is None:
                raise failure or CallFailed(
                    f"expert '{self.name}': every replica failed repeatedly and is out of "
                    f"rotation (next probe in {self.replicas.next_probe_s():.1f} s)"
                )
            url = self.urls[index]
            start = time.perf_counter()
            answered = True  # a refusal is the request's; only a transient failure is the replica's
            try:
                raw = self._post(url, body)
            except CallRejected:
                raise
            except CallFailed as exc:
                answered = False
                tried.add(index)
                failure = exc
                continue
            finally:
                self.replicas.release(index, ok=answered)  # on any exit: the slot never leaks
            return raw, url, time.perf_counter() - start

    def complete(self, request: CallRequest) -> Completion:
        """One greedy answer from one of the expert's replicas."""
        raw, url, latency_s = self._post_to_replicas(self._body(request))
        try:
            out = json.loads(raw)
            choice = out["choices"][0]
            text = choice["message"]["content"] if self.prompt_format == "chat" else choice["text"]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise TypeError(f"answer text is {type(text).__name__}")
            usage = out.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            snippet = " ".join(raw[:_BODY_CHARS].decode("utf-8", "replace").split())
            raise CallFailed(
                self._redact(
                    f"expert '{self.name}': malformed answer from {url} "
                    f"({type(exc).__name__}: {exc}): {snippet}"
                )
            ) from None
        return Completion(
            text=text.strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency_s,
        )

    def close(self) -> None:
        """Nothing to free: every request opens and closes its own connection."""
