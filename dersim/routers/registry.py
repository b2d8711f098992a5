"""Router names -> router classes, and the settings each gets from the command line and the
cache."""

from __future__ import annotations

from typing import Any

from dersim.routers.base import Router, RouterError, RouterOptions
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

CLASSES: dict[str, type[Router]] = {
    cls.name: cls
    for cls in (
        RandomRouter,
        RandomMixRouter,
        KNNRouter,
        MLPRouter,
        LinearRouter,
        MFRouter,
        SWRankingRouter,
        EloRouter,
        LinUCBRouter,
        PickLLMRouter,
        HybridRouter,
        FORCRouter,
        CascadeRouter,
        CascadeKTPRouter,
        VotingRouter,
        DERFQIRouter,
        OracleRouter,
        BestSingleRouter,
    )
}
ROUTERS = tuple(CLASSES)


def parse_names(text: str | None) -> list[str]:
    """'knn,mlp' -> ['knn', 'mlp'] (every router when None); a one-line error names an unknown
    one."""
    if text is None:
        return list(ROUTERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLASSES]
    if unknown or not names:
        raise RouterError(
            f"--routers: unknown router '{unknown[0] if unknown else text}' "
            f"(known: {', '.join(ROUTERS)})"
        )
    return list(dict.fromkeys(names))


def make(
    name: str, data: RouterData, options: RouterOptions, seed: int, hyperparameters: dict[str, Any]
) -> Router:
    cls = CLASSES[name]
    return cls(**cls.fixed_settings(data, options), **hyperparameters, seed=seed)
