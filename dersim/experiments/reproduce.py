"""Assembling the paper's tables from the trained grids and the fixed rules, on the test split."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
from rich.console import Console

from dersim.cache.files import read_manifest
from dersim.cache.routes import (
    Outcome,
    RouteTables,
    best_fixed_route,
    fixed_route,
    reachable_states,
)
from dersim.env.tables import EnvSpec, load_tables, split_roots
from dersim.errors import DersimError
from dersim.experiments import paper
from dersim.experiments.grids import TrainedGrid, train_grid
from dersim.experiments.outcomes import (
    CostTables,
    cost_tables,
    metric_scores,
    replay_costed,
    setting_outcome,
)
from dersim.experiments.plan import FULL_INFORMATION, Plan, Setting, make_plan, quantile_p0
from dersim.experiments.tables import Row, Table
from dersim.routers.data import default_cost_mode, load_router_data
from dersim.routers.voting import VotingRouter
from dersim.trainer.policy import LINEAR
from dersim.trainer.selection import best_candidate

REPORTED = (
    "bertscore_f1",
    "accuracy",
    "exact_match",
    "rouge_l",
    "token_f1",
)  # in this order, when cached


@dataclass
class Reproduction:
    plan: Plan
    tables: list[Table]
    scores: dict[str, np.ndarray]
    expert_names: tuple[str, ...]
    n_test: int
    seconds: dict[str, float] = field(default_factory=dict)


def resolve_plan(
    cache: Path,
    seeds: int,
    steps: int,
    compare: dict[str, Path],
    p0: float | None,
    metric: str | None,
    cost_mode: str | None,
    verify: bool,
) -> Plan:
    """Defaults from the cache: BERTScore F1 when cached, the cache's cost unit, p0 at the 75th
    percentile of the train answer scores; the compared caches must hold the same questions."""
    manifest = read_manifest(cache)
    tables = load_tables(
        cache,
        EnvSpec(
            metric=metric, cost_mode=cost_mode or default_cost_mode(manifest), terminator="none"
        ),
        verify=verify,
    )
    answers = tables.depth > 0
    train_states = np.isin(
        np.arange(len(tables.depth)),
        reachable_states(tables.roots, tables.next_state, tables.max_depth),
    )
    chosen_p0 = quantile_p0(tables.score[answers & train_states]) if p0 is None else p0
    reference_ids = set(split_roots(tables, cache, "all")[1])
    for name, path in compare.items():
        other = load_tables(
            path,
            EnvSpec(metric=tables.metric, cost_mode=tables.spec.cost_mode, terminator="none"),
            verify=verify,
        )
        if (
            set(split_roots(other, path, "all")[1]) != reference_ids
            or other.max_depth != tables.max_depth
        ):
            raise DersimError(
                f"--compare-cache {name}={path}: it must hold the same questions at the same depth "
                f"as {cache}"
            )
    return make_plan(
        cache,
        tables.metric,
        chosen_p0,
        tables.spec.cost_mode,
        tables.max_depth,
        seeds,
        steps,
        compare,
    )


def agent_parameters(trained: TrainedGrid, index: int) -> int:
    """The size of policy `index` of the grid: its network, or its linear action-value heads (fqi
    with ridge)."""
    kept = trained.trainer.kept_params(trained.state)
    acting = kept.linear if int(kept.head[index]) == LINEAR else kept.network
    return int(sum(x[index].size for x in jax.tree.leaves(acting)))


def random_routes(calls: np.ndarray, n_experts: int, depth: int) -> np.ndarray:
    """Per seed k and question q, a route of calls[k, q] uniformly random experts (seeded by k)."""
    routes = np.full((*calls.shape, depth), -1, dtype=np.int64)
    for k in range(calls.shape[0]):
        draws = np.random.default_rng(k).integers(0, n_experts, size=(calls.shape[1], depth))
        routes[k] = np.where(np.arange(depth)[None, :] < calls[k][:, None], draws, -1)
    return routes


def all_experts(roots: np.ndarray, costs: CostTables, pick: np.ndarray) -> Outcome:
    """Every expert answers each question from scratch; the answer of expert `pick[q]` is kept; all
    N calls are paid."""
    every = fixed_route(tuple(range(costs.next_state.shape[1])), len(roots))[None]
    return replay_costed(every, roots, costs, keep=pick)


def run_reproduction(plan: Plan, out: Path, console: Console, verify: bool = True) -> Reproduction:
    seconds: dict[str, float] = {}
    trained = {}
    for grid in plan.grids:
        trained[grid.name] = train_grid(plan, grid, out, console, verify)
        seconds[f"train {grid.name}"] = trained[grid.name].seconds
    started = time.perf_counter()
    main = trained["main"]
    tables = main.trainer.tables
    metrics = [
        m
        for m in dict.fromkeys((plan.metric, *REPORTED))
        if m in read_manifest(plan.cache)["metric_columns"]
    ]
    scores = metric_scores(plan.cache, metrics)
    score = scores[plan.metric]
    test = split_roots(tables, plan.cache, "test")[0]
    val_roots = split_roots(tables, plan.cache, "val")[0]

    views: dict[str, CostTables] = {
        name: cost_tables(t.trainer.tables, t.grid.cache, t.trainer.spec)
        for name, t in trained.items()
    }
    outcome: dict[str, Outcome] = {}
    on_val: dict[
        str, tuple[float, float]
    ] = {}  # main-grid setting -> (mean val score, mean val cost)
    for name, t in trained.items():
        grid_score = (
            metric_scores(t.grid.cache, [plan.metric])[plan.metric]
            if t.grid.cache != plan.cache
            else score
        )
        for setting in t.grid.settings:
            policies = plan.setting_policies(t.grid, setting)
            outcome[setting.key] = setting_outcome(t, policies, test, views[name])
            if name == "main":
                val = setting_outcome(t, policies, val_roots, views[name])
                on_val[setting.key] = (
                    float(grid_score[val.final_state].mean()),
                    float(val.cost.mean()),
                )
    seconds["evaluate policies"] = time.perf_counter() - started
    started = time.perf_counter()
    chosen = choose_setting(trained["main"], on_val, plan.depth)
    full_information = choose_setting(trained["main"], on_val, plan.depth, FULL_INFORMATION)
    rules = rule_outcomes(plan, views["main"], test, score, outcome, chosen)
    seconds["evaluate rules"] = time.perf_counter() - started
    built = build_tables(
        plan, trained, outcome, chosen, full_information, rules, metrics, tables.expert_names, score
    )
    return Reproduction(plan, built, scores, tables.expert_names, len(test), seconds)


def choose_setting(
    main: TrainedGrid,
    on_val: dict[str, tuple[float, float]],
    depth: int,
    algos: tuple[str, ...] | None = None,
) -> str:
    """The deployable setting of the main grid (T_max = D; trained by one of `algos`, default any)
    with the best mean val score over its seeds, the lower val cost breaking ties: never chosen on
    test."""
    deployable = [
        s.key
        for s in main.grid.settings
        if not s.uses_reference and s.t_max == depth and (algos is None or s.algo in algos)
    ]
    return best_candidate(
        deployable, [on_val[k][0] for k in deployable], [on_val[k][1] for k in deployable]
    )


@dataclass(frozen=True)
class Rules:
    """The untrained rows' outcomes on the test questions."""

    single: list[Outcome]  # per expert
    best_route: tuple[int, ...]  # the best fixed route, chosen on the train questions
    best_fixed: Outcome  # that route
    round_robin: Outcome
    random: dict[
        str, Outcome
    ]  # DER setting key -> random routing with that setting's route lengths
    all_reference: Outcome  # every expert answers, the reference picks
    all_voting: Outcome  # every expert answers, agreement picks


