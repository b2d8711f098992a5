"""What a live call costs, in the run's cost unit (`dersim.cache.costs`), priced as the cache prices
it.

params: the expert's billions of parameters; tokens: prompt + completion tokens in thousands;
latency: the call's seconds; latency_norm: its seconds over the expert's median cached latency (the
divisor the run trained with); usd: the expert's token prices (per million tokens, in and out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dersim.builder.backends.base import Completion
from dersim.cache.check import read_checked
from dersim.cache.costs import COST_MODES, COST_UNITS
from dersim.cache.schema import STATUS_OK, TRANSITIONS
from dersim.errors import DersimError
from dersim.recipe import ExpertSpec


class CallPricer:
    """Prices one live call of an expert in `mode`."""

    def __init__(self, mode: str, experts: tuple[ExpertSpec, ...], cache: Path) -> None:
        if mode not in COST_MODES:
            raise DersimError(f"unknown cost mode '{mode}' (known: {', '.join(COST_MODES)})")
        self.mode = mode
        self.unit = COST_UNITS[mode]
        self.experts = experts
        self.medians = self._median_latencies(cache) if mode == "latency_norm" else None

    def _median_latencies(self, cache: Path) -> np.ndarray:
        columns = ["expert_id", "latency_s", "status"]
        table = read_checked(cache, {TRANSITIONS: columns}, verify_hashes=False)[1][TRANSITIONS]
        ok = np.asarray(table["status"].to_numpy(zero_copy_only=False)) == STATUS_OK
        experts = table["expert_id"].to_numpy()[ok]
        latency = table["latency_s"].to_numpy()[ok].astype(np.float32)
        medians = [
            np.median(latency[experts == e]) if (experts == e).any() else 1.0
            for e in range(len(self.experts))
        ]
        return np.asarray([m if m > 0 else 1.0 for m in medians], dtype=np.float64)

    def cost(self, expert: int, call: Completion) -> float:
        spec = self.experts[expert]
        if self.mode == "params":
            return float(spec.params_b)
        if self.mode == "tokens":
            return (call.prompt_tokens + call.completion_tokens) / 1000
        if self.mode == "usd":
            return (
                call.prompt_tokens * spec.usd_per_mtok_in
                + call.completion_tokens * spec.usd_per_mtok_out
            ) / 1e6
        if self.mode == "latency":
            return float(call.latency_s)
        return float(call.latency_s / self.medians[expert])  # type: ignore[index]
