"""The DER policies of a `dersim train` run as curves beside the routers.

Each policy is one (cost, score) point: its greedy episodes on the evaluated questions
(`GridTrainer.greedy`), replayed through the cache with knowledge transfer so that the cost is in
the table's cost mode whatever mode the run trained with. The policies of one seed form one curve
(e.g. an alpha sweep); seeds give the mean +- std, like any stochastic router. Deployable policies
(learned, judge or no terminator) make the `der` curve; policies that stop by the oracle read the
reference and make a separate, marked curve.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dersim.env import DEPLOYABLE_TERMINATORS
from dersim.evaluation.baselines import RouteTables, run_routes
from dersim.routers.base import RouterError
from dersim.routers.data import RouterData
from dersim.routers.evaluate import Curve


def der_curves(run_dir: Path, data: RouterData, split: str, verify: bool = True) -> list[Curve]:
    """`der` (deployable policies) and `der (oracle stop)` curves of the run, where it has such policies."""
    from dersim.trainer.run import GridTrainer

    started = time.perf_counter()
    trainer = GridTrainer.from_run(run_dir, data.cache, verify=verify)
    if trainer.tables.expert_names != data.expert_names:
        raise RouterError(f"{run_dir}: the run's experts differ from {data.cache}'s")
    roots = data.roots[split]
    result = trainer.greedy(trainer.kept_params(trainer.load()), trainer.env_params, roots)
    actions = np.asarray(result["actions"], dtype=np.int64)  # [P, Q, D]; STOP = N, -1 after the end
    calls = np.where((actions >= 0) & (actions < data.n_experts), actions, -1)
    tables = RouteTables(data.world.next_state, data.score, data.world.cost)
    outcomes = [run_routes(policy_calls, roots, tables) for policy_calls in calls]
    for outcome, final in zip(outcomes, result["final_state"], strict=True):
        if not np.array_equal(outcome.final_state, np.asarray(final)):
            raise RouterError(f"{run_dir}: a policy's replayed route does not end where its episode did")
    seconds = time.perf_counter() - started
    curves = []
    for name, deployable in (("der", True), ("der (oracle stop)", False)):
        chosen = [i for i, p in enumerate(trainer.policies)
                  if (p["terminator"] in DEPLOYABLE_TERMINATORS) == deployable]
        if chosen:
            curves.append(seed_curve(name, [trainer.policies[i] for i in chosen], [outcomes[i] for i in chosen],
                                     data.score, not deployable, seconds))
    return curves


def seed_curve(name: str, policies: list[dict], outcomes: list, score: np.ndarray, uses_reference: bool,
               seconds: float) -> Curve:
    """One curve per seed (its policies are the points, in run order); a seed with fewer policies
    repeats its last point, which changes no curve."""
    seeds = sorted({p["seed"] for p in policies})
    groups = [[i for i, p in enumerate(policies) if p["seed"] == s] for s in seeds]
    width = max(len(g) for g in groups)
    groups = [g + [g[-1]] * (width - len(g)) for g in groups]

    def stack(values: np.ndarray) -> np.ndarray:  # [policies, Q] -> [seeds, points, Q]
        return np.stack([values[g] for g in groups]).astype(np.float64)

    return Curve(name=name, kind="der", uses_reference=uses_reference, stochastic=len(seeds) > 1,
                 settings=np.arange(width, dtype=np.float64),
                 score=stack(np.stack([score[o.final_state] for o in outcomes])),
                 cost=stack(np.stack([o.cost for o in outcomes])), calls=stack(np.stack([o.calls for o in outcomes])),
                 hyperparameters={"policies": len(policies), "seeds": len(seeds)}, seconds=seconds)
