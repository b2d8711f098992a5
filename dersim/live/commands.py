"""`dersim route` and `dersim serve` (click commands, registered by dersim.cli)."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from dersim.errors import DersimError

if TYPE_CHECKING:
    from dersim.builder.sources.question import Question

console = Console(stderr=True)


def load_live(run: Path, cache: Path | None) -> tuple[Any, Any, Any]:
    """(LiveRun, ExpertPool, CallPricer) for a run directory; the experts come from its cache."""
    from dersim.live.costs import CallPricer
    from dersim.live.policy import LiveRun
    from dersim.live.pool import ExpertPool

    live = LiveRun(run, cache)
    pool = ExpertPool(live.trainer.cache)
    return live, pool, CallPricer(live.trainer.spec.cost_mode, pool.experts, live.trainer.cache)


def depth_note(max_calls: int | None, depth: int, t_max: int) -> None:
    if max_calls is not None and max_calls > depth:
        console.print(f"note: --max-calls {max_calls} goes deeper than the cache's depth {depth}: calls beyond "
                      f"{depth} were never simulated, and from call {t_max + 1} on the policy is shown step "
                      f"{t_max - 1}, the last it acted on in training")


def read_questions(path: Path) -> list[Question]:
    """One question per non-blank JSONL line: an object with a string "question" and optional "id",
    "reference", "references" (a list of strings) and "label"."""
    from dersim.live.router import live_question

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DersimError(f"{path}: cannot read ({exc.strerror})") from None
    questions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DersimError(f"{path}:{number}: not JSON ({exc.msg})") from None
        text = record.get("question") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DersimError(f"{path}:{number}: expected an object with a non-empty string \"question\"")
        references = record.get("references") or []
        fields = (record.get("reference", ""), record.get("label", ""))
        if not all(isinstance(f, str) for f in (*fields, *references)) or not isinstance(references, list):
            raise DersimError(f"{path}:{number}: \"reference\" and \"label\" must be strings, \"references\" a "
                              "list of strings")
        qid = record.get("id")
        questions.append(live_question(text.strip(), None if qid is None else str(qid), fields[0], tuple(references),
                                       fields[1]))
    return questions


@click.command("route")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True,
              help="Run directory written by `dersim train --vectorized`.")
@click.option("--cache", type=click.Path(path_type=Path), help="The run's cache, if it has moved since training.")
@click.option("--policy", "policy_index", type=click.IntRange(min=0),
              help="Policy index (default: the best deployable policy on val).")
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="JSONL of questions ({\"question\": ..., \"id\": ...}); without it, an interactive prompt.")
@click.option("--output", "output_path", type=click.Path(path_type=Path),
              help="JSONL of routes, one per question (default: stdout).")
@click.option("--max-calls", type=click.IntRange(min=1),
              help="Calls per question at most (default: the policy's T_max; may exceed the cache's depth).")
@click.option("--check", "check_n", type=click.IntRange(min=1), metavar="N",
              help="Sim-to-real check: route N cached questions live and compare with their replay from the cache.")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="The --check questions' split.")
@click.option("--json", "as_json", is_flag=True, help="--check: print the report as JSON on stdout.")
def route_command(run_dir: Path, cache: Path | None, policy_index: int | None, input_path: Path | None,
                  output_path: Path | None, max_calls: int | None, check_n: int | None, split: str,
                  as_json: bool) -> None:
    """Route questions through the cache's real experts with a trained policy.

    Each question's state is embedded, the policy picks an expert (or STOP), the expert answers
    (seeing the previous answer through the KTP), until STOP, the judge or T_max. Batch mode writes
    one JSON line per question: the final answer and, per step, the expert, answer, tokens, latency
    and cost in the run's cost unit. --check N proves the cache exact: live routes on N cached
    questions must replay the cached ones byte for byte (exit status 1 otherwise).
    """
    from dersim.live.router import Router

    if check_n is not None and (input_path or output_path or max_calls):
        raise DersimError("--check compares with the cache's replay: it takes no --input, --output or --max-calls")
    if output_path is not None and input_path is None:
        raise DersimError("--output needs --input (the interactive mode prints to the terminal)")
    questions = read_questions(input_path) if input_path is not None else None  # a bad line fails before loading
    live, pool, pricer = load_live(run_dir, cache)
    try:
        router = Router(live.policy(policy_index), pool, pricer)
        console.print(f"policy {router.policy.name}: terminator {router.policy.terminator}, T_max "
                      f"{router.policy.t_max}; experts {', '.join(pool.names)}")
        if check_n is not None:
            _check(router, check_n, split, as_json)
            return
        depth_note(max_calls, router.policy.max_depth, router.policy.t_max)
        if questions is not None:
            _batch(router, questions, output_path, max_calls)
        else:
            _interactive(router, max_calls)
    finally:
        pool.close()


def _batch(router: Any, questions: list[Question], output_path: Path | None, max_calls: int | None) -> None:
    out: IO[str] = sys.stdout if output_path is None else output_path.open("w", encoding="utf-8")
    try:
        for i, question in enumerate(questions, 1):
            route = router.route(question, max_calls)
            out.write(json.dumps(route.to_dict()) + "\n")
            out.flush()
            console.print(f"[{i}/{len(questions)}] {len(route.steps)} calls, stopped by {route.stopped_by}, "
                          f"{route.wall_s:.2f} s")
    finally:
        if out is not sys.stdout:
            out.close()


def _interactive(router: Any, max_calls: int | None) -> None:
    from dersim.live.router import live_question

    unit = router.pricer.unit
    click.echo("Ask a question (an empty line or Ctrl-D ends).")
    while True:
        try:
            text = input("question> ").strip()
        except EOFError:
            break
        if not text:
            break
        route = router.route(live_question(text), max_calls, on_step=lambda s: click.echo(
            f"  [{s.step}] {s.expert} ({s.latency_s:.2f} s, {s.completion_tokens} tokens, {s.cost:.4g} {unit}"
            f"{'' if s.judge_prob is None else f', judge {s.judge_prob:.2f}'}): {s.answer}"))
        total = sum(s.cost for s in route.steps)
        calls = f"{len(route.steps)} call{'' if len(route.steps) == 1 else 's'}"
        click.echo(f"answer ({calls}, stopped by {route.stopped_by}, {total:.4g} {unit}, {route.wall_s:.2f} s): "
                   f"{route.answer}\n")


def _check(router: Any, n: int, split: str, as_json: bool) -> None:
    from dersim.live.check import sim_to_real

    report = sim_to_real(router, n, split)
    result = report.to_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_check(result, n)
    if not report.full_agreement:
        sys.exit(1)


def _print_check(result: dict[str, Any], requested: int) -> None:
    out = Console()
    checked = result["questions"]
    note = "" if checked == requested else f" (the split has only {checked})"
    out.print(f"[bold]sim-to-real check[/bold] of {result['policy']} on {checked} {result['split']} "
              f"questions{note}: {result['agreeing']}/{checked} routes agree, "
              f"{result['same_final_state']}/{checked} final states agree")
    table = Table("step", "questions", "same expert", "same answer (bytes)")
    for step, counts in result["steps"].items():
        table.add_row(str(step), str(counts["questions"]), str(counts["same_expert"]), str(counts["same_answer"]))
    out.print(table)
    emb = result["embeddings"]
    out.print(f"embeddings: {emb['bitwise_equal']}/{emb['states_compared']} live state embeddings equal the cached "
              f"ones bit for bit; max |difference| {emb['max_abs_diff']:.3g}")
    latency = result["latency"]
    if latency["median_question_s"] is not None:
        per_expert = ", ".join(f"{name} {s:.2f} s ({latency['calls'][name]} calls)"
                               for name, s in latency["median_call_s"].items())
        out.print(f"live latency: median {latency['median_question_s']:.2f} s per question; median per call: "
                  f"{per_expert}")
    for m in result["mismatches"]:
        where = "final state" if m["step"] is None else f"step {m['step']} {m['what']}"
        out.print(f"[red]mismatch[/red] {m['question_id']} {where}:\n  replay: {m['replay']!r}\n  live:   "
                  f"{m['live']!r}", highlight=False)


@click.command("serve")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True,
              help="Run directory written by `dersim train --vectorized`.")
@click.option("--cache", type=click.Path(path_type=Path), help="The run's cache, if it has moved since training.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8000, show_default=True)
@click.option("--max-calls", type=click.IntRange(min=1),
              help="Calls per request at most (default: each policy's T_max; may exceed the cache's depth).")
@click.option("--max-input-chars", type=click.IntRange(min=1), default=8000, show_default=True,
              help="Longest user message routed; longer ones get a 400.")
def serve_command(run_dir: Path, cache: Path | None, host: str, port: int, max_calls: int | None,
                  max_input_chars: int) -> None:
    """Serve a run's policies behind an OpenAI-compatible API (/v1/models, /v1/chat/completions).

    The model `der-<run>` is the best deployable policy on val, `der-<run>-<K>` policy K. Set
    DERSIM_SERVE_TOKEN to require `Authorization: Bearer <token>` on every request.
    """
    import numpy as np

    try:
        from dersim.live.server import TOKEN_ENV, create_app, serve
    except ImportError as exc:
        raise DersimError(f"dersim serve needs FastAPI and uvicorn ({exc.name} is missing): "
                          "pip install -c constraints.txt 'dersim[serve]'") from None
    from dersim.live.router import Router

    token = os.environ.get(TOKEN_ENV) or None
    live, pool, pricer = load_live(run_dir, cache)
    try:
        names = live.model_names()
        if not names:
            raise DersimError(f"{run_dir}: every policy stops by the oracle terminator, which reads the reference "
                              "answer; none can be served")
        routers = {name: Router(live.policy(i), pool, pricer) for name, i in names.items()}
        first = next(iter(routers.values())).policy
        first.logits(np.zeros(pool.embedder.dim, np.float32), 0, first.n_experts)  # compile before the first request
        depth_note(max_calls, first.max_depth, first.t_max)
    except BaseException:
        pool.close()
        raise
    if not _is_loopback(host) and token is None:
        console.print(f"warning: serving on {host} without a token; set {TOKEN_ENV} to require one")
    console.print(f"serving {len(routers)} models on http://{host}:{port}/v1: {', '.join(routers)}")
    serve(create_app(routers, max_calls, max_input_chars, token, on_shutdown=pool.close), host, port)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
