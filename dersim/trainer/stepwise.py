"""The slow path: the same PPO, one policy, against the reference Gymnasium env step by step.

Rollouts are a Python loop over `DERGymEnv.step` (what a live-LLM trainer would do, with the LLM
replaced by the cache); the update is the vectorized trainer's own jitted `learn`. It exists for
comparison and debugging: same algorithm, same network, same outputs, only the env differs.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dersim.env.der_env import POLICY_SETTINGS, make_params
from dersim.env.reference import DERGymEnv
from dersim.errors import DersimError
from dersim.trainer.checkpoint import save_checkpoint
from dersim.trainer.policy import acting_by_actor, actor
from dersim.trainer.ppo import Runner, Transition, chunk_summary, init_runner, make_ppo
from dersim.trainer.run import CURVES, RUN_FILE, GridTrainer, TrainState, curve_rows

OUTCOME_KEYS = ("final_score", "calls", "cost", "return", "success")


def train_stepwise(
    trainer: GridTrainer, show_progress: bool = True
) -> tuple[dict, pl.DataFrame, float]:
    """Train the trainer's single policy on Gymnasium envs; returns the checkpoint state (runner and
    best-by-val record with a policy axis of 1, so evaluation and checkpoints are shared with the
    vectorized path), curves and env-steps/s."""
    if len(trainer.policies) != 1 or trainer.policies[0]["algo"] != "ppo":
        raise DersimError(
            "the step-by-step path trains one PPO policy: use --algo ppo, --seeds 1 and no --grid "
            "(or --vectorized for many, and for the full-information algorithms)"
        )
    settings, config = trainer.policies[0], trainer.config
    chosen = {k: settings[k] for k in POLICY_SETTINGS}
    spec = replace(trainer.spec, **chosen)
    env_params = make_params(trainer.tables, **chosen)
    hyper = jax.tree.map(lambda x: x[0], trainer.hyper)
    envs = [DERGymEnv(trainer.cache, spec) for _ in range(config.num_envs)]
    n_experts = env_params.n_experts
    runner = init_runner(jax.random.PRNGKey(settings["seed"]), config, env_params, hyper)
    network = trainer.network
    learn = jax.jit(make_ppo(config, network, trainer.tables.next_state.shape[0]).learn)

    @jax.jit
    def act(params, state_id, t, last_action, key):
        logits, value = actor(network, params, env_params, state_id, t, last_action)
        action = jax.random.categorical(key, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]
        return action, log_prob, value

    rng = np.random.default_rng(settings["seed"])
    states = np.array([env.reset(seed=int(rng.integers(2**31)))[1]["state"] for env in envs])
    t = np.zeros(config.num_envs, dtype=np.int32)
    last = np.full(config.num_envs, n_experts, dtype=np.int32)
    params, opt_state, key = runner.params, runner.opt_state, runner.key
    curves: list[dict] = []
    env_seconds, env_steps = 0.0, 0
    group = trainer.groups[0]
    best = trainer.initial_state().best[0]
    trainer.out.mkdir(parents=True, exist_ok=True)
    (trainer.out / RUN_FILE).write_text(
        json.dumps(trainer.run_record(), indent=2), encoding="utf-8"
    )
    with Progress(
        TextColumn("[bold]step-by-step (Gymnasium)"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task("train", total=trainer.n_chunks, rate="")
        for chunk in range(trainer.n_chunks):
            chunk_metrics: list[dict] = []
            for _ in range(config.updates_per_chunk):
                columns: dict[str, list] = {
                    k: []
                    for k in (
                        "state",
                        "t",
                        "last",
                        "action",
                        "log_prob",
                        "value",
                        "reward",
                        "done",
                        *OUTCOME_KEYS,
                    )
                }
                for _ in range(config.num_steps):
                    key, action_key = jax.random.split(key)
                    action, log_prob, value = map(
                        np.asarray, act(params, states, t, last, action_key)
                    )
                    columns["state"].append(states.copy())
                    columns["t"].append(t.copy())
                    columns["last"].append(last.copy())
                    started = time.perf_counter()
                    row = {
                        k: np.zeros(config.num_envs, dtype=np.float32)
                        for k in ("reward", "done", *OUTCOME_KEYS)
                    }
                    for i, env in enumerate(envs):
                        _, reward, done, _, info = env.step(int(action[i]))
                        row["reward"][i], row["done"][i] = reward, done
                        if done:
                            for k in OUTCOME_KEYS:
                                row[k][i] = info[k]
                            info = env.reset()[1]
                            last[i] = n_experts
                        else:
                            last[i] = action[i]
                        states[i], t[i] = info["state"], info.get("t", 0)
                    env_seconds += time.perf_counter() - started
                    env_steps += config.num_envs
                    for k, v in (
                        ("action", action),
                        ("log_prob", log_prob),
                        ("value", value),
                        *row.items(),
                    ):
                        columns[k].append(v)
                stacked = {k: np.stack(v) for k, v in columns.items()}
                trajectory = Transition(
                    stacked["state"].astype(np.int32),
                    stacked["t"].astype(np.int32),
                    stacked["last"].astype(np.int32),
                    stacked["action"].astype(np.int32),
                    stacked["log_prob"],
                    stacked["value"],
                    stacked["reward"],
                    stacked["done"].astype(bool),
                    {
                        **{k: stacked[k] for k in OUTCOME_KEYS},
                        "calls": stacked["calls"].astype(np.int32),
                        "success": stacked["success"].astype(bool),
                    },
                )
                key, learn_key = jax.random.split(key)
                _, _, last_value = act(params, states, t, last, learn_key)
                params, opt_state, metrics = learn(
                    params, opt_state, learn_key, trajectory, last_value, env_params, hyper
                )
                chunk_metrics.append(jax.tree.map(np.asarray, metrics))
            stacked_metrics = {
                k: np.stack([m[k] for m in chunk_metrics])[None] for k in chunk_metrics[0]
            }
            batched_params = acting_by_actor(
                jax.tree.map(lambda x: jnp.asarray(x)[None], params), group.env_params
            )
            val = trainer.validate(batched_params)
            if val is not None and trainer.keep == "best":
                best = trainer.keep_best(best, batched_params, val["val_return"], chunk)
            curves.extend(
                {**row, "run_chunk": chunk}
                for row in curve_rows(
                    group.indices,
                    group.label,
                    chunk_summary(stacked_metrics),
                    val,
                    chunk,
                    (chunk + 1) * config.updates_per_chunk,
                    (chunk + 1) * config.steps_per_chunk,
                )
            )
            progress.update(
                task,
                advance=1,
                rate=f"{env_steps / max(env_seconds, 1e-9):,.0f} env-steps/s (env only)",
            )
    runner = Runner(
        params=params, opt_state=opt_state, env=runner.env, key=key, updates=runner.updates
    )
    state = TrainState(
        groups=[jax.tree.map(lambda x: jnp.asarray(x)[None], runner)],
        best=[best],
        chunk=trainer.n_chunks,
    )
    save_checkpoint(trainer.out, state)
    frame = pl.DataFrame(curves)
    frame.write_parquet(trainer.out / CURVES)
    return state, frame, env_steps / max(env_seconds, 1e-9)