def rule_outcomes(
    plan: Plan,
    costs: CostTables,
    test: np.ndarray,
    score: np.ndarray,
    outcome: dict[str, Outcome],
    chosen: str,
) -> Rules:
    """The untrained rows: single experts, the best fixed route and round-robin, random routing with
    each DER's route lengths, and the two all-expert ensembles (pick by the reference; by
    agreement)."""
    n, depth = costs.next_state.shape[1], plan.depth
    route_tables = RouteTables(costs.next_state, cost=costs.cost, score=score)
    data = load_router_data(plan.cache, plan.metric, plan.cost_mode, verify=False)
    train_roots = data.split_roots("train")

    def fixed(route: tuple[int, ...]) -> Outcome:
        return replay_costed(fixed_route(route, len(test))[None], test, costs)

    best = best_fixed_route(route_tables, train_roots, depth, n)
    answers = costs.next_state[test]
    voting = VotingRouter().fit(data.train_data("fit", plan.p0)).route(data.questions("test"), n)
    return Rules(
        single=[fixed((e,)) for e in range(n)],
        best_route=best,
        best_fixed=fixed(best),
        round_robin=fixed(tuple(i % n for i in range(depth))),
        random={
            key: replay_costed(random_routes(outcome[key].calls, n, depth), test, costs)
            for key in dict.fromkeys((der_key(plan, "paper"), der_key(plan, "deployable"), chosen))
        },
        all_reference=all_experts(test, costs, score[answers].argmax(axis=1)),
        all_voting=all_experts(test, costs, voting.calls[np.arange(len(test)), voting.keep]),
    )


