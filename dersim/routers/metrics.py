"""The field's metrics of a cost-quality curve, computed from its points (mean cost, mean score).

Vocabulary (RouterBench, arXiv 2403.12031; RouteLLM, arXiv 2406.18665), generalised to N experts:
- weak w = the cheapest expert and strong b = the best single expert, both chosen on the train
  split; (c_w, s_w) and (c_b, s_b) are their mean cost and score on the evaluated questions.
- Every curve is anchored at the weak expert's point: any router can send a random share of its
  questions to the weak expert, so a budget below the router's cheapest setting is still met.
- The curve C(c) is the piecewise-linear interpolation of the anchored points sorted by cost
  (mixing two neighbouring settings at random realises every cost between them), flat beyond
  the dearest point. The hull H(c) is the non-decreasing concave envelope of the same points:
  the best score any mix of settings reaches at mean cost <= c.

    AIQ          = 1/(c_hi - c_lo) * integral_{c_lo}^{c_hi} H(c) dc, with c_lo = c_w and c_hi the
                   dearest single expert's cost (RouterBench's average quality over the cost range)
    PGR(c)       = (C(c) - s_w) / (s_b - s_w)                      (performance gap recovered)
    APGR         = 1/(c_b - c_w) * integral_{c_w}^{c_b} PGR(c) dc   (RouteLLM; 0.5 for a random mix)
    CPT(p)       = 100 * (c_p - c_w) / (c_b - c_w), c_p the least cost with PGR(c) >= p: the share
    of
                   the weak-to-strong cost gap needed to recover p of the performance gap
                   (RouteLLM's "% calls to the strong model" when two experts have fixed costs); inf
                   if never
    best_within  = max_{c <= c_b} C(c): the best score at or below the strong expert's cost
    cost_to_match = the least c with C(c) >= s_b (raw unit); inf if never

APGR and CPT are undefined (nan) when the strong expert is not dearer and better than the weak one
on the evaluated questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("aiq", "apgr", "cpt50", "cpt80", "best_within", "cost_to_match")
TOLERANCE = (
    1e-9  # a score this close to a target reaches it (means summed in another order differ by ulps)
)


@dataclass(frozen=True)
class Reference:
    """The single experts on the evaluated questions, and which are weak and strong (chosen on
    train)."""

    cost: np.ndarray  # float [N], mean cost of each expert's first call
    score: np.ndarray  # float [N]
    weak: int
    strong: int


def curve_points(cost: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The curve's vertices: unique costs ascending, the mean score of the points at each cost."""
    xs, inverse = np.unique(np.asarray(cost, dtype=np.float64), return_inverse=True)
    ys = np.bincount(inverse, weights=np.asarray(score, dtype=np.float64)) / np.bincount(inverse)
    return xs, ys


def nondecreasing_hull(cost: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing concave envelope: the upper hull from the cheapest point (the
    best one at that cost) up to the best point; flat after it (np.interp extends it flat)."""
    order = np.lexsort((-np.asarray(score), np.asarray(cost)))
    xs, ys = (
        np.asarray(cost, np.float64)[order].tolist(),
        np.asarray(score, np.float64)[order].tolist(),
    )
    peak = int(np.argmax(ys))  # the first of the best points (cheapest among equals)
    hull: list[tuple[float, float]] = []
    for x, y in zip(xs[: peak + 1], ys[: peak + 1], strict=True):
        if hull and x == hull[-1][0]:
            continue  # the same cost, not better (sorted best first)
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (
                x - x1
            ) < 0:  # the last vertex stays above the chord
                break
            hull.pop()
        hull.append((x, y))
    vertices = np.array(hull)
    return vertices[:, 0], vertices[:, 1]


def integral(xs: np.ndarray, ys: np.ndarray, low: float, high: float) -> float:
    """Exact integral over [low, high] of the piecewise-linear np.interp(c, xs, ys)."""
    inside = xs[(xs > low) & (xs < high)]
    breaks = np.concatenate([[low], inside, [high]])
    values = np.interp(breaks, xs, ys)
    return float(np.sum((values[1:] + values[:-1]) * np.diff(breaks)) / 2)


def first_reach(xs: np.ndarray, ys: np.ndarray, target: float) -> float:
    """The least cost at which the curve np.interp(c, xs, ys) reaches `target` (inf if never)."""
    reached = np.flatnonzero(ys >= target - TOLERANCE)
    if len(reached) == 0:
        return float("inf")
    j = int(reached[0])
    if j == 0:
        return float(xs[0])
    share = min(max((target - ys[j - 1]) / (ys[j] - ys[j - 1]), 0.0), 1.0)
    return float(xs[j - 1] + share * (xs[j] - xs[j - 1]))


def curve_metrics(cost: np.ndarray, score: np.ndarray, reference: Reference) -> dict[str, float]:
    """Every metric of METRICS for the curve with points (cost[i], score[i])."""
    c_w, s_w = float(reference.cost[reference.weak]), float(reference.score[reference.weak])
    c_b, s_b = float(reference.cost[reference.strong]), float(reference.score[reference.strong])
    cost = np.append(np.asarray(cost, np.float64), c_w)
    score = np.append(np.asarray(score, np.float64), s_w)
    xs, ys = curve_points(cost, score)
    hx, hy = nondecreasing_hull(cost, score)
    c_hi = float(reference.cost.max())
    out = {"aiq": integral(hx, hy, c_w, c_hi) / (c_hi - c_w) if c_hi > c_w else float("nan")}
    defined = c_b > c_w and s_b > s_w
    if defined:
        out["apgr"] = (integral(xs, ys, c_w, c_b) / (c_b - c_w) - s_w) / (s_b - s_w)
        for p in (50, 80):
            reach = first_reach(xs, ys, s_w + p / 100 * (s_b - s_w))
            out[f"cpt{p}"] = 100 * (reach - c_w) / (c_b - c_w)
    else:
        out.update(apgr=float("nan"), cpt50=float("nan"), cpt80=float("nan"))
    within = ys[xs <= c_b]
    out["best_within"] = (
        float(max(within.max(initial=-np.inf), np.interp(c_b, xs, ys)))
        if xs[0] <= c_b
        else float("nan")
    )
    out["cost_to_match"] = first_reach(xs, ys, s_b)
    return out
