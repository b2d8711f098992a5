"""A tiny synthetic cache and a run trained on it, for the `dersim route` and `dersim serve` tests;
a loopback OpenAI-compatible expert server and a run over HTTP experts; copies of caches and
runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dersim.builder.build import build_cache
from dersim.cache.files import manifest_digest
from dersim.cache.schema import MANIFEST, write_manifest
from dersim.env.tables import EnvSpec
from dersim.recipe import load_recipe
from dersim.trainer.ppo import PPOConfig
from dersim.trainer.run import RUN_FILE, GridTrainer

from conftest import STRATEGYQA, synthetic_recipe_text

SMALL = PPOConfig(
    num_envs=8, num_steps=8, update_epochs=2, num_minibatches=2, hidden=32, updates_per_chunk=10
)
TERMINATORS = ("learned", "none", "judge", "oracle")  # one policy each, in this order
# An ExpertServer answers a prompt holding this with HTTP 400 (the call can never succeed).
REJECTED = "REJECT-ME"
_WORDS = (
    "because",
    "history",
    "water",
    "animals",
    "never",
    "often",
    "science",
    "cities",
    "records",
    "weather",
)


def synthetic_run(root: Path) -> tuple[Path, Path]:
    """(cache, run): 14 strategyqa questions, 3 synthetic experts, depth 2, hashed 32-d embeddings;
    one policy per terminator, observing the top 8 principal components."""
    recipe = root / "recipe.toml"
    recipe.write_text(synthetic_recipe_text(train=10, test=4, depth=2), encoding="utf-8")
    build_cache(load_recipe(recipe), root / "cache", show_progress=False)
    return root / "cache", train_run(
        root / "cache",
        root / "run",
        EnvSpec(metric="token_f1", p0=0.5, embedding_dim=8),
        list(TERMINATORS),
    )


def train_run(cache: Path, out: Path, spec: EnvSpec, terminators: list[str]) -> Path:
    """A small run on `cache`: one policy per terminator."""
    trainer = GridTrainer.from_grid(
        cache,
        out,
        spec,
        SMALL,
        {"terminator": terminators},
        seeds=1,
        steps=2 * SMALL.steps_per_chunk,
    )
    trainer.train(show_progress=False)
    return out


def edited_cache(cache: Path, out: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of `cache` whose manifest `edit` changed (its manifest.sha256 rewritten: another
    cache)."""
    shutil.copytree(cache, out, ignore=shutil.ignore_patterns("journal", ".dersim.lock"))
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    edit(manifest)
    write_manifest(manifest, out)
    return out


def rebound_run(run: Path, cache: Path, out: Path) -> Path:
    """A copy of `run` recorded as trained on `cache` (a cache with the same tables: the checkpoint
    fits)."""
    shutil.copytree(run, out, ignore=shutil.ignore_patterns(".dersim.lock"))
    record = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    record.update(cache=str(cache), cache_digest=manifest_digest(cache))
    (out / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return out


class ExpertServer:
    """A loopback OpenAI-compatible chat server standing in for HTTP experts: its answer is a hash
    of the model and prompt (deterministic, so a cache built on it is exact), a prompt holding
    REJECTED gets an HTTP 400, and every request's path and Authorization header are recorded."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, self.headers.get("Authorization")))
                prompt = body["messages"][-1]["content"]
                status, payload = (
                    (400, {"error": {"message": "prompt too long"}})
                    if REJECTED in prompt
                    else (200, _completion(body["model"], prompt))
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def headers(self) -> list[str | None]:
        return [auth for _, auth in self.requests]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _completion(model: str, prompt: str) -> dict[str, Any]:
    digest = hashlib.sha256(f"{model}\x00{prompt}".encode()).digest()
    answer = (
        ("Yes" if digest[0] % 2 else "No")
        + ", "
        + " ".join(_WORDS[b % len(_WORDS)] for b in digest[1:4])
        + "."
    )
    return {
        "choices": [{"message": {"content": answer}}],
        "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(answer.split())},
    }


def http_recipe_text(base_url: str, api_key_env: str) -> str:
    """Two HTTP (openai backend) experts at `base_url`, their key in `api_key_env`; 8 + 3 questions,
    depth 2."""
    experts = "".join(
        f"""
[[experts]]
name = "{name}"
backend = "openai"
model = "{name}-model"
params_b = {size}
options = {{ base_url = "{base_url}", api_key_env = "{api_key_env}", timeout_s = 10 }}
"""
        for name, size in (("alpha", 1.0), ("beta", 3.0))
    )
    return f"""
name = "http"
[dataset]
source = "bigbench"
task = "strategyqa"
path = "{STRATEGYQA}"
train = 8
test = 3
seed = 3
[build]
depth = 2
retries = 1
backoff_s = 0.001
[metrics]
names = ["accuracy_yesno", "token_f1"]
[embedding]
model = "hashing"
dim = 32
{experts}"""


def http_run(root: Path, server: ExpertServer, api_key_env: str) -> tuple[Path, Path]:
    """(cache, run) over two HTTP experts of `server`, built with the key in `api_key_env` (set by
    the caller): the manifest names the server's URL and that variable; one policy that always calls
    twice."""
    recipe = root / "recipe.toml"
    recipe.write_text(http_recipe_text(server.base_url, api_key_env), encoding="utf-8")
    build_cache(load_recipe(recipe), root / "cache", show_progress=False)
    return root / "cache", train_run(
        root / "cache", root / "run", EnvSpec(metric="token_f1", p0=0.5), ["none"]
    )
