"""What a call costs, in the unit the user chose, and the scale that makes a cost weight portable.

Cost modes (C of one call): `params` (the expert's size in billions of parameters, the paper's
choice), `tokens` (prompt + completion tokens of that call, in thousands), `latency` (that call's
seconds), `latency_norm` (that call's seconds over the expert's median latency; an expert whose
median is 0, as in imports without latencies, costs its raw latency) and `usd` (that call's US
dollars). Reports always show costs in these raw units.

The cost scale makes a weight alpha mean the same on every cache: with `auto`, costs are divided
by the mean per-call cost of the most expensive expert over the train split's calls, so alpha = 1
means "the dearest call costs as much as the whole [0, 1] score range". A number keeps that
divisor fixed (1 = the raw units, as the paper's alpha = 0.001 per billion parameters).
"""

from __future__ import annotations

import numpy as np

from dersim.errors import DersimError

COST_MODES = ("params", "tokens", "latency", "latency_norm", "usd")
COST_UNITS = {
    "params": "B params",
    "tokens": "k tokens",
    "latency": "s",
    "latency_norm": "x median s",
    "usd": "USD",
}
AUTO = "auto"


class CostError(DersimError):
    """A cost mode the cache cannot price, or a bad cost scale."""


def per_call_costs(
    mode: str,
    expert_id: np.ndarray,
    params_b: list[float | None],
    prompt_tokens: np.ndarray,
    completion_tokens: np.ndarray,
    latency_s: np.ndarray,
    cost_usd: np.ndarray,
    where: str,
) -> np.ndarray:
    """float32 cost of each call (one entry per built call) under `mode`; `params_b` is per
    expert."""
    experts = np.asarray(expert_id, dtype=np.int64)
    if mode not in COST_MODES:
        raise CostError(f"unknown cost mode '{mode}' (known: {', '.join(COST_MODES)})")
    if mode == "params":
        if any(p is None for p in params_b):
            raise CostError(
                f"{where}: expert {params_b.index(None)} has no params_b; choose another "
                "--cost-mode (e.g. usd)"
            )
        return np.asarray(params_b, dtype=np.float32)[experts]
    if mode == "tokens":
        return (
            (np.asarray(prompt_tokens, np.float64) + np.asarray(completion_tokens, np.float64))
            / 1000
        ).astype(np.float32)
    if mode == "usd":
        return np.asarray(cost_usd, dtype=np.float32)
    latency = np.asarray(latency_s, dtype=np.float32)
    if mode == "latency":
        return latency
    medians = np.array(
        [
            np.median(latency[experts == e]) if (experts == e).any() else 1.0
            for e in range(len(params_b))
        ],
        dtype=np.float32,
    )
    return latency / np.where(medians > 0, medians, 1.0)[experts]


def auto_cost_scale(
    costs: np.ndarray,
    expert_id: np.ndarray,
    n_experts: int,
    train_calls: np.ndarray,
    mode: str,
    where: str,
) -> float:
    """The mean per-call cost of the dearest expert over the train split's calls (`train_calls` is a
    boolean mask over `costs`). Refuses a mode whose costs are all zero or missing: it would train
    with no cost at all."""
    costs = np.asarray(costs, dtype=np.float64)
    experts = np.asarray(expert_id, dtype=np.int64)
    if not np.isfinite(costs).all():
        raise CostError(
            f"{where}: some '{mode}' costs are missing or not finite; choose another --cost-mode"
        )
    means = [
        costs[train_calls & (experts == e)].mean()
        for e in range(n_experts)
        if (train_calls & (experts == e)).any()
    ]
    return require_priced(max(means, default=0.0), mode, where)


def require_priced(scale: float, mode: str, where: str) -> float:
    """`scale` if positive; a mode whose costs are all zero would train with no cost at all."""
    if not scale > 0:
        raise CostError(
            f"{where}: every '{mode}' cost on the train split is zero (the cache records no "
            f"{COST_UNITS[mode]}); choose another --cost-mode"
        )
    return float(scale)


def resolve_cost_scale(value: str | float, auto: float, where: str) -> float:
    """`auto` -> the cache's dearest-expert mean cost; a positive finite number -> itself."""
    if value == AUTO:
        return auto
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise CostError(f"--cost-scale '{value}': expected 'auto' or a positive number") from None
    if not np.isfinite(scale) or scale <= 0:
        raise CostError(f"--cost-scale {value}: expected 'auto' or a positive number ({where})")
    return scale