def der_key(plan: Plan, family: str, grid: str = "main", t_max: int | None = None) -> str:
    """The key of a DER setting: the paper's (oracle terminator) or the deployable one (learned
    STOP)."""
    return Setting(
        family, "oracle" if family == "paper" else "learned", t_max or plan.depth, grid
    ).key


def build_tables(
    plan: Plan,
    trained: dict[str, TrainedGrid],
    outcome: dict[str, Outcome],
    chosen: str,
    full_information: str,
    rules: Rules,
    metrics: list[str],
    names: tuple[str, ...],
    score: np.ndarray,
) -> list[Table]:
    """Every table of the paper that a cache can replay, each row with the row it is compared
    with."""
    depth, shown = plan.depth, metrics[:2]
    settings = {s.key: s for t in trained.values() for s in t.grid.settings}
    params = {
        s.key: agent_parameters(t, plan.setting_policies(t.grid, s)[0])
        for t in trained.values()
        for s in t.grid.settings
    }

    def trained_row(
        key: str, label: str | None = None, vs: str | None = None, note: str = ""
    ) -> Row:
        setting = settings[key]
        return Row(
            label or setting.label,
            outcome[key],
            setting.uses_reference,
            trained=True,
            vs=vs,
            paper=note,
            agent_params=params[key],
            calls_per_step=2 if setting.grid.startswith("pairs-") else 1,
        )

    def der(family: str, grid: str = "main", t_max: int = depth) -> str:
        return der_key(plan, family, grid, t_max)

    der_label = (
        f"DER, chosen on val ({settings[chosen].family}, {settings[chosen].algo}: "
        f"{settings[chosen].terminator} terminator)"
    )
    paper_label = "DER, the paper's setting (PPO, oracle terminator)"
    best_single = int(np.argmax([score[single.final_state].mean() for single in rules.single]))
    main_rows = [
        trained_row(chosen, der_label),
        trained_row(der("paper"), paper_label, vs=der_label),
    ]
    for key, label in (
        (der("deployable"), "DER deployable, the paper's algorithm (PPO)"),
        (
            full_information,
            "DER deployable, full information (the better of fqi and exact-pg on val)",
        ),
    ):
        if key != chosen:
            main_rows.append(trained_row(key, f"{label}: {settings[key].label}", vs=der_label))
    main_rows += [
        Row(
            f"single: {name}",
            rules.single[e],
            False,
            vs=der_label,
            paper=paper.MAIN["single"] if e == best_single else "",
        )
        for e, name in enumerate(names)
    ]
    main_rows += [
        Row(
            "best fixed route (train): " + " > ".join(names[e] for e in rules.best_route),
            rules.best_fixed,
            False,
            vs=der_label,
        ),
        Row(f"round-robin x{depth}", rules.round_robin, False, vs=der_label),
        Row(
            "random routing (the chosen DER's route lengths)",
            rules.random[chosen],
            False,
            vs=der_label,
            paper=paper.MAIN["random"],
        ),
        Row(
            "all experts, the reference picks the answer",
            rules.all_reference,
            True,
            vs=der_label,
            paper=paper.MAIN["all-reference"],
            calls_per_step=len(names),
        ),
        Row(
            "all experts, agreement picks the answer (voting)",
            rules.all_voting,
            False,
            vs=der_label,
            paper=paper.MAIN["voting"],
            calls_per_step=len(names),
        ),
    ]
    tables = [
        Table(
            "main",
            "Main table: DER beside single experts and all-expert ensembles",
            main_rows,
            metrics,
            note="The paper: DER 75.00 BERTScore at 17B inference parameters per question.",
        )
    ]

    paper_full, deploy_full = der("paper"), der("deployable")
    tmax_rows = [
        trained_row(der("paper", t_max=t), vs=None if t == depth else settings[paper_full].label)
        for t in range(1, depth + 1)
    ]
    tmax_rows.append(
        trained_row(
            Setting("paper", "none", depth, "main").key,
            f"DER paper: w/o terminator (none), T_max {depth}",
            vs=settings[paper_full].label,
            note=paper.NO_TERMINATOR,
        )
    )
    tmax_rows += [
        trained_row(
            der("deployable", t_max=t), vs=None if t == depth else settings[deploy_full].label
        )
        for t in range(1, depth + 1)
    ]
    tables.append(
        Table("t_max", "T_max and the terminator's absence", tmax_rows, shown, note=paper.T_MAX)
    )

    term_rows = [trained_row(paper_full)]
    term_rows += [
        trained_row(
            Setting("paper", t, depth, "main").key,
            vs=settings[paper_full].label,
            note=paper.NO_TERMINATOR if t == "none" else "",
        )
        for t in ("learned", "judge", "none")
    ]
    term_rows.append(trained_row(deploy_full))
    term_rows += [
        trained_row(Setting("deployable", t, depth, "main").key, vs=settings[deploy_full].label)
        for t in ("judge", "none", "oracle")
    ]
    tables.append(
        Table(
            "terminator",
            "Terminators (oracle reads the reference; learned, judge and none do not)",
            term_rows,
            shown,
        )
    )

    ktp_rows = []
    for family in ("paper", "deployable"):
        with_label = settings[der(family)].label + ", with transfer (KTP)"
        ktp_rows.append(trained_row(der(family), with_label))
        ktp_rows.append(
            trained_row(
                der(family, "no-transfer"),
                settings[der(family)].label + ", without transfer",
                vs=with_label,
                note=paper.KTP if family == "paper" else "",
            )
        )
        for grid in (g.name for g in plan.grids if g.name.startswith("compare-")):
            ktp_rows.append(
                trained_row(
                    der(family, grid),
                    settings[der(family)].label + f", {grid.removeprefix('compare-')} cache",
                    vs=with_label,
                )
            )
    tables.append(
        Table(
            "ktp",
            "Knowledge transfer: with the KTP against answering from scratch",
            ktp_rows,
            shown,
        )
    )

    routing_rows = []
    for family in ("paper", "deployable"):
        routing_rows.append(trained_row(der(family)))
        routing_rows.append(
            Row(
                f"random routing, the same route lengths as DER {family}",
                rules.random[der(family)],
                settings[der(family)].uses_reference,
                vs=settings[der(family)].label,
                paper=paper.RANDOM if family == "paper" else "",
            )
        )
    tables.append(
        Table(
            "routing",
            "Learned routing against random routing with the same route lengths",
            routing_rows,
            shown,
        )
    )

    pair_rows = []
    for family in ("paper", "deployable"):
        one = settings[der(family)].label + ", one expert per step"
        pair_rows.append(trained_row(der(family), one))
        pair_rows.append(
            trained_row(
                der(family, "pairs-reference"),
                settings[der(family)].label + ", two per step, the reference keeps the better",
                vs=one,
                note=paper.PAIRS if family == "paper" else "",
            )
        )
        pair_rows.append(
            trained_row(
                der(family, "pairs-judge"),
                settings[der(family)].label + ", two per step, the judge keeps the better",
                vs=one,
            )
        )
    tables.append(
        Table(
            "experts_per_step",
            "One expert per step against two (both calls paid)",
            pair_rows,
            shown,
        )
    )

    reward_rows = []
    for terminator in ("learned", "oracle"):
        paper_key = Setting("paper", terminator, depth, "main").key
        reward_rows.append(trained_row(paper_key))
        reward_rows.append(
            trained_row(
                Setting("deployable", terminator, depth, "main").key, vs=settings[paper_key].label
            )
        )
    tables.append(
        Table(
            "reward",
            "Reward: the paper's (every call paid its score) against the final answer's",
            reward_rows,
            shown,
            note="Not in the paper.",
        )
    )

    length_rows = [
        trained_row(
            key,
            settings[key].label
            + ("" if settings[key].grid == "main" else f" ({settings[key].grid})"),
        )
        for key in settings
    ]
    tables.append(
        Table(
            "route_lengths",
            "Route lengths: share of test questions by number of steps (a step calls "
            "one expert, or a pair in the pairs grids)",
            length_rows,
            shown,
            lengths=True,
        )
    )
    return tables
