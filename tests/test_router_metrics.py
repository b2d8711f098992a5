"""The routing metrics on hand-made curves, against hand-computed values, and their bootstrap
intervals."""

from __future__ import annotations

import numpy as np
import pytest

from dersim.routers.estimate import Bootstrap
from dersim.routers.metrics import Reference, curve_metrics, nondecreasing_hull

# Two experts: weak costs 1 and scores 0.2, strong costs 4 and scores 0.7.
TWO = Reference(cost=np.array([1.0, 4.0]), score=np.array([0.2, 0.7]), weak=0, strong=1)


def test_hull_is_the_nondecreasing_concave_envelope() -> None:
    cost = np.array([3.0, 1.0, 2.0, 4.0, 5.0, 2.0])
    score = np.array([0.5, 0.2, 0.6, 0.7, 0.65, 0.1])
    xs, ys = nondecreasing_hull(cost, score)
    # (3, 0.5) lies under the chord from (2, 0.6) to (4, 0.7); (5, 0.65) is past the best point.
    np.testing.assert_allclose(xs, [1.0, 2.0, 4.0])
    np.testing.assert_allclose(ys, [0.2, 0.6, 0.7])


def test_aiq_of_a_known_hull() -> None:
    # Hull (1, .2) - (2, .6) - (4, .7) over the cost range [1, 4]:
    # area = (0.2 + 0.6) / 2 * 1 + (0.6 + 0.7) / 2 * 2 = 1.7, divided by the range 3.
    figures = curve_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.2, 0.6, 0.5, 0.7]), TWO)
    assert figures["aiq"] == pytest.approx(1.7 / 3)


def test_aiq_counts_the_hull_only_within_the_experts_cost_range_and_flat_after_the_best_point() -> (
    None
):
    reference = Reference(
        cost=np.array([1.0, 2.0, 5.0]), score=np.array([0.2, 0.5, 0.6]), weak=0, strong=2
    )
    # Anchored at weak (1, .2); best point (3, .8); the range ends at the dearest expert's cost 5.
    figures = curve_metrics(np.array([3.0]), np.array([0.8]), reference)
    assert figures["aiq"] == pytest.approx(((0.2 + 0.8) / 2 * 2 + 0.8 * 2) / 4)


def test_apgr_is_one_half_for_the_straight_line_from_weak_to_strong() -> None:
    p = np.linspace(0, 1, 11)
    figures = curve_metrics(1 + 3 * p, 0.2 + 0.5 * p, TWO)
    assert figures["apgr"] == pytest.approx(0.5)
    assert figures["cpt50"] == pytest.approx(50.0)
    assert figures["cpt80"] == pytest.approx(80.0)
    assert figures["best_within"] == pytest.approx(0.7)
    assert figures["cost_to_match"] == pytest.approx(4.0)
    assert figures["aiq"] == pytest.approx(0.45)  # the line's own mean over [1, 4]


def test_a_curve_that_beats_strong_recovers_more_than_the_gap() -> None:
    # An oracle-like curve: already better than strong at cost 2.
    figures = curve_metrics(np.array([1.0, 2.0, 4.0]), np.array([0.2, 0.8, 0.9]), TWO)
    assert figures["apgr"] > 1
    # PGR rises from 0 at cost 1 to 1.2 at cost 2, then to 1.4 at cost 4: its mean over [1, 4] is
    # ((0 + 1.2) / 2 * 1 + (1.2 + 1.4) / 2 * 2) / 3.
    assert figures["apgr"] == pytest.approx((0.6 + 2.6) / 3)
    assert figures["cpt50"] == pytest.approx(100 * (1 + 0.25 / 0.6 - 1) / 3)
    assert figures["cost_to_match"] == pytest.approx(1 + 0.5 / 0.6)
    assert figures["best_within"] == pytest.approx(0.9)


def test_a_curve_that_never_reaches_strong() -> None:
    figures = curve_metrics(np.array([1.5, 3.0]), np.array([0.3, 0.4]), TWO)
    assert figures["cost_to_match"] == np.inf and figures["cpt80"] == np.inf
    assert figures["apgr"] == pytest.approx(
        (((0.2 + 0.3) / 2 * 0.5 + (0.3 + 0.4) / 2 * 1.5 + 0.4 * 1) / 3 - 0.2) / 0.5
    )


def test_gap_figures_are_undefined_when_strong_is_not_better_than_weak() -> None:
    reference = Reference(cost=np.array([1.0, 4.0]), score=np.array([0.5, 0.4]), weak=0, strong=1)
    figures = curve_metrics(np.array([2.0]), np.array([0.6]), reference)
    assert np.isnan(figures["apgr"]) and np.isnan(figures["cpt50"])
    assert np.isfinite(figures["aiq"])


def bootstrap_line(n_questions: int, seed: int) -> tuple[Bootstrap, np.ndarray, np.ndarray]:
    """A random-mix curve over `n_questions` questions whose experts score 0/1 at random."""
    rng = np.random.default_rng(seed)
    single_score = np.stack([rng.random(n_questions) < 0.3, rng.random(n_questions) < 0.7]).astype(
        float
    )
    single_cost = np.stack([np.full(n_questions, 1.0), np.full(n_questions, 4.0)])
    draws = rng.random(n_questions)
    p = np.linspace(0, 1, 11)[:, None]
    pick = draws[None] < p  # [P, Q]
    score = np.where(pick, single_score[1], single_score[0])[None]
    cost = np.where(pick, single_cost[1], single_cost[0])[None]
    return Bootstrap(single_score, single_cost, weak=0, strong=1, n_boot=300), score, cost


def test_bootstrap_interval_covers_the_estimate_and_shrinks_with_more_questions() -> None:
    widths = {}
    for n in (50, 800):
        bootstrap, score, cost = bootstrap_line(n, seed=1)
        figures = bootstrap.figures(score, cost)
        for name in ("aiq", "apgr", "best_within"):
            figure = figures[name]
            assert figure.low <= figure.mean <= figure.high, (n, name, figure)
        widths[n] = {name: figures[name].high - figures[name].low for name in ("aiq", "apgr")}
    assert widths[800]["aiq"] < widths[50]["aiq"] / 2
    assert widths[800]["apgr"] < widths[50]["apgr"] / 2


def test_seed_spread_and_shared_resamples() -> None:
    bootstrap, score, cost = bootstrap_line(200, seed=2)
    twice = bootstrap.figures(np.concatenate([score, score]), np.concatenate([cost, cost]))
    once = bootstrap.figures(score, cost)
    assert twice["apgr"].seed_std == 0.0
    assert twice["apgr"].mean == pytest.approx(once["apgr"].mean)
    assert (twice["apgr"].low, twice["apgr"].high) == pytest.approx(
        (once["apgr"].low, once["apgr"].high)
    )
