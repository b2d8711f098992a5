"""`dersim reproduce`: every table from one command on a synthetic cache, the derived views replay
the cache exactly, the intervals are sane, and a killed reproduction resumes to the same results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dersim.builder.build import build_cache
from dersim.cache.schema import QUESTIONS, STATES
from dersim.env.der_env import make_params, reset_to, transition
from dersim.env.tables import EnvSpec, load_tables
from dersim.evaluation.stats import mean_ci
from dersim.recipe import load_recipe

from conftest import REPO, synthetic_recipe_text

TABLES = (
    "Main table",
    "T_max and the terminator's absence",
    "Terminators",
    "Knowledge transfer",
    "Learned routing against random routing",
    "One expert per step against two",
    "Reward:",
    "Route lengths",
)
MAIN_ROWS = (
    "DER, chosen on val",
    "DER, the paper's setting (PPO, oracle terminator)",
    "single: small",
    "single: large",
    "best fixed route (train)",
    "round-robin x2",
    "random routing (the chosen DER's route lengths)",
    "all experts, the reference picks the answer",
    "all experts, agreement picks the answer (voting)",
)
FAST = ("--quick", "--steps", "5120")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reproduce")
    (root / "recipe.toml").write_text(
        synthetic_recipe_text(train=12, test=6, depth=2), encoding="utf-8"
    )
    build_cache(load_recipe(root / "recipe.toml"), root / "cache", show_progress=False)
    return root / "cache"


def command(cache: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dersim",
        "reproduce",
        "--cache",
        str(cache),
        "--out",
        str(out),
        *FAST,
        "--compare-cache",
        f"again={cache}",
    ]


@pytest.fixture(scope="module")
def straight(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole quick reproduction, uninterrupted, in its own process."""
    out = tmp_path_factory.mktemp("straight") / "repro"
    done = subprocess.run(command(cache, out), capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_quick_writes_every_table_with_its_rows(straight: Path) -> None:
    out = straight
    markdown = (out / "tables.md").read_text(encoding="utf-8")
    for title in TABLES:
        assert f"## {title}" in markdown, title
    for row in (
        *MAIN_ROWS,
        "w/o terminator (none)",
        "without transfer",
        "again cache",
        "two per step, the judge",
        "two per step, the reference",
        "random routing, the same route lengths as DER paper",
    ):
        assert row in markdown, row
    main = markdown.split("## ")[1]
    chosen = next(line for line in main.splitlines() if line.startswith("| DER, chosen on val"))
    assert "full information" in main or "fqi" in chosen or "exact-pg" in chosen, (
        "the best full-information row"
    )
    assert "the paper's algorithm (PPO)" in main or "ppo" in chosen, "the deployable PPO row"
    for name in ("tables.tex", "t_max.png", "route_lengths.png", "cost_quality.png"):
        assert (out / name).stat().st_size > 0, name
    assert r"\toprule" in (out / "tables.tex").read_text(encoding="utf-8")
    cells = pl.read_parquet(out / "results.parquet")
    assert set(cells["table"]) == {
        "main",
        "t_max",
        "terminator",
        "ktp",
        "routing",
        "experts_per_step",
        "reward",
        "route_lengths",
    }
    main_rows = cells.filter(pl.col("table") == "main")
    assert main_rows.filter(pl.col("row") == "all experts, the reference picks the answer")[
        "uses_reference"
    ].all()
    assert not main_rows.filter(pl.col("row").str.starts_with("DER, chosen on val"))[
        "uses_reference"
    ].any()
    scores = main_rows.filter(pl.col("column") == "accuracy")
    assert ((scores["low"] <= scores["mean"]) & (scores["mean"] <= scores["high"])).all()
    shares = (
        cells.filter(pl.col("column").str.starts_with("share_"))
        .group_by("table", "row")
        .agg(pl.col("mean").sum())
    )
    np.testing.assert_allclose(shares["mean"].to_numpy(), 1.0)


@settings(max_examples=25, deadline=None, database=None)
@given(data=st.data())
def test_no_transfer_view_answers_every_call_from_the_root(cache: Path, data) -> None:
    view = load_tables(
        cache, EnvSpec(metric="accuracy", transfer=False, split="all", val_fraction=0.0)
    )
    built = load_tables(cache, EnvSpec(metric="accuracy", split="all", val_fraction=0.0))
    states, questions = pl.read_parquet(cache / STATES), pl.read_parquet(cache / QUESTIONS)
    root = dict(zip(questions["question_id"], questions["root_state_id"], strict=True))
    state = data.draw(st.integers(0, states.height - 1), label="state")
    expert = data.draw(st.integers(0, built.next_state.shape[1] - 1), label="expert")
    first_answer = built.next_state[root[states["question_id"][state]], expert]
    assert view.next_state[state, expert] == first_answer
    assert view.cost[state, expert] == built.cost[root[states["question_id"][state]], expert]
    params = make_params(view, terminator="none", t_max=2)
    _, start = reset_to(params, data.draw(st.integers(0, len(view.roots) - 1), label="question"))
    first = data.draw(st.integers(0, 2), label="first call")
    after_one, *_ = transition(start, first, params)
    after_two, *_ = transition(after_one, expert, params)
    assert int(after_two.state) == built.next_state[int(start.state), expert], (
        "the second call ignores the first"
    )


def test_pair_action_keeps_the_better_answer_and_pays_both_calls(cache: Path) -> None:
    single = load_tables(cache, EnvSpec(metric="accuracy", split="all", p0=0.5))
    for pick in ("reference", "judge"):
        pairs = load_tables(
            cache,
            EnvSpec(metric="accuracy", split="all", p0=0.5, experts_per_step=2, pair_pick=pick),
        )
        assert pairs.expert_names == ("small+medium", "small+large", "medium+large")
        preference = single.score if pick == "reference" else pairs.judge_prob
        for k, (i, j) in enumerate(((0, 1), (0, 2), (1, 2))):
            a, b = single.next_state[:, i], single.next_state[:, j]
            built = (a >= 0) & (b >= 0)
            better = np.where(preference[np.maximum(b, 0)] > preference[np.maximum(a, 0)], b, a)
            np.testing.assert_array_equal(pairs.next_state[built, k], better[built])
            np.testing.assert_allclose(
                pairs.cost[:, k], single.cost[:, i] + single.cost[:, j], rtol=1e-6
            )
            if pick == "reference":
                np.testing.assert_array_equal(
                    pairs.score[pairs.next_state[built, k]],
                    np.maximum(single.score[a[built]], single.score[b[built]]),
                )


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_more_questions() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 200, 800):
        values = rng.random(n)
        estimate = mean_ci(values)
        assert estimate.low <= estimate.mean <= estimate.high and estimate.mean == pytest.approx(
            values.mean()
        )
        widths.append(estimate.high - estimate.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.35), "the width falls like 1 / sqrt(n)"


def test_kill_and_resume_gives_the_same_results(
    cache: Path, straight: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    process = subprocess.Popen(
        command(cache, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "grids" / "no-transfer" / "run.json").exists():  # the main grid is done
        assert process.poll() is None and time.monotonic() < deadline, (
            "the reproduction ended before the kill"
        )
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "results.parquet").exists()
    resumed = subprocess.run(command(cache, out), capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "grid main: finished earlier, loaded" in resumed.stderr
    assert (out / "results.parquet").read_bytes() == (straight / "results.parquet").read_bytes()
