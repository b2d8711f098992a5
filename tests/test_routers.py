"""The routers on caches with a known structure, replay semantics, choosing on val, the CLI, a real
import.

The cluster cache: questions fall in two clusters (their embeddings point two ways). The cheap
expert is right exactly on cluster A, the mid-priced one on cluster B (and on 40% of A), the dear
one on 80% at random, so a router that reads the question can be right everywhere at a fraction of
the dear expert's price, a single-expert policy can do better per cost than mixing cheap and dear,
a right answer's embedding carries a direction a judge can learn, and right answers to a question
agree with each other while wrong ones do not. Every router must beat random routing on it.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from dersim.cache.schema import (
    QUESTIONS,
    QUESTIONS_SCHEMA,
    STATES,
    STATUS_OK,
    TRANSITIONS,
    TRANSITIONS_SCHEMA,
    states_schema,
)
from dersim.cache.verify import verify_cache
from dersim.cache.writer import write_cache
from dersim.cli import main
from dersim.importers.common import import_answer_set
from dersim.importers.routerbench import read_routerbench
from dersim.recipe import EmbeddingSpec
from dersim.routers.base import Router, RouterOptions, Routes
from dersim.routers.cascade import CascadeKTPRouter, CascadeRouter
from dersim.routers.data import load_router_data
from dersim.routers.evaluate import choose, compare
from dersim.routers.metrics import curve_points
from dersim.routers.reference import OracleRouter
from dersim.routers.registry import CLASSES, ROUTERS

from conftest import REPO, SHARED_DATA

PRICES = (1.0, 3.0, 10.0)  # billions of parameters: the cost of a call
DIM = 32


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def write_cluster_cache(out: Path, n_questions: int = 300, seed: int = 0) -> Path:
    """The cluster cache (module docstring), depth 2: from any answer an expert gives its own answer
    again (as imported caches do), so cascades of two replay with or without transfer."""
    rng = np.random.default_rng(seed)
    n = len(PRICES)
    cluster = np.arange(n_questions) % 2
    centres = unit(rng.normal(size=(2, DIM)))
    roots_embedding = unit(centres[cluster] + 0.35 * rng.normal(size=(n_questions, DIM)))
    right = np.stack(
        [
            cluster == 0,
            (cluster == 1) | (rng.random(n_questions) < 0.4),
            rng.random(n_questions) < 0.8,
        ],
        axis=1,
    )  # [Q, N]
    good = unit(rng.normal(size=DIM))  # the direction of a right answer, for the judge
    truth = unit(rng.normal(size=(n_questions, DIM)))  # what right answers to a question share
    noise = unit(rng.normal(size=(n_questions, n, DIM)))
    answers = unit(
        0.5 * roots_embedding[:, None] + np.where(right[..., None], truth[:, None] + good, noise)
    )
    per_q = n + 1
    roots = np.arange(n_questions) * per_q
    embedding = np.concatenate([roots_embedding[:, None], answers], axis=1).reshape(-1, DIM)
    score = (
        np.concatenate([np.zeros((n_questions, 1)), right], axis=1).reshape(-1).astype(np.float32)
    )
    depth = np.tile(np.arange(per_q) > 0, n_questions).astype(np.int16)
    source = np.concatenate(
        [roots[:, None], roots[:, None] + 1 + np.arange(n)], axis=1
    )  # [Q, 1 + N] states
    state = np.repeat(source, n, axis=1).reshape(-1)
    expert = np.tile(np.arange(n), n_questions * per_q)
    nxt = (np.repeat(roots, per_q * n) + 1 + expert).astype(np.int32)
    ids = [f"q{i:04d}" for i in range(n_questions)]
    questions = pa.table(
        {
            "question_id": ids,
            "split": ["test" if i // 2 % 10 < 3 else "train" for i in range(n_questions)],
            "question": [f"question {i}" for i in range(n_questions)],
            "reference": [""] * n_questions,
            "references": [[] for _ in range(n_questions)],
            "label": [""] * n_questions,
            "root_state_id": roots.astype(np.int32),
        },
        schema=QUESTIONS_SCHEMA,
    )
    states = pa.table(
        {
            "state_id": np.arange(len(score), dtype=np.int32),
            "question_id": np.repeat(ids, per_q).tolist(),
            "answer": ["" if d == 0 else f"answer {s}" for s, d in enumerate(depth.tolist())],
            "depth": depth,
            "accuracy": score,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), DIM),
        },
        schema=states_schema(["accuracy"], DIM),
    )
    count = len(state)
    transitions = pa.table(
        {
            "state_id": state.astype(np.int32),
            "expert_id": expert.astype(np.int16),
            "next_state_id": nxt,
            "prompt_tokens": np.zeros(count, np.int32),
            "completion_tokens": np.zeros(count, np.int32),
            "latency_s": np.zeros(count, np.float32),
            "cost_usd": np.zeros(count, np.float32),
            "status": [STATUS_OK] * count,
            "error": pa.nulls(count, pa.string()),
        },
        schema=TRANSITIONS_SCHEMA,
    )
    write_cache(
        out,
        {QUESTIONS: questions, STATES: states, TRANSITIONS: transitions},
        {
            "dataset": {"id": "clusters", "source": "numpy"},
            "experts": [
                {"name": name, "backend": "synthetic", "params_b": price}
                for name, price in zip(("cheap", "mid", "dear"), PRICES, strict=True)
            ],
            "depth": 2,
            "dedup": "none",
            "metric_columns": ["accuracy"],
            "embedding": {"model": "random", "dim": DIM},
        },
    )
    return out


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cluster_cache(tmp_path_factory.mktemp("routers") / "clusters")


@pytest.fixture(scope="module")
def comparison(clusters: Path):
    return compare(load_router_data(clusters), list(ROUTERS), seeds=2, n_boot=50)


def mean_points(curve) -> tuple[np.ndarray, np.ndarray]:
    return curve.cost.mean(axis=(0, 2)), curve.score.mean(axis=(0, 2))


def test_every_router_beats_random_routing_where_the_structure_pays(comparison) -> None:
    curves = {c.name: c for c in comparison.curves}
    assert set(curves) == set(ROUTERS)
    xs, ys = curve_points(*mean_points(curves["random-mix"]))
    for name in ROUTERS:
        if name in ("random", "random-mix", "best-single"):
            continue
        cost, score = mean_points(curves[name])
        gain = score - np.interp(
            cost, xs, ys
        )  # above the random mix of weak and strong at the same cost
        assert gain.max() > 0.05, (name, gain.max())
        if (
            name != "voting"
        ):  # voting spends more than the dearest expert: its APGR only counts a mix
            assert (
                curves[name].figures["apgr"].mean > curves["random-mix"].figures["apgr"].mean + 0.05
            ), name


def test_reference_rows_and_figures(comparison) -> None:
    curves = {c.name: c for c in comparison.curves}
    assert [n for n, c in curves.items() if c.uses_reference] == ["oracle"]
    assert (
        comparison.expert_names[comparison.weak] == "cheap"
        and comparison.expert_names[comparison.strong] == "dear"
    )
    assert curves["oracle"].figures["apgr"].mean > 1
    assert curves["best-single"].figures["apgr"].mean == pytest.approx(0.5)
    for curve in comparison.curves:
        for figure in curve.figures.values():
            if np.isfinite(figure.mean) and np.isfinite(figure.low) and np.isfinite(figure.high):
                assert figure.low - 1e-9 <= figure.high
    assert curves["mlp"].stochastic and curves["mlp"].score.shape[0] == 2
    assert not curves["knn"].stochastic and curves["knn"].hyperparameters["k"] in (5, 10, 20, 40)


def test_cascade_with_transfer_and_the_oracle_judge(clusters: Path) -> None:
    data = load_router_data(clusters)
    train, questions = data.train_data("fit", None), data.questions("test")
    assert {"chain": (0, 2)} in CascadeKTPRouter.candidates(train, data.depth)
    assert (
        max(len(c["chain"]) for c in CascadeKTPRouter.candidates(train, data.depth)) == 2
    )  # depth 2
    assert (
        max(len(c["chain"]) for c in CascadeRouter.candidates(train, data.depth)) == 3
    )  # every expert
    scratch, chained = (
        CascadeRouter(chain=(0, 2)).fit(train),
        CascadeKTPRouter(chain=(0, 2)).fit(train),
    )
    for threshold in scratch.grid():
        a, b = scratch.route(questions, threshold), chained.route(questions, threshold)
        assert not a.transfer and b.transfer
        np.testing.assert_array_equal(a.calls, b.calls)
        # From an answer an expert repeats its own answer here, so with or without transfer is the
        # same.
        np.testing.assert_array_equal(
            a.replay(questions.roots, data.world).final_state,
            b.replay(questions.roots, data.world).final_state,
        )
    oracle = compare(
        data,
        ["cascade"],
        options=RouterOptions(judge="oracle", judge_error=0.2),
        seeds=2,
        n_boot=20,
    )
    curve = oracle.curves[0]
    assert curve.uses_reference and curve.stochastic and curve.score.shape[0] == 2


def test_hyperparameters_are_chosen_without_the_test_questions(clusters: Path) -> None:
    data = load_router_data(clusters)
    test_answers = data.world.next_state[data.roots["test"]].ravel()
    scrambled = data.score.copy()
    scrambled[test_answers] = 1 - scrambled[test_answers]
    for name in ("knn", "cascade", "hybrid"):
        assert choose(name, data, RouterOptions()) == choose(
            name, replace(data, score=scrambled), RouterOptions()
        )


def test_replay_with_and_without_transfer(tmp_path: Path) -> None:
    data = load_router_data(write_cluster_cache(tmp_path / "c", n_questions=20))
    world, roots = data.world, data.roots["test"]
    calls = np.tile([0, 2], (len(roots), 1))
    chained = Routes(calls, transfer=True).replay(roots, world)
    scratch = Routes(calls).replay(roots, world)
    np.testing.assert_array_equal(scratch.final_state, world.next_state[roots, 2])
    np.testing.assert_array_equal(
        chained.final_state, world.next_state[world.next_state[roots, 0], 2]
    )
    np.testing.assert_allclose(scratch.cost, 1.0 + 10.0)
    kept = Routes(calls, keep=np.zeros(len(roots), np.int64)).replay(roots, world)
    np.testing.assert_array_equal(kept.final_state, world.next_state[roots, 0])
    nothing = Routes(np.full((len(roots), 1), -1)).replay(roots, world)
    np.testing.assert_array_equal(nothing.final_state, roots)
    assert (nothing.cost == 0).all() and (nothing.calls == 0).all()


def test_routers_command_writes_results_and_marks_reference_rows(
    clusters: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "routers",
            "--cache",
            str(clusters),
            "--routers",
            "knn,random-mix,oracle",
            "--out",
            str(out),
            "--bootstrap",
            "20",
            "--json",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [r["name"] for r in report["routers"]] == ["knn", "random-mix", "oracle"]
    assert [r["uses_reference"] for r in report["routers"]] == [False, False, True]
    assert report["cost_unit"] == "B params" and report["weak"] == "cheap"
    for name in ("routers.md", "routers.json", "curves.parquet", "routers.png"):
        assert (out / name).exists(), name
    table = CliRunner().invoke(
        main,
        [
            "routers",
            "--cache",
            str(clusters),
            "--routers",
            "best-single",
            "--out",
            str(out),
            "--bootstrap",
            "20",
            "--quiet",
        ],
    )
    assert table.exit_code == 0 and "AIQ" in table.output and "best-single" in table.output
    refused = CliRunner().invoke(
        main, ["routers", "--cache", str(clusters), "--routers", "knn,nope", "--out", str(out)]
    )
    assert (
        refused.exit_code == 2
        and refused.output.count("\n") == 1
        and "unknown router 'nope'" in refused.output
    )


def test_random_mix_apgr_is_one_half_on_a_real_import(tmp_path: Path) -> None:
    data_dir = SHARED_DATA / "routerbench"
    answers = read_routerbench(
        [data_dir / "mbpp_train.csv", data_dir / "mbpp_test.csv"], strip_shared_prefix=True
    )
    import_answer_set(
        answers, tmp_path / "rb", embedding=EmbeddingSpec(model="hashing", dim=16), limit=160
    )
    data = load_router_data(tmp_path / "rb", cost_mode="usd")
    result = compare(
        data, ["random-mix"], seeds=50, n_boot=20
    )  # seed std ~0.06: the mean is within 0.01
    assert result.n_questions >= 40
    assert result.curves[0].figures["apgr"].mean == pytest.approx(0.5, abs=0.03)


def test_capabilities_are_read_from_the_class_before_a_router_is_made(clusters: Path) -> None:
    """Transfer needs knowledge-transfer answers: refused on an import (and at depth 1), allowed on
    a built depth-2 cache; the reference rows get the reference through their class."""
    routerbench = load_router_data(REPO / "cache" / "routerbench-mbpp")
    data = load_router_data(clusters)
    assert "imported cache" in CascadeKTPRouter.unavailable(routerbench)
    assert "depth 1" in CascadeKTPRouter.unavailable(replace(data, depth=1, imported=False))
    assert (
        CascadeKTPRouter.unavailable(data) is None
        and CascadeRouter.unavailable(routerbench) is None
    )
    assert OracleRouter.fixed_settings(data, RouterOptions())["reference"] is data.score
    assert CascadeRouter.fixed_settings(data, RouterOptions())["reference"] is None
    assert (
        CascadeRouter.fixed_settings(data, RouterOptions(judge="oracle"))["reference"] is data.score
    )
    with pytest.raises(TypeError, match="abstract"):
        Router()  # type: ignore[abstract]


def test_every_router_documents_each_of_its_parameters() -> None:
    """scikit-learn's shape: a Parameters section naming every constructor argument."""
    for name, cls in CLASSES.items():
        documented = next(
            c.__doc__ for c in cls.__mro__ if "Parameters\n    ---" in (c.__doc__ or "")
        )
        for parameter in list(inspect.signature(cls.__init__).parameters)[1:]:
            assert f"    {parameter} : " in documented, f"{name}: {parameter} is not documented"


