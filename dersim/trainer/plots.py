"""Learning curves of a run: training return and greedy val score per chunk, for every policy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402


def plot_curves(curves: pl.DataFrame, best: list[int], path: Path) -> Path:
    """Every policy's training return (left) and greedy val score (right) per chunk, in grey; the best
    highlighted."""
    has_val = "val_score" in curves.columns and curves["val_score"].is_not_nan().any()
    panels = [("return", "mean training episode return")] + ([("val_score", "greedy val score")] if has_val else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels, strict=True):
        for (policy,), frame in curves.sort("env_steps").group_by("policy", maintain_order=True):
            highlighted = policy in best
            ax.plot(frame["env_steps"], frame[column], color=None if highlighted else "0.8",
                    linewidth=2 if highlighted else 0.7, label=f"policy {policy}" if highlighted else None,
                    zorder=3 if highlighted else 1)
        ax.set_xlabel("env steps per policy")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if best:
            ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"learning curves of {curves['policy'].n_unique()} policies (the chosen one highlighted)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
