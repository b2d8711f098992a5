"""`dersim cache info`: what a cache holds, and how good its experts and its oracles are."""

from __future__ import annotations

from typing import Any

import polars as pl

from dersim.cache.costs import COST_MODES, CostError, auto_cost_scale, per_call_costs
from dersim.cache.reader import Cache
from dersim.cache.routes import best_fixed_routes, expert_scores_by_step
from dersim.cache.sampling import sampling_summary, sampling_voting
from dersim.cache.schema import STATUS_OK, is_imported, is_sampled

ANSWER_QUANTILES = (
    0.25,
    0.5,
    0.75,
    0.9,
)  # where to put p0: the share of answers it calls good enough


def _calls(cache: Cache) -> pl.DataFrame:
    """The expert calls behind the cache: every transition of a built cache (failed calls too); for
    an imported one the transitions from root states, one per (question, model) cell (the onward
    transitions of a multi-call import replay the same answers), of which the answered ones are
    the calls."""
    if not is_imported(cache.manifest):
        return cache.transitions
    roots = cache.states.filter(pl.col("depth") == 0).select("state_id")
    return cache.transitions.join(roots, on="state_id", how="semi")


def cost_scales(cache: Cache) -> dict[str, float | None]:
    """Per cost mode, the `auto` cost scale of `dersim train` (the dearest expert's mean cost per
    call over the train questions' calls, in the mode's unit); None where the cache records no such
    cost."""
    ok = cache.transitions.filter(pl.col("status") == STATUS_OK)
    train_ids = cache.questions.filter(pl.col("split") == "train")["question_id"].implode()
    train_states = cache.states.select(
        "state_id", pl.col("question_id").is_in(train_ids).alias("train")
    )
    train_calls = (
        ok.join(train_states, on="state_id", how="left")["train"].fill_null(False).to_numpy()
    )
    params = [e.get("params_b") for e in cache.manifest["experts"]]
    scales: dict[str, float | None] = {}
    for mode in COST_MODES:
        try:
            costs = per_call_costs(
                mode,
                ok["expert_id"].to_numpy(),
                params,
                ok["prompt_tokens"].to_numpy(),
                ok["completion_tokens"].to_numpy(),
                ok["latency_s"].to_numpy(),
                ok["cost_usd"].to_numpy(),
                str(cache.path),
            )
            scales[mode] = auto_cost_scale(
                costs, ok["expert_id"].to_numpy(), len(params), train_calls, mode, str(cache.path)
            )
        except CostError:
            scales[mode] = None
    return scales


def _known_usage(manifest: dict[str, Any], expert: dict[str, Any]) -> dict[str, bool]:
    """Which per-call figures the cache really knows (else they are stored as 0): an import says
    "not in the source" for what its source lacked; a built cache knows latency and tokens, and
    US dollars when the expert has token prices."""
    if is_imported(manifest):
        settings = manifest.get("import", {})
        given = {
            key: not str(settings.get(key, "")).startswith("not in the source")
            for key in ("latency_s", "tokens", "cost_usd")
        }
    else:
        given = {
            "latency_s": True,
            "tokens": True,
            "cost_usd": bool(expert.get("usd_per_mtok_in") or expert.get("usd_per_mtok_out")),
        }
    return {
        "mean_latency_s": given["latency_s"],
        "mean_completion_tokens": given["tokens"],
        "mean_cost_usd": given["cost_usd"],
    }


