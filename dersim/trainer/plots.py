"""Learning curves of a run: training return and greedy val score per chunk, for every policy.

The x axis counts each algorithm's own updates (PPO and exact-pg gradient steps, fqi fits), so the
curves of a mixed grid share an axis without claiming the updates cost the same."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402


def plot_curves(curves: pl.DataFrame, best: list[int], path: Path) -> Path:
    """Every policy's training return (left) and greedy val score (right) per chunk, in grey; the
    best highlighted."""
    has_val = "val_score" in curves.columns and curves["val_score"].is_not_nan().any()
    panels = [("return", "training return (PPO: sampled episodes; exact-pg: exact)")]
    panels += [("val_score", "greedy val score")] if has_val else []
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels, strict=True):
        for (policy,), frame in curves.sort("updates").group_by("policy", maintain_order=True):
            highlighted = policy in best
            ax.plot(
                frame["updates"],
                frame[column],
                color=None if highlighted else "0.8",
                linewidth=2 if highlighted else 0.7,
                label=f"policy {policy}" if highlighted else None,
                marker="o" if frame.height == 1 else None,
                zorder=3 if highlighted else 1,
            )
        ax.set_xlabel("updates per policy (PPO, exact-pg: gradient steps; fqi: fits)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if best:
            ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"learning curves of {curves['policy'].n_unique()} policies (the chosen one highlighted)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
