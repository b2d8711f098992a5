"""The cost-quality plot of an evaluated run.

Labels never overlap: every baseline has its own marker in a legend beside the axes instead of
an annotation. The cost axis names the run's unit and turns logarithmic when costs span decades.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from dersim.evaluation.report import Evaluation  # noqa: E402

LOG_SPAN = 30.0  # a log cost axis when the largest positive cost is this many times the smallest
MARKERS = "osD^v<>phd8"
COLORS = (
    "tab:green",
    "tab:orange",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
REFERENCE_MARKERS = "*PXD"  # reference rows are red, each with its own marker


def use_log_axis(costs: np.ndarray) -> bool:
    positive = np.asarray(costs, dtype=np.float64)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    return len(positive) > 1 and positive.max() / positive.min() >= LOG_SPAN


def finish_cost_quality(
    fig: plt.Figure, ax: plt.Axes, costs: np.ndarray, unit: str, ylabel: str, title: str, path: Path
) -> Path:
    """The shared finish of every cost-quality plot: the cost axis in `unit` (log when costs span
    decades), the legend beside the axes (labels never overlap the points), a grid; saved to
    `path`."""
    log = use_log_axis(costs)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"mean cost per question ({unit}{', log scale' if log else ''})")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pareto(evaluation: Evaluation, path: Path) -> Path:
    """Mean cost per question (the run's unit) against the mean score x100 on the evaluated split:
    deployable policies, oracle-stop policies, each baseline and reference row with its 95% CI."""
    metric = evaluation.metric
    policies, baselines = evaluation.policies, evaluation.baselines
    fig, ax = plt.subplots(figsize=(10, 5.5))
    deployable = policies.filter(~pl.col("uses_reference"))
    oracle_stop = policies.filter(pl.col("uses_reference"))
    if deployable.height:
        ax.scatter(
            deployable["cost"],
            deployable[metric],
            s=16,
            alpha=0.6,
            color="tab:blue",
            label="trained policies (deployable)",
            zorder=6,
        )
    if oracle_stop.height:
        ax.scatter(
            oracle_stop["cost"],
            oracle_stop[metric],
            s=16,
            alpha=0.5,
            marker="x",
            color="tab:red",
            label="trained policies, oracle stop (uses reference)",
            zorder=6,
        )
    if evaluation.best_policy is not None:
        best = policies.filter(pl.col("policy") == evaluation.best_policy).row(0, named=True)
        ax.errorbar(
            best["cost"],
            best[metric],
            yerr=[[best[metric] - best[f"{metric}_low"]], [best[f"{metric}_high"] - best[metric]]],
            fmt="o",
            color="tab:blue",
            markersize=9,
            markeredgecolor="black",
            capsize=3,
            label=f"chosen policy {evaluation.best_policy} (best {evaluation.chosen_on} score)",
            zorder=5,
        )
    shown = {True: 0, False: 0}
    for row in baselines.iter_rows(named=True):
        reference = row["uses_reference"]
        i = shown[reference]
        shown[reference] += 1
        if reference:
            style = {
                "fmt": REFERENCE_MARKERS[i % len(REFERENCE_MARKERS)],
                "color": "tab:red",
                "markersize": 9,
            }
        else:
            style = {
                "fmt": MARKERS[i % len(MARKERS)],
                "color": COLORS[i % len(COLORS)],
                "markersize": 7,
            }
        ax.errorbar(
            row["cost"],
            row[metric],
            yerr=[[row[metric] - row[f"{metric}_low"]], [row[f"{metric}_high"] - row[metric]]],
            alpha=0.9,
            capsize=2,
            elinewidth=0.8,
            zorder=4,
            label=row["name"] + (" (uses reference)" if reference else ""),
            **style,
        )
    costs = np.concatenate([policies["cost"].to_numpy(), baselines["cost"].to_numpy()])
    return finish_cost_quality(
        fig,
        ax,
        costs,
        evaluation.cost_unit,
        f"mean final {metric} x 100 (95% CI)",
        f"cost vs quality on the {evaluation.split} split",
        path,
    )
