"""`dersim route` on a synthetic cache with its own backend: the live loop is the env's episode."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from dersim.builder.backends.base import CallRequest, Completion
from dersim.builder.backends.synthetic import SyntheticBackend
from dersim.cache.reader import open_cache
from dersim.cli import main
from dersim.env.tables import split_roots
from dersim.live.observation import raw_state_embeddings
from dersim.live.policy import LiveRun, per_policy
from dersim.trainer.policy import action_scores

from live_helpers import TERMINATORS, synthetic_run

LEARNED, NONE, JUDGE, ORACLE = (
    TERMINATORS.index(t) for t in ("learned", "none", "judge", "oracle")
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return synthetic_run(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="module")
def live(run: tuple[Path, Path]) -> LiveRun:
    return LiveRun(run[1])


def questions_file(cache: Path, path: Path) -> list[dict]:
    """The cache's test questions as route input lines (with the references the synthetic experts
    read)."""
    frame = open_cache(cache).questions.filter(split="test")
    records = [
        {
            "id": r["question_id"],
            "question": r["question"],
            "reference": r["reference"],
            "references": list(r["references"]),
            "label": r["label"],
        }
        for r in frame.iter_rows(named=True)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def route(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["route", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_live_observation_is_the_envs(run: tuple[Path, Path], live: LiveRun) -> None:
    cache, _ = run
    raw, _ = raw_state_embeddings(cache)
    assert np.array_equal(live.observed(raw), live.trainer.tables.embedding), (
        "the PCA refit is the run's, bit for bit"
    )
    policy = live.policy(LEARNED)
    env = per_policy(live.trainer.env_params, LEARNED)
    params = jax.tree.map(lambda x: x[LEARNED], live.params)
    n = policy.n_experts
    for state in range(0, len(raw), 5):
        for t in range(policy.t_max):
            expected = action_scores(
                live.trainer.network,
                params,
                env,
                jnp.asarray([state]),
                jnp.asarray([t]),
                jnp.asarray([n]),
            )[0]
            np.testing.assert_array_equal(policy.logits(raw[state], t, n), np.asarray(expected))


def test_route_follows_the_policys_argmax(
    run: tuple[Path, Path], live: LiveRun, tmp_path: Path
) -> None:
    cache, run_dir = run
    records = questions_file(cache, tmp_path / "in.jsonl")
    code, _, err = route(
        "--run",
        str(run_dir),
        "--policy",
        str(LEARNED),
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in records]
    tables = live.trainer.tables
    roots, ids = split_roots(tables, cache, "test")
    replay = live.trainer.greedy(live.params, live.trainer.env_params, roots)["actions"][LEARNED]
    answers = open_cache(cache).states["answer"].to_list()
    for line, actions, root in zip(lines, replay, roots, strict=True):
        state, expected = int(root), []
        for action in actions[actions >= 0]:
            expected.append(
                "STOP" if action == len(tables.expert_names) else tables.expert_names[action]
            )
            if action < len(tables.expert_names):
                state = int(tables.next_state[state, action])
                assert line["steps"][len(expected) - 1]["answer"] == answers[state]
        assert [s["expert"] for s in line["steps"]] + (
            ["STOP"] if line["stopped_by"] == "stop" else []
        ) == expected
        assert line["answer"] == answers[state]
        assert line["cost_unit"] == "B params"
        assert line["cost"] == pytest.approx(
            sum({"small": 0.5, "medium": 2.0, "large": 7.0}[s["expert"]] for s in line["steps"])
        )
        assert line["prompt_tokens"] == sum(s["prompt_tokens"] for s in line["steps"])


@pytest.mark.parametrize("policy", [None, JUDGE])
def test_check_agrees_fully_on_the_synthetic_cache(
    run: tuple[Path, Path], policy: int | None
) -> None:
    args = ["--run", str(run[1]), "--check", "10", "--json"] + (
        [] if policy is None else ["--policy", str(policy)]
    )
    code, out, err = route(*args)
    assert code == 0, out + err
    report = json.loads(out)
    assert report["questions"] == 4 and report["full_agreement"] and report["mismatches"] == []
    assert all(
        s["questions"] == s["same_expert"] == s["same_answer"] for s in report["steps"].values()
    )
    embeddings = report["embeddings"]
    assert (
        embeddings["states_compared"] > 4
        and embeddings["bitwise_equal"] == embeddings["states_compared"]
    )


def test_check_reports_each_mismatch_with_both_texts(
    run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, run_dir = run
    complete = SyntheticBackend.complete

    def reseeded(self: SyntheticBackend, request: CallRequest) -> Completion:
        """The live experts now answer as if seeded otherwise: unlike the cached ones."""
        out = complete(self, request)
        return Completion(
            out.text + " (reseeded)", out.prompt_tokens, out.completion_tokens, out.latency_s
        )

    monkeypatch.setattr(SyntheticBackend, "complete", reseeded)
    code, out, _ = route("--run", str(run_dir), "--policy", str(NONE), "--check", "4")
    assert code == 1
    assert "mismatch" in out and "replay: " in out and "live:   " in out
    code, out, _ = route("--run", str(run_dir), "--policy", str(NONE), "--check", "4", "--json")
    mismatches = json.loads(out)["mismatches"]
    assert mismatches and all(m["replay"] != m["live"] for m in mismatches)


def test_routes_may_go_deeper_than_the_cache_and_say_so(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    cache, run_dir = run
    questions_file(cache, tmp_path / "in.jsonl")
    code, out, err = route(
        "--run",
        str(run_dir),
        "--policy",
        str(NONE),
        "--input",
        str(tmp_path / "in.jsonl"),
        "--max-calls",
        "4",
    )
    assert code == 0, err
    assert "deeper than the cache's depth 2" in err
    for line in map(json.loads, out.splitlines()):
        assert line["calls"] == 4 and line["beyond_cache_depth"] and line["stopped_by"] == "t_max"
        assert line["max_calls"] == 4 and line["cache_depth"] == 2


def test_the_judge_stops_a_route_as_in_the_env(
    run: tuple[Path, Path], live: LiveRun, tmp_path: Path
) -> None:
    cache, run_dir = run
    questions_file(cache, tmp_path / "in.jsonl")
    code, out, err = route(
        "--run", str(run_dir), "--policy", str(JUDGE), "--input", str(tmp_path / "in.jsonl")
    )
    assert code == 0, err
    threshold = np.float32(live.trainer.policies[JUDGE]["judge_threshold"])
    for line in map(json.loads, out.splitlines()):
        probs = [np.float32(s["judge_prob"]) for s in line["steps"]]
        assert all(p < threshold for p in probs[:-1])
        assert line["stopped_by"] == ("judge" if probs[-1] >= threshold else "t_max")


def test_interactive_mode_prints_the_route_as_it_happens(run: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(
        main,
        ["route", "--run", str(run[1]), "--policy", str(NONE)],
        input="Can a cat fly an airplane?\n\n",
    )
    assert result.exit_code == 0, result.output
    assert (
        "[1] " in result.stdout
        and "[2] " in result.stdout
        and "answer (2 calls, stopped by t_max" in result.stdout
    )


def test_the_oracle_terminator_is_refused_live(run: tuple[Path, Path]) -> None:
    code, _, err = route("--run", str(run[1]), "--policy", str(ORACLE), "--check", "1")
    last = err.strip().splitlines()[-1]
    assert (
        code == 2
        and last.startswith("error: --policy 3 stops by the oracle terminator")
        and "reference" in last
    )


def test_a_bad_input_line_is_a_one_line_error(run: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(
        '{"question": "Is water wet?"}\n{"id": 3}\n', encoding="utf-8"
    )
    code, _, err = route("--run", str(run[1]), "--input", str(tmp_path / "in.jsonl"))
    assert code == 2 and 'in.jsonl:2: expected an object with a non-empty string "question"' in err