def test_bundled_routerbench_cache_has_a_cost_quality_story() -> None:
    cache = REPO / "cache" / "routerbench-mbpp"
    assert verify_cache(cache) == []
    assert sum(f.stat().st_size for f in cache.iterdir()) < 8_000_000
    data = load_router_data(cache)
    assert data.cost_mode == "usd" and data.n_experts == 11 and len(data.roots["test"]) == 91
    result = compare(data, ["linear", "random-mix"], seeds=2, n_boot=50)
    linear, mix = (c.figures for c in result.curves)
    assert result.expert_names[result.strong] == "gpt-4-1106-preview"
    assert linear["aiq"].mean > mix["aiq"].mean + 0.05 and linear["apgr"].low > mix["apgr"].high


def test_der_policies_of_a_run_join_the_table_as_curves(clusters: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained = CliRunner().invoke(
        main,
        [
            "train",
            "--vectorized",
            "--cache",
            str(clusters),
            "--seeds",
            "2",
            "--grid",
            "alpha=0,0.5",
            "--grid",
            "algo=ppo,fqi",
            "--steps",
            "640",
            "--num-envs",
            "8",
            "--rollout",
            "8",
            "--chunk-updates",
            "10",
            "--metric",
            "accuracy",
            "--out",
            str(run),
            "--quiet",
        ],
    )
    assert trained.exit_code == 0, trained.output
    result = CliRunner().invoke(
        main,
        [
            "routers",
            "--cache",
            str(clusters),
            "--run",
            str(run),
            "--routers",
            "random-mix",
            "--out",
            str(tmp_path / "out"),
            "--bootstrap",
            "20",
            "--json",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["routers"]}
    assert rows["der: ppo"]["kind"] == "der" and not rows["der: ppo"]["uses_reference"]
    assert (
        rows["der: ppo"]["seeds"] == 2 and rows["der: ppo"]["points"] == 2
    )  # one curve per seed, a point per alpha
    assert (
        rows["der: fqi"]["seeds"] == 1 and rows["der: fqi"]["points"] == 2
    )  # no seed changes a ridge fit
