"""The builder's submission window: a level of many calls never has more than the window
submitted at once, and its records come back in the level's order."""

from __future__ import annotations

from pathlib import Path

from dersim.builder.backends import make_backend
from dersim.builder.calls import MIN_WINDOW, CallRunner
from dersim.builder.expand import Call
from dersim.builder.journal import CallJournal
from dersim.builder.sources import load_questions
from dersim.recipe import load_recipe

from conftest import synthetic_recipe_text


def test_a_large_level_runs_through_a_bounded_window(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text(
        synthetic_recipe_text(train=150, test=50, concurrency=2), encoding="utf-8"
    )
    recipe = load_recipe(tmp_path / "r.toml")
    questions = load_questions(recipe.dataset)
    calls = [Call(q, f"draft {i}", e) for i in range(4) for q in questions for e in range(3)]
    runner = CallRunner(
        recipe.experts,
        recipe.prompt,
        recipe.build,
        CallJournal(tmp_path / "j"),
        make_backend,
        show_progress=False,
    )
    try:
        records = runner.run_level(1, calls)
    finally:
        runner.close()
    assert len(calls) == 2400 and runner.window() == MIN_WINDOW
    assert 0 < runner.peak_pending <= runner.window(), "more calls in flight than the window"
    assert [(r.question_id, r.previous_answer) for r in records] == [
        (q.question_id, prev) for q, prev, _, _ in calls
    ]
    assert runner.calls_made == len(calls) and all(r.ok for r in records)
