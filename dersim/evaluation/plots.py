"""Pictures people would rather look at: learning curves and the cost-quality Pareto plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402


def plot_curves(curves: pl.DataFrame, best: list[int], path: Path, metric: str = "return") -> Path:
    """Every policy's learning curve in grey, the best ones highlighted."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (policy,), frame in curves.sort("env_steps").group_by("policy", maintain_order=True):
        highlighted = policy in best
        ax.plot(frame["env_steps"], frame[metric], color=None if highlighted else "0.8",
                linewidth=2 if highlighted else 0.7, label=f"policy {policy}" if highlighted else None,
                zorder=3 if highlighted else 1)
    ax.set_xlabel("env steps per policy")
    ax.set_ylabel(f"mean episode {metric}")
    ax.set_title(f"learning curves of {curves['policy'].n_unique()} policies (best highlighted)")
    if best:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pareto(policies: pl.DataFrame, baselines: pl.DataFrame, metric: str, path: Path) -> Path:
    """Cost (billions of parameters per question) against score, policies beside baselines."""
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(policies["cost_b"], policies[metric], s=12, alpha=0.5, label="trained policies", color="tab:blue")
    for row in baselines.iter_rows(named=True):
        marker = "*" if row["kind"] == "oracle" else "o"
        ax.scatter(row["cost_b"], row[metric], marker=marker, s=60, color="tab:red" if marker == "*" else "tab:gray")
        ax.annotate(row["name"], (row["cost_b"], row[metric]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean cost per question (billions of parameters activated)")
    ax.set_ylabel(f"mean final {metric} x 100")
    ax.set_title("cost vs quality on held-out questions")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
