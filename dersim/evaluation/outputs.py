"""A run directory's human-facing outputs: runs.parquet, summary.md, curves.png, pareto.png."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from dersim.evaluation.plots import plot_curves, plot_pareto
from dersim.evaluation.report import REPORTED_METRICS
from dersim.trainer.grid import GRID_KEYS

RUNS = "runs.parquet"
SUMMARY = "summary.md"


def score_columns(frame: pl.DataFrame, metric: str) -> list[str]:
    """The env's metric, then BERTScore F1 and the task metric where the cache has them."""
    return list(dict.fromkeys(c for c in (metric, *REPORTED_METRICS) if c in frame.columns))


def write_outputs(out: Path, policies: pl.DataFrame, baselines: pl.DataFrame, curves: pl.DataFrame, metric: str,
                  split: str) -> None:
    """runs.parquet (a row per policy: settings, train/held-out scores, cost, calls, final return),
    the learning-curve and Pareto plots and a markdown summary."""
    last = curves.sort("chunk").group_by("policy").last().select("policy", pl.col("return").alias("train_return"))
    runs = policies.join(last, on="policy").drop("name", "kind")
    runs.write_parquet(out / RUNS)
    best = runs.sort(f"train_{metric}", descending=True)["policy"].head(3).to_list()
    plot_curves(curves, best, out / "curves.png")
    plot_pareto(policies, baselines, metric, out / "pareto.png")
    (out / SUMMARY).write_text(summary_markdown(runs, baselines, metric, split), encoding="utf-8")


def summary_markdown(runs: pl.DataFrame, baselines: pl.DataFrame, metric: str, split: str) -> str:
    columns = score_columns(baselines, metric)
    best = runs.sort(f"train_{metric}", descending=True).row(0, named=True)
    lines = [f"# dersim run: {runs.height} policies, evaluated on the {split} split", "",
             f"Best policy by train {metric}: policy {best['policy']} "
             f"(seed {best['seed']}, lr {best['lr']:g}, ent_coef {best['ent_coef']:g}, "
             f"terminator {best['terminator']}, "
             f"T_max {best['t_max']}, p0 {best['p0']:g}, alpha {best['alpha']:g}, beta {best['beta']:g}, "
             f"gamma {best['gamma']:g}).", "",
             "| router | " + " | ".join(f"{c} x100" for c in columns) + " | cost (B params) | calls |",
             "|---|" + "---|" * (len(columns) + 2)]
    rows = [("best policy", best)] + [(r["name"], r) for r in baselines.iter_rows(named=True)]
    for name, row in rows:
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in columns)
                     + f" | {row['cost_b']:.3f} | {row['calls']:.2f} |")
    lines += ["", f"Mean over all {runs.height} policies: {metric} x100 = {runs[metric].mean():.2f}, "
              f"cost = {runs['cost_b'].mean():.3f} B.", "", "![learning curves](curves.png)", "",
              "![cost vs quality](pareto.png)", ""]
    return "\n".join(lines)


def policy_label(row: dict, varied: list[str]) -> str:
    """'policy 3 (lr 0.001, beta 0, seed 1)': the settings that differ across the run's policies."""
    settings = [f"{k} {row[k]:g}" if isinstance(row[k], float) else f"{k} {row[k]}" for k in varied]
    seed = row["seed"]
    return f"policy {row['policy']} ({', '.join([*settings, f'seed {seed}'])})"


def print_table(runs: pl.DataFrame, baselines: pl.DataFrame, metric: str, split: str, top: int = 5) -> None:
    """The best `top` policies (by train score) beside every baseline."""
    columns = score_columns(baselines, metric)
    console = Console()
    wide = console.width >= 120  # the per-expert share of calls only fits a wide terminal
    table = Table("router", *[f"{c} x100" for c in columns], "cost (B)", "calls", *(["expert share"] if wide else []),
                  title=f"{split} split: {runs.height} policies (best {min(top, runs.height)} by train {metric}) "
                        "and baselines")
    for column, name in zip(table.columns[1:], columns, strict=False):
        column.min_width = len(name)  # metric names stay readable; long router names wrap instead
    varied = [k for k in GRID_KEYS if k in runs.columns and runs[k].n_unique() > 1]
    for row in runs.sort(f"train_{metric}", descending=True).head(top).iter_rows(named=True):
        share = " ".join(f"{k[:12]}:{v:.0%}" for k, v in row["expert_share"].items() if v)
        table.add_row(policy_label(row, varied),
                      *[f"{row[c]:.2f}" for c in columns], f"{row['cost_b']:.3f}", f"{row['calls']:.2f}",
                      *([share] if wide else []))
    for row in baselines.iter_rows(named=True):
        table.add_row(row["name"], *[f"{row[c]:.2f}" for c in columns], f"{row['cost_b']:.3f}",
                      f"{row['calls']:.2f}", *([""] if wide else []), style="dim" if row["kind"] == "oracle" else None)
    console.print(table)
