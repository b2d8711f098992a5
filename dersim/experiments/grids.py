"""Training the plan's grids, resumably: a finished grid is loaded, an interrupted one continues
from its last checkpoint, a missing one is trained. Each grid is an ordinary run directory under
`OUT/grids/<name>` (`dersim eval --run` reads it too)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from dersim.errors import DersimError
from dersim.experiments.plan import Grid, Plan
from dersim.trainer.checkpoint import CHECKPOINT
from dersim.trainer.ppo import PPOConfig
from dersim.trainer.run import RUN_FILE, GridTrainer, TrainState

GRIDS = "grids"


@dataclass
class TrainedGrid:
    grid: Grid
    trainer: GridTrainer
    state: TrainState
    seconds: float  # training time in this process (0 when loaded finished)


def grid_trainer(plan: Plan, grid: Grid, out: Path, verify: bool) -> GridTrainer:
    return GridTrainer.open(
        grid.cache,
        out / GRIDS / grid.name,
        grid.spec(plan),
        PPOConfig(),
        grid.policies(plan),
        plan.steps,
        keep="best",
        verify=verify,
    )


def train_grid(
    plan: Plan, grid: Grid, out: Path, console: Console, verify: bool = True
) -> TrainedGrid:
    """The grid's trained state: loaded if finished, resumed if interrupted, trained otherwise."""
    trainer = grid_trainer(plan, grid, out, verify)
    run_dir = trainer.out
    started = time.perf_counter()
    if (run_dir / RUN_FILE).exists():
        recorded = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        if recorded != json.loads(json.dumps(trainer.run_record())):
            raise DersimError(
                f"{run_dir}: holds a grid trained with other settings; use another --out or "
                "--overwrite"
            )
        if (run_dir / CHECKPOINT).exists():
            state = trainer.load()
            if int(state.chunk) == trainer.n_chunks:
                console.print(f"grid {grid.name}: finished earlier, loaded")
                return TrainedGrid(grid, trainer, state, 0.0)
            console.print(
                f"grid {grid.name}: resuming after chunk {int(state.chunk)} of {trainer.n_chunks}"
            )
            state, _ = trainer.train(resume=True, show_progress=console.is_terminal)
            return TrainedGrid(grid, trainer, state, time.perf_counter() - started)
    per_chunk = trainer.config.steps_per_chunk
    steps = -(-plan.steps // per_chunk) * per_chunk
    groups = ", ".join(f"{len(g.indices)} {g.label}" for g in trainer.groups)
    console.print(
        f"grid {grid.name}: training {len(trainer.policies)} policies ({groups}; PPO: {steps:,} "
        "env steps each)"
    )
    state, _ = trainer.train(show_progress=console.is_terminal)
    return TrainedGrid(grid, trainer, state, time.perf_counter() - started)
