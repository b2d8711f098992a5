"""The DER policies of a `dersim train` run as curves beside the routers: one curve per algorithm.

Each policy is one (cost, score) point: its greedy episodes on the evaluated questions
(`GridTrainer.greedy`), replayed through the cache with knowledge transfer so that the cost is in
the table's cost mode whatever mode the run trained with. Policies that differ only in alpha form
a curve (one per seed: the mean +- std over seeds, like any stochastic router). Where an algorithm
was trained with several other settings (fqi's l2, T_max, the learning rate, ...), they are its
hyperparameters, and the setting whose curve has the best AIQ on the run's val questions is
reported, exactly as every router's hyperparameters are chosen. Deployable policies (learned,
judge or no terminator) make the `der: <algo>` curves; policies that stop by the oracle read the
reference and make separate, marked `der (oracle stop): <algo>` curves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dersim.cache.routes import RouteTables, policy_routes, replay
from dersim.env import DEPLOYABLE_TERMINATORS
from dersim.routers.base import RouterError
from dersim.routers.data import RouterData
from dersim.routers.evaluate import Curve, reference_on
from dersim.routers.metrics import curve_metrics
from dersim.trainer.algorithms import ALGOS

NOT_HYPERPARAMETERS = ("alpha", "seed", "algo")  # alpha sweeps the curve; seeds give its spread


def der_curves(
    run_dir: Path, data: RouterData, split: str, verify: bool = True, suffix: str = ""
) -> list[Curve]:
    """The run's `der: <algo>` curves (and `der (oracle stop): <algo>`), hyperparameters chosen on
    val; `suffix` names the run where several are compared."""
    from dersim.trainer.run import GridTrainer

    started = time.perf_counter()
    trainer = GridTrainer.from_run(run_dir, data.cache, verify=verify)
    if trainer.tables.expert_names != data.expert_names:
        raise RouterError(f"{run_dir}: the run's experts differ from {data.cache}'s")
    params = trainer.kept_params(trainer.load())
    val_roots = trainer.val_roots if trainer.val_roots is not None else trainer.tables.roots
    evaluated = {
        name: policy_outcomes(trainer, params, roots, data)
        for name, roots in (("val", val_roots), (split, data.roots[split]))
    }
    reference = reference_on(data, val_roots, data.train_data("train", None))
    seconds = time.perf_counter() - started
    curves = []
    for deployable in (True, False):
        for algo in ALGOS:
            chosen = [
                i
                for i, p in enumerate(trainer.policies)
                if p["algo"] == algo and (p["terminator"] in DEPLOYABLE_TERMINATORS) == deployable
            ]
            if not chosen:
                continue
            settings, members = best_setting(
                [trainer.policies[i] for i in chosen], chosen, evaluated["val"], reference
            )
            name = (f"der: {algo}" if deployable else f"der (oracle stop): {algo}") + suffix
            curves.append(
                seed_curve(
                    name,
                    [trainer.policies[i] for i in members],
                    evaluated[split],
                    members,
                    not deployable,
                    seconds,
                    settings,
                )
            )
    return curves


def policy_outcomes(trainer, params, roots: np.ndarray, data: RouterData) -> dict[str, np.ndarray]:
    """Every policy's greedy episodes on `roots`, replayed through the cache: score, cost, calls [P,
    Q]."""
    result = trainer.greedy(params, trainer.env_params, roots)
    routes = policy_routes(result["actions"], data.n_experts)  # [P, Q, D]
    outcome = replay(routes, roots, RouteTables(data.world.next_state, cost=data.world.cost))
    if not np.array_equal(outcome.final_state, np.asarray(result["final_state"])):
        raise RouterError(
            f"{trainer.out}: a policy's replayed route does not end where its episode did"
        )
    return {
        "score": data.score[outcome.final_state].astype(np.float64),
        "cost": outcome.cost,
        "calls": outcome.calls,
    }


def setting_of(policy: dict[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in policy.items() if k not in NOT_HYPERPARAMETERS))


def best_setting(
    policies: list[dict[str, Any]], indices: list[int], val: dict[str, np.ndarray], reference
) -> tuple[dict[str, Any], list[int]]:
    """The hyperparameter setting (everything but alpha and the seed) whose curves have the best
    mean val AIQ over seeds (the first among ties), and the run indices of its policies."""
    settings = list(dict.fromkeys(setting_of(p) for p in policies))

    def val_aiq(setting: tuple) -> float:
        members = [
            (i, p) for i, p in zip(indices, policies, strict=True) if setting_of(p) == setting
        ]
        seeds = sorted({p["seed"] for _, p in members})
        aiqs = []
        for seed in seeds:
            points = [i for i, p in members if p["seed"] == seed]
            aiqs.append(
                curve_metrics(
                    val["cost"][points].mean(axis=1), val["score"][points].mean(axis=1), reference
                )["aiq"]
            )
        return float(np.nanmean(aiqs)) if not np.isnan(aiqs).all() else -np.inf

    best = (
        max(settings, key=lambda s: (val_aiq(s), -settings.index(s)))
        if len(settings) > 1
        else settings[0]
    )
    members = [i for i, p in zip(indices, policies, strict=True) if setting_of(p) == best]
    varied = {k for s in settings for k, _ in s if len({dict(x)[k] for x in settings}) > 1}
    return {k: v for k, v in best if k in varied}, members


def seed_curve(
    name: str,
    policies: list[dict],
    outcomes: dict[str, np.ndarray],
    indices: list[int],
    uses_reference: bool,
    seconds: float,
    settings: dict[str, Any],
) -> Curve:
    """One curve per seed (its policies are the points, in run order); a seed with fewer policies
    repeats its last point, which changes no curve."""
    seeds = sorted({p["seed"] for p in policies})
    groups = [[indices[j] for j, p in enumerate(policies) if p["seed"] == s] for s in seeds]
    width = max(len(g) for g in groups)
    groups = [g + [g[-1]] * (width - len(g)) for g in groups]

    def stack(values: np.ndarray) -> np.ndarray:  # [policies, Q] -> [seeds, points, Q]
        return np.stack([values[g] for g in groups]).astype(np.float64)

    return Curve(
        name=name,
        kind="der",
        uses_reference=uses_reference,
        stochastic=len(seeds) > 1,
        settings=np.arange(width, dtype=np.float64),
        score=stack(outcomes["score"]),
        cost=stack(outcomes["cost"]),
        calls=stack(outcomes["calls"]),
        hyperparameters={"policies": len(policies), "seeds": len(seeds), **settings},
        seconds=seconds,
    )
