"""Router names -> router classes, and the settings each gets from the command line and the cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dersim.routers.base import Router, RouterError
from dersim.routers.cascade import CascadeKTPRouter, CascadeRouter
from dersim.routers.data import RouterData
from dersim.routers.der_fqi import DERFQIRouter
from dersim.routers.elo import EloRouter
from dersim.routers.forc import FORCRouter
from dersim.routers.hybrid import HybridRouter
from dersim.routers.linucb import LinUCBRouter
from dersim.routers.mf import MFRouter
from dersim.routers.pickllm import PickLLMRouter
from dersim.routers.predictors import KNNRouter, LinearRouter, MLPRouter
from dersim.routers.random_routing import RandomMixRouter, RandomRouter
from dersim.routers.reference import BestSingleRouter, OracleRouter
from dersim.routers.sw_ranking import SWRankingRouter
from dersim.routers.voting import VotingRouter

CLASSES: dict[str, type[Router]] = {cls.name: cls for cls in (
    RandomRouter, RandomMixRouter, KNNRouter, MLPRouter, LinearRouter, MFRouter, SWRankingRouter, EloRouter,
    LinUCBRouter, PickLLMRouter, HybridRouter, FORCRouter, CascadeRouter, CascadeKTPRouter, VotingRouter,
    DERFQIRouter, OracleRouter, BestSingleRouter)}
ROUTERS = tuple(CLASSES)


@dataclass(frozen=True)
class RouterOptions:
    """Command-line settings shared by the routers that use them."""

    judge: str = "learned"  # the cascades' judge: learned (deployable) or oracle (reads the reference)
    judge_error: float = 0.0  # the cascades' judge decision is flipped on this share of answer states
    p0: float | None = None  # the learned judge's good-enough threshold (default: `data.default_p0`)


def parse_names(text: str | None) -> list[str]:
    """'knn,mlp' -> ['knn', 'mlp'] (every router when None); a one-line error names an unknown one."""
    if text is None:
        return list(ROUTERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLASSES]
    if unknown or not names:
        raise RouterError(f"--routers: unknown router '{unknown[0] if unknown else text}' "
                          f"(known: {', '.join(ROUTERS)})")
    return list(dict.fromkeys(names))


def unavailable(name: str, data: RouterData) -> str | None:
    """Why `name` cannot run on this cache, or None."""
    if name == "cascade+ktp" and data.imported:
        return "an imported cache holds no knowledge-transfer answers (its routes replay as independent calls)"
    if name == "cascade+ktp" and data.depth < 2:
        return f"the cache is built to depth {data.depth}; a cascade with transfer needs depth >= 2"
    return None


def fixed_settings(name: str, data: RouterData, options: RouterOptions) -> dict[str, Any]:
    """Constructor arguments that are not hyperparameters: the judge, and the reference for reference rows."""
    if name in ("cascade", "cascade+ktp"):
        return {"judge": options.judge, "judge_error": options.judge_error,
                "reference": data.score if options.judge == "oracle" else None}
    if name == "oracle":
        return {"reference": data.score}
    return {}


def make(name: str, data: RouterData, options: RouterOptions, seed: int, hyperparameters: dict[str, Any]) -> Router:
    return CLASSES[name](**fixed_settings(name, data, options), **hyperparameters, seed=seed)
