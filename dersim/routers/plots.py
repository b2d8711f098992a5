"""One PNG with every router's cost-quality curve, the single experts and the oracle.

Each curve is its points (mean over seeds for stochastic routers) joined in cost order; rows that
read the reference are dashed and marked in the legend, DER's curves are drawn thicker; the single
experts are black points with their names. Colours step through tab20's ten hues before its
lighter shades, so neighbouring curves never share a hue. The cost axis names the unit and turns
logarithmic when costs span decades.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dersim.evaluation.plots import finish_cost_quality  # noqa: E402
from dersim.routers.evaluate import Comparison  # noqa: E402

MARKERS = "osD^v<>phP*Xd8"


def distinct_hue(index: int) -> int:
    """tab20's colour for curve `index`: its ten dark hues (even entries) first, then the light."""
    return (2 * index) % 20 + (index // 10) % 2


def plot_curves(comparison: Comparison, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 6))
    colours = plt.get_cmap("tab20")
    costs = [comparison.single_cost.mean(axis=1)]
    for i, curve in enumerate(comparison.curves):
        cost = curve.cost.mean(axis=2).mean(axis=0)  # [P]: mean over questions, then seeds
        score = curve.score.mean(axis=2).mean(axis=0) * 100
        order = np.argsort(cost, kind="stable")
        costs.append(cost)
        label = curve.name + (" (uses reference)" if curve.uses_reference else "")
        ax.plot(
            cost[order],
            score[order],
            linestyle="--" if curve.uses_reference else "-",
            marker=MARKERS[i % len(MARKERS)],
            markersize=4,
            linewidth=2.4 if curve.name.startswith("der") else 1.2,
            alpha=0.85,
            color="tab:red" if curve.name == "oracle" else colours(distinct_hue(i)),
            label=label,
        )
    single_cost = comparison.single_cost.mean(axis=1)
    single_score = comparison.single_score.mean(axis=1) * 100
    ax.scatter(
        single_cost, single_score, marker="X", s=70, color="black", zorder=5, label="single experts"
    )
    for name, x, y in zip(comparison.expert_names, single_cost, single_score, strict=True):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    return finish_cost_quality(
        fig,
        ax,
        np.concatenate(costs),
        comparison.cost_unit,
        f"mean {comparison.metric} x 100",
        f"routers on the {comparison.split} split "
        f"({comparison.n_questions} questions): cost vs quality",
        path,
    )
