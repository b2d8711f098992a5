"""`dersim route` (and the run files serve and eval read) on untrusted or damaged input: one test
per defect.

A: a cache's or run's files never choose where calls and keys go; B: live routing honours the run's
view and its own cache; C: checkpoints are hashed and finite; D: route input and output; E: the
check's report.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import pytest
from click.testing import CliRunner, Result
from flax import serialization

from dersim.builder.backends.base import Completion
from dersim.builder.backends.synthetic import SyntheticBackend
from dersim.cache.reader import open_cache
from dersim.cache.schema import write_manifest
from dersim.cli import main
from dersim.env.tables import EnvSpec
from dersim.live.policy import LiveRun
from dersim.live.pool import ExpertPool
from dersim.live.router import LiveRouter
from dersim.trainer.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from dersim.trainer.run import RUN_FILE, GridTrainer

from live_helpers import (
    REJECTED,
    TERMINATORS,
    ExpertServer,
    edited_cache,
    http_recipe_text,
    http_run,
    rebound_run,
    synthetic_run,
    train_run,
)

NONE = TERMINATORS.index("none")
SECRET = "s3cret-never-to-be-sent"
BUILD_KEY_ENV = "ANY_VARIABLE"  # the variable the HTTP cache's manifest names


def cli(*args: object, input: bytes | str | None = None) -> Result:  # noqa: A002 (click's name)
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def one_line_error(result: Result, *parts: str) -> str:
    """The single `error: ...` line of a command that exited 2 without a traceback; it holds
    `parts`."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def write_questions(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"question": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return synthetic_run(tmp_path_factory.mktemp("safety"))


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExpertServer, Path, Path]]:
    """(the server the cache was built on, cache, run): its manifest names that server and
    BUILD_KEY_ENV."""
    built_on = ExpertServer()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BUILD_KEY_ENV, "the-builders-key")
        cache, run_dir = http_run(tmp_path_factory.mktemp("http"), built_on, BUILD_KEY_ENV)
    yield built_on, cache, run_dir
    built_on.close()


@pytest.fixture
def mine() -> Iterator[ExpertServer]:
    """The user's own expert server."""
    server = ExpertServer()
    yield server
    server.close()