def cache_summary(cache: Cache) -> dict[str, Any]:
    """Sizes, per-expert quality (first answers, and by step: see `expert_scores_by_step`) and
    cost, two oracles and the best fixed route per metric.

    `oracle_single_call`: per question the best expert's first answer, averaged (the paper's
    "oracle best single expert per question"); `oracle_any_state`: the best state any route of at
    most D calls reaches; `best_fixed_route`: the one expert sequence (of length <= D) with the best
    mean final score over all questions, with its parameter cost. `calls` counts the answers each
    expert really gave (see `_calls`); a per-call mean the cache does not know is None.

    On a sampled cache the first-answer means are over every sample (the expectation of one
    sampled call), `oracle_single_call` takes the best of all samples, `sampling` holds each
    sampled expert's `sampling_summary`, `sampling_voting` the vote over all experts' samples, and
    the route figures (by step, best fixed route), which
    need draws over children, are None.
    """
    sampled = is_sampled(cache.manifest)
    s, t, q = cache.states, cache.transitions, cache.questions
    metrics = cache.metric_columns
    names = cache.expert_names
    first = (
        t.join(q.select("root_state_id"), left_on="state_id", right_on="root_state_id")
        .filter(pl.col("status") == STATUS_OK)
        .join(s.select(["state_id", *metrics]), left_on="next_state_id", right_on="state_id")
    )
    per_expert = (
        first.group_by("expert_id")
        .agg([pl.col(m).mean() for m in metrics])
        .sort("expert_id")
        .to_dicts()
    )
    made = _calls(cache)
    answered = pl.col("status") == STATUS_OK
    calls = (
        made.group_by("expert_id")
        .agg(
            calls=answered.sum()
            if is_imported(cache.manifest)
            else pl.len(),  # a missing answer was no call
            failed=(pl.col("status") != STATUS_OK).sum(),
            mean_latency_s=pl.col("latency_s").mean(),
            mean_completion_tokens=pl.col("completion_tokens").mean(),
            mean_cost_usd=pl.col("cost_usd").mean(),
        )
        .sort("expert_id")
        .to_dicts()
    )
    by_id = {row["expert_id"]: row for row in calls}
    by_step = None if sampled else expert_scores_by_step(cache, metrics)
    experts = []
    for index, spec in enumerate(cache.manifest["experts"]):
        depth1 = next((row for row in per_expert if row["expert_id"] == index), {})
        usage = by_id.get(index, {})
        known = _known_usage(cache.manifest, spec)
        experts.append(
            {
                "name": names[index],
                "backend": spec.get("backend"),
                "params_b": spec.get("params_b"),
                "calls": usage.get("calls", 0),
                "failed": usage.get("failed", 0),
                **{
                    key: usage.get(key) if known[key] else None
                    for key in ("mean_latency_s", "mean_completion_tokens", "mean_cost_usd")
                },
                "depth1": {m: depth1.get(m) for m in metrics},
                "by_step": None if by_step is None else {m: by_step[m][index] for m in metrics},
            }
        )
    oracle_single = (
        first.group_by("state_id")
        .agg([pl.col(m).max() for m in metrics])
        .select([pl.col(m).mean() for m in metrics])
        .to_dicts()
    )
    oracle_any = (
        s.group_by("question_id")
        .agg([pl.col(m).max() for m in metrics])
        .select([pl.col(m).mean() for m in metrics])
        .to_dicts()
    )
    depth_counts = s.group_by("depth").len().sort("depth")
    answers = s.filter(pl.col("depth") > 0)
    quantiles = {m: {f"{q:g}": answers[m].quantile(q) for q in ANSWER_QUANTILES} for m in metrics}
    return {
        "path": str(cache.path),
        "dataset": cache.manifest.get("dataset", {}).get("id"),
        "questions": dict(q.group_by("split").len().sort("split").iter_rows()),
        "experts": experts,
        "depth": cache.depth,
        "states": s.height,
        "states_per_depth": {int(d): int(n) for d, n in depth_counts.iter_rows()},
        "transitions": t.height,
        "failed_calls": int(made.filter(pl.col("status") != STATUS_OK).height),
        "metrics": metrics,
        "answer_score_quantiles": quantiles,
        "oracle_single_call": oracle_single[0] if oracle_single else {},
        "oracle_any_state": oracle_any[0] if oracle_any else {},
        "best_fixed_route": {
            m: None if sampled else next(iter(best_fixed_routes(cache, m)), None) for m in metrics
        },
        "sampling": sampling_summary(cache) if sampled else None,
        "sampling_voting": sampling_voting(cache) if sampled else None,
        "embedding": cache.manifest.get("embedding", {}),
        "cost_scale": cost_scales(cache),
    }
