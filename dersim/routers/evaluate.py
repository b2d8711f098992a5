"""Routers on one cache: choose hyperparameters on val, refit on train + val, sweep on the evaluated
split, replay every route through the cache, and measure the curves (`metrics`, `estimate`).

Per router: every hyperparameter combination is fitted on train (the cache's train questions minus
val) and swept on val with seed 0; the one with the best val AIQ (the first among ties) is refitted
on train + val, once per seed for stochastic routers, and swept on the evaluated split. Weak and
strong (the cheapest and the best single expert) are chosen on the same train questions the router
is fitted on. The evaluated split is never used to choose anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from dersim.routers.base import Questions, Router, RouterOptions, TrainData
from dersim.routers.data import RouterData
from dersim.routers.estimate import Bootstrap, Figure
from dersim.routers.metrics import Reference, curve_metrics
from dersim.routers.random_routing import weak_and_strong
from dersim.routers.registry import CLASSES, make


@dataclass
class Curve:
    """A router's points on the evaluated questions: per seed and sweep value, per question."""

    name: str
    kind: str  # router, reference or der
    uses_reference: bool
    stochastic: bool
    settings: np.ndarray  # [P], the swept values
    score: np.ndarray  # [R, P, Q]
    cost: np.ndarray  # [R, P, Q], raw unit
    calls: np.ndarray  # [R, P, Q]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    selection: list[dict[str, Any]] = field(default_factory=list)  # every candidate's val AIQ
    seconds: float = 0.0
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass
class Comparison:
    """Every router's curve and figures on one split, with the single experts they are measured
    by."""

    curves: list[Curve]
    skipped: dict[str, str]  # router -> why it did not run
    split: str
    n_questions: int
    metric: str
    cost_unit: str
    expert_names: tuple[str, ...]
    weak: int
    strong: int
    single_score: np.ndarray  # [N, Q]
    single_cost: np.ndarray  # [N, Q]
    seeds: int
    n_boot: int
    p0: float
    bootstrap_seconds: float = 0.0


def sweep_outcomes(
    router: Router, questions: Questions, data: RouterData
) -> tuple[np.ndarray, ...]:
    """(score [P, Q], cost [P, Q], calls [P, Q]) of the router's routes at every grid value."""
    outcomes = [routes.replay(questions.roots, data.world) for routes in router.sweep(questions)]
    return (
        np.stack([data.score[o.final_state] for o in outcomes]).astype(np.float64),
        np.stack([o.cost for o in outcomes]),
        np.stack([o.calls for o in outcomes]),
    )


def reference_on(data: RouterData, roots: np.ndarray, train: TrainData) -> Reference:
    """The single experts' mean cost and score on `roots`, with weak and strong chosen on
    `train`."""
    score, cost = data.first_calls(roots)
    return Reference(cost.mean(axis=0), score.mean(axis=0), *weak_and_strong(train))


def choose(
    name: str, data: RouterData, options: RouterOptions
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The hyperparameters with the best val AIQ, and every candidate's val AIQ."""
    train = data.train_data("train", options.p0)
    options_list = CLASSES[name].candidates(train, data.depth)
    if len(options_list) == 1:
        return options_list[0], []
    val = data.questions("val")
    reference = reference_on(data, val.roots, train)
    selection = []
    for hyperparameters in options_list:
        router = make(name, data, options, 0, hyperparameters).fit(train)
        score, cost, _ = sweep_outcomes(router, val, data)
        aiq = curve_metrics(cost.mean(axis=1), score.mean(axis=1), reference)["aiq"]
        selection.append({**hyperparameters, "val_aiq": aiq})
    best = max(
        range(len(selection)),
        key=lambda i: (np.nan_to_num(selection[i]["val_aiq"], nan=-np.inf), -i),
    )
    return options_list[best], selection


def run_router(
    name: str, data: RouterData, split: str, options: RouterOptions, seeds: int
) -> Curve:
    """Choose, refit and sweep one router; its curve on `split` (figures are added later)."""
    started = time.perf_counter()
    hyperparameters, selection = choose(name, data, options)
    fit = data.train_data("fit", options.p0)
    questions = data.questions(split)
    first = make(name, data, options, 0, hyperparameters)
    runs = [first] + [
        make(name, data, options, s, hyperparameters)
        for s in range(1, seeds if first.stochastic else 1)
    ]
    swept = [sweep_outcomes(router.fit(fit), questions, data) for router in runs]
    score, cost, calls = (np.stack(parts) for parts in zip(*swept, strict=True))
    return Curve(
        name=name,
        kind="reference" if name in ("oracle", "best-single") else "router",
        uses_reference=first.uses_reference,
        stochastic=first.stochastic,
        settings=first.grid(),
        score=score,
        cost=cost,
        calls=calls,
        hyperparameters=hyperparameters,
        selection=selection,
        seconds=time.perf_counter() - started,
    )


def compare(
    data: RouterData,
    names: list[str],
    split: str = "test",
    options: RouterOptions | None = None,
    seeds: int = 3,
    n_boot: int = 1000,
    extra: list[Curve] | None = None,
    progress: Any = None,
) -> Comparison:
    """Every router of `names` (and the `extra` curves, e.g. DER policies) measured on `split`."""
    options = options or RouterOptions()
    fit = data.train_data("fit", options.p0)
    weak, strong = weak_and_strong(fit)
    roots = data.roots[split]
    single_score, single_cost = (m.T.astype(np.float64) for m in data.first_calls(roots))
    curves, skipped = [], {}
    with threadpool_limits(
        1
    ):  # small matrices: one BLAS thread is several times faster on a busy CPU
        for name in names:
            why = CLASSES[name].unavailable(data)
            if why:
                skipped[name] = why
                continue
            if progress:
                progress(name)
            curves.append(run_router(name, data, split, options, seeds))
    curves += extra or []
    started = time.perf_counter()
    bootstrap = Bootstrap(single_score, single_cost, weak, strong, n_boot=n_boot)
    for curve in curves:
        curve.figures = bootstrap.figures(curve.score, curve.cost)
    return Comparison(
        curves=curves,
        skipped=skipped,
        split=split,
        n_questions=len(roots),
        metric=data.metric,
        cost_unit=data.cost_unit,
        expert_names=data.expert_names,
        weak=weak,
        strong=strong,
        single_score=single_score,
        single_cost=single_cost,
        seeds=seeds,
        n_boot=n_boot,
        p0=fit.p0,
        bootstrap_seconds=time.perf_counter() - started,
    )