def routes(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------- A: data never chooses where secrets go


def test_a_cache_manifest_cannot_send_a_key_to_its_own_url(
    http: tuple[ExpertServer, Path, Path],
    mine: ExpertServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built_on, _, run_dir = http
    monkeypatch.setenv(BUILD_KEY_ENV, SECRET)
    monkeypatch.setenv("MY_KEY", "my-key")
    built_on.requests.clear()
    questions = write_questions(
        tmp_path / "in.jsonl", ["Is water wet?", "Can a cat fly an airplane?"]
    )
    one_line_error(
        cli("route", "--run", run_dir, "--input", questions),
        "expert 'alpha'",
        "--base-url alpha=URL",
        "--recipe",
    )
    one_line_error(
        cli(
            "route", "--run", run_dir, "--input", questions, "--base-url", f"alpha={mine.base_url}"
        ),
        "expert 'beta'",
        "--base-url beta=URL",
    )
    urls = ["--base-url", f"alpha={mine.base_url}", "--base-url", f"beta={mine.base_url}"]
    result = cli("route", "--run", run_dir, "--input", questions, *urls)
    assert result.exit_code == 0, result.output
    assert (
        set(mine.headers()) == {None} and len(mine.requests) == 4
    )  # two calls per question, no key
    mine.requests.clear()
    monkeypatch.setenv("MY_OTHER_KEY", "my-other-key")
    result = cli(
        "route",
        "--run",
        run_dir,
        "--input",
        questions,
        *urls,
        "--api-key-env",
        "alpha=MY_KEY",
        "--api-key-env",
        "beta=MY_OTHER_KEY",
    )
    assert result.exit_code == 0, result.output
    assert mine.headers() and set(mine.headers()) <= {"Bearer my-key", "Bearer my-other-key"}
    mine.requests.clear()
    recipe = tmp_path / "mine.toml"
    recipe.write_text(http_recipe_text(mine.base_url, "MY_KEY"), encoding="utf-8")
    result = cli("route", "--run", run_dir, "--input", questions, "--recipe", recipe)
    assert result.exit_code == 0, result.output
    assert set(mine.headers()) == {"Bearer my-key"}
    assert built_on.requests == [], "the manifest's own URL was called"
    one_line_error(
        cli("route", "--run", run_dir, "--check", "1", "--base-url", "gamma=http://127.0.0.1:1/v1"),
        "--base-url gamma=",
        "no expert 'gamma'",
    )
    one_line_error(
        cli("route", "--run", run_dir, "--check", "1", "--api-key-env", "alpha"),
        "--api-key-env alpha",
        "NAME=VAR",
    )


def test_route_refuses_a_cache_whose_experts_differ_from_the_recipe(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    cache, run_dir = run
    text = (cache.parent / "recipe.toml").read_text(encoding="utf-8")
    slower = tmp_path / "slower.toml"
    slower.write_text(
        text.replace("latency_ms = 0.0", "latency_ms = 1.0"), encoding="utf-8"
    )  # how calls run only
    result = cli("route", "--run", run_dir, "--recipe", slower, "--check", "2")
    assert result.exit_code == 0, result.output
    skilled = tmp_path / "skilled.toml"
    skilled.write_text(text.replace("skill = 0.3", "skill = 0.4"), encoding="utf-8")
    one_line_error(
        cli("route", "--run", run_dir, "--recipe", skilled, "--check", "2"),
        str(skilled),
        "expert 'small'",
        "options.skill",
        "0.4",
        "0.3",
    )
    other = tmp_path / "other.toml"
    other.write_text(http_recipe_text("http://127.0.0.1:1/v1", "MY_KEY"), encoding="utf-8")
    one_line_error(
        cli("route", "--run", run_dir, "--recipe", other, "--check", "2"),
        str(other),
        "alpha",
        "small",
    )
    prompt = tmp_path / "prompt.toml"
    prompt.write_text(
        text.replace("[embedding]", '[prompt]\nquestion_template = "Q: {question}"\n[embedding]'),
        encoding="utf-8",
    )
    one_line_error(
        cli("route", "--run", run_dir, "--recipe", prompt, "--check", "2"),
        "[prompt]",
        "question_template",
    )


# -------------------------------------------------------------- B: the run's view and its own cache


def check_report(run_dir: Path, *args: object) -> dict:
    result = cli("route", "--run", run_dir, "--check", "4", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_live_routing_honours_a_no_transfer_run(run: tuple[Path, Path], tmp_path: Path) -> None:
    cache, _ = run
    no_transfer = train_run(
        cache, tmp_path / "run", EnvSpec(metric="token_f1", p0=0.5, transfer=False), ["none"]
    )
    report = check_report(no_transfer)
    assert report["full_agreement"], report["mismatches"]
    assert (
        sum(report["latency"]["calls"].values()) == 8
    )  # 2 calls per question, the second without the KTP


def test_live_routing_honours_a_pairs_run_picked_by_the_judge(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    cache, _ = run
    pairs = train_run(
        cache,
        tmp_path / "run",
        EnvSpec(metric="token_f1", p0=0.5, experts_per_step=2, pair_pick="judge"),
        ["none", "learned"],
    )
    for policy in ("0", "1"):
        report = check_report(pairs, "--policy", policy)
        assert report["full_agreement"], report["mismatches"]
    assert all("+" in name for name in report["experts"])
    # The same run with pairs picked by the reference answer: refused live, in one line.
    record = json.loads((pairs / RUN_FILE).read_text(encoding="utf-8"))
    record["env"]["pair_pick"] = "reference"
    (pairs / RUN_FILE).write_text(json.dumps(record), encoding="utf-8")
    one_line_error(
        cli("route", "--run", pairs, "--check", "1", "--policy", "0"), "--policy 0", "reference"
    )
    one_line_error(cli("route", "--run", pairs, "--check", "1"), "reference")


def test_route_refuses_another_cache(run: tuple[Path, Path], tmp_path: Path) -> None:
    cache, run_dir = run
    other = edited_cache(cache, tmp_path / "other", lambda m: m.update(note="another build"))
    one_line_error(
        cli("route", "--run", run_dir, "--cache", other, "--check", "1"),
        f"--cache {other}",
        "not the cache the run trained on",
    )
    one_line_error(
        cli("eval", "--run", run_dir, "--cache", other),
        f"--cache {other}",
        "not the cache the run trained on",
    )
    moved = Path(shutil.copytree(cache, tmp_path / "moved"))
    assert cli("route", "--run", run_dir, "--cache", moved, "--check", "1").exit_code == 0
    # The run's own cache rebuilt in place since training.
    own = Path(shutil.copytree(cache, tmp_path / "own"))
    rebound = rebound_run(run_dir, own, tmp_path / "run")
    manifest = open_cache(own).manifest
    write_manifest({**manifest, "note": "rebuilt"}, own)
    one_line_error(
        cli("route", "--run", rebound, "--check", "1"), str(own), "not the cache the run trained on"
    )


# ---------------------------------------------------------------- C: checkpoints


def checkpoint_state(run_dir: Path) -> dict:
    trainer = GridTrainer.from_run(run_dir)
    return load_checkpoint(run_dir, jax.eval_shape(trainer.initial_state))


def largest_weight(state: dict) -> int:
    """The index (in jax.tree.leaves order) of the state's largest float array."""
    leaves = jax.tree.leaves(state)
    return max(
        (i for i, x in enumerate(leaves) if np.asarray(x).dtype == np.float32),
        key=lambda i: np.asarray(leaves[i]).size,
    )


def test_a_tampered_checkpoint_is_refused(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(run[1], tmp_path / "run"))
    state = checkpoint_state(run_dir)
    weights = np.asarray(jax.tree.leaves(state)[largest_weight(state)]).tobytes()
    path = run_dir / CHECKPOINT
    raw = bytearray(path.read_bytes())
    at = raw.find(weights)
    assert at >= 0
    raw[at + len(weights) // 2 + 3] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(raw))
    one_line_error(cli("route", "--run", run_dir, "--check", "1"), str(path), "sha256")
    one_line_error(cli("eval", "--run", run_dir), str(path), "sha256")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused(
    run: tuple[Path, Path], tmp_path: Path, value: float
) -> None:
    run_dir = Path(shutil.copytree(run[1], tmp_path / "run"))
    state = checkpoint_state(run_dir)
    leaves, treedef = jax.tree.flatten(state)
    index = largest_weight(state)
    broken = np.array(leaves[index], copy=True)
    broken.flat[broken.size // 2] = value
    leaves[index] = broken
    save_checkpoint(run_dir, jax.tree.unflatten(treedef, leaves))
    one_line_error(
        cli("route", "--run", run_dir, "--check", "1"), str(run_dir / CHECKPOINT), "non-finite"
    )


def test_older_checkpoints_and_run_records_are_refused(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir = Path(shutil.copytree(run[1], tmp_path / "run"))
    state = checkpoint_state(run_dir)
    (run_dir / CHECKPOINT).write_bytes(
        serialization.to_bytes(state)
    )  # the format before checkpoints held a hash
    one_line_error(
        cli("route", "--run", run_dir, "--check", "1"), str(run_dir / CHECKPOINT), "older dersim"
    )
    record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    del record["cache_digest"]
    (run_dir / RUN_FILE).write_text(json.dumps(record), encoding="utf-8")
    one_line_error(
        cli("route", "--run", run_dir, "--check", "1"), str(run_dir / RUN_FILE), "no cache digest"
    )


# ---------------------------------------------------------------- D: route input and output


def test_non_utf8_input_line_is_a_one_line_error(run: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"question": "Is water wet?"}\n{"question": "Caf\xe9 au lait?"}\n')
    one_line_error(cli("route", "--run", run[1], "--input", path), f"{path}:2:", "UTF-8", "0xe9")


def test_references_must_be_a_list(run: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"question": "Is water wet?", "references": 5}\n', encoding="utf-8")
    one_line_error(
        cli("route", "--run", run[1], "--input", path), f"{path}:1:", '"references"', "list"
    )


@pytest.mark.parametrize(
    ("line", "part"),
    [
        ('{"question": "Is water wet?", "id": [1]}', '"id"'),
        ('{"question": "Is water wet?", "label": 1}', '"label"'),
        ('{"question": "Is water wet?", "references": ["yes", 2]}', '"references"'),
        ('{"question": "Is \\ud800 wet?"}', "surrogate"),
        ("[" * 100_000, "not JSON"),
        ('{"question": "Is water wet?", "id": ' + "9" * 5000 + "}", "not JSON"),
    ],
    ids=["id-list", "label-number", "references-number", "surrogate", "deep", "huge-int"],
)
def test_every_malformed_input_line_is_a_one_line_error(
    run: tuple[Path, Path], tmp_path: Path, line: str, part: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"question": "Is fire hot?"}\n\n' + line + "\n", encoding="utf-8")
    one_line_error(cli("route", "--run", run[1], "--input", path), f"{path}:3:", part)


def test_unwritable_output_fails_before_models_load(
    run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run or its experts were loaded before --output was checked")

    monkeypatch.setattr(LiveRun, "__init__", loaded)
    monkeypatch.setattr(ExpertPool, "__init__", loaded)
    questions = write_questions(tmp_path / "in.jsonl", ["Is water wet?"])
    (tmp_path / "file").write_text("", encoding="utf-8")
    (tmp_path / "folder").mkdir()
    for output in (
        tmp_path / "missing" / "out.jsonl",
        tmp_path / "file" / "out.jsonl",
        tmp_path / "folder",
    ):
        one_line_error(
            cli("route", "--run", run[1], "--input", questions, "--output", output),
            f"--output {output}",
        )


def test_a_rejected_question_does_not_abort_the_batch(
    http: tuple[ExpertServer, Path, Path], mine: ExpertServer, tmp_path: Path
) -> None:
    _, _, run_dir = http
    texts = ["Is water wet?", f"{REJECTED} Is fire cold?", "Can a cat fly an airplane?"]
    questions = write_questions(tmp_path / "in.jsonl", texts)
    urls = ["--base-url", f"alpha={mine.base_url}", "--base-url", f"beta={mine.base_url}"]
    result = cli(
        "route", "--run", run_dir, "--input", questions, "--output", tmp_path / "out.jsonl", *urls
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "1 of 3 questions failed" in result.stderr
    lines = routes(tmp_path / "out.jsonl")
    assert [line["question"] for line in lines] == texts
    assert (
        "error" not in lines[0]
        and "error" not in lines[2]
        and lines[0]["answer"]
        and lines[2]["answer"]
    )
    assert "refused the call" in lines[1]["error"] and "HTTP 400" in lines[1]["error"]
    interactive = cli("route", "--run", run_dir, *urls, input=f"{texts[1]}\n{texts[0]}\n\n")
    assert interactive.exit_code == 0, interactive.output
    assert "refused the call" in interactive.stderr and "answer (2 calls" in interactive.stdout


def test_output_is_written_atomically(
    run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text("earlier routes\n", encoding="utf-8")
    questions = write_questions(
        tmp_path / "in.jsonl", ["Is water wet?", "Is fire hot?", "Can cats fly?"]
    )
    original, seen = LiveRouter.route, []

    def route(self: LiveRouter, *args: object, **kwargs: object) -> object:
        seen.append(output.read_text(encoding="utf-8"))
        if len(seen) == 2 and interrupt:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LiveRouter, "route", route)
    interrupt = True
    cli("route", "--run", run[1], "--policy", NONE, "--input", questions, "--output", output)
    assert output.read_text(encoding="utf-8") == "earlier routes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.jsonl",
        "out.jsonl",
    ]  # no temporary file left
    interrupt, seen = False, []
    result = cli(
        "route", "--run", run[1], "--policy", NONE, "--input", questions, "--output", output
    )
    assert result.exit_code == 0, result.output
    assert seen == ["earlier routes\n"] * 3
    assert [r["question"] for r in routes(output)] == [
        "Is water wet?",
        "Is fire hot?",
        "Can cats fly?",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_interactive_stdin_with_invalid_bytes(run: tuple[Path, Path]) -> None:
    result = cli(
        "route",
        "--run",
        run[1],
        "--policy",
        NONE,
        input=b"Caf\xe9?\nCan a cat fly an airplane?\n\n",
    )
    assert result.exit_code == 0 and result.exception is None, result.output
    assert result.stderr.count("not UTF-8") == 1 and "Traceback" not in result.output
    assert "answer (2 calls, stopped by t_max" in result.stdout


# ---------------------------------------------------------------- E: the check's report


def test_check_reports_fingerprint_match_and_agreement_per_expert(
    run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dersim.builder.backends.llama_cpp import kernel_fingerprint, replay_key

    cache, run_dir = run
    here = kernel_fingerprint()
    assert (
        open_cache(cache).manifest["backend_fingerprint"] == {}
    )  # a fresh synthetic build: nothing to pin
    assert check_report(run_dir, "--policy", NONE)["fingerprint"]["status"] == "not applicable"
    other = {
        **here,
        "llama_cpp_python": "0.0.1",
        "features": sorted([*here["features"], "AVX512"]),
        "cpu": "Other CPU",
    }
    recorded = {
        "match": {"llama_cpp": {**here, "cpu": "Other CPU"}},
        "differs": {"llama_cpp": other},
        "unknown": None,
    }
    for status, fingerprint in recorded.items():

        def edit(manifest: dict, fingerprint: dict | None = fingerprint) -> None:
            if fingerprint is None:
                del manifest["backend_fingerprint"]
            else:
                manifest["backend_fingerprint"] = fingerprint

        rebound = rebound_run(
            run_dir, edited_cache(cache, tmp_path / status, edit), tmp_path / f"run-{status}"
        )
        report = check_report(rebound, "--policy", NONE)["fingerprint"]
        assert report["status"] == status
        text = cli("route", "--run", rebound, "--policy", NONE, "--check", "4").stdout
        if status == "unknown":
            assert "unknown: the cache records no fingerprint" in text
            continue
        llama = report["backends"]["llama_cpp"]
        assert llama["build"] == fingerprint["llama_cpp"] and replay_key(
            llama["here"]
        ) == replay_key(here)
        assert (llama["cpu"]["build"], llama["cpu"]["here"]) == ("Other CPU", here["cpu"])
        assert "Other CPU" in text and here["cpu"] in text
        if status == "differs":
            assert set(llama["differences"]) == {"llama_cpp_python", "features"}
            assert "0.0.1" in text and "AVX512" in text
        else:
            assert llama["differences"] == {}
    # Agreement per expert: the experts other than "small" now answer differently live.
    complete = SyntheticBackend.complete

    def altered(self: SyntheticBackend, request: object) -> Completion:
        out = complete(self, request)
        return (
            out
            if self.name == "small"
            else Completion(
                out.text + " (altered)", out.prompt_tokens, out.completion_tokens, out.latency_s
            )
        )

    monkeypatch.setattr(SyntheticBackend, "complete", altered)
    result = cli("route", "--run", run_dir, "--policy", NONE, "--check", "4", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    experts = report["experts"]
    assert list(experts) == ["small", "medium", "large"]
    compared = sum(e["compared"] for e in experts.values())
    assert compared == sum(s["same_expert"] for s in report["steps"].values()) > 0
    assert all(e["same_answer"] == 0 for name, e in experts.items() if name != "small")
    text = cli("route", "--run", run_dir, "--policy", NONE, "--check", "4").stdout
    assert "same answer (bytes)" in text and "medium" in text
