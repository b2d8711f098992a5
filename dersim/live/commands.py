"""`dersim route` and `dersim serve` (click commands, registered by dersim.cli)."""

from __future__ import annotations

import functools
import io
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from dersim.errors import DersimError

if TYPE_CHECKING:
    from dersim.builder.sources.question import Question
    from dersim.live.pool import Endpoints

console = Console(stderr=True)


def endpoint_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --recipe, --base-url NAME=URL and --api-key-env NAME=VAR to a click command; it receives
    them parsed as one `endpoints` argument (`dersim.live.pool.Endpoints`). Live HTTP experts are
    called only where these say: never where a cache's or run's files say."""

    @click.option(
        "--recipe",
        "endpoint_recipe",
        type=click.Path(path_type=Path),
        help="The recipe the cache was built with: where its HTTP experts are called and which "
        "variables hold their keys (it must agree with the cache on everything else).",
    )
    @click.option(
        "--base-url",
        "endpoint_urls",
        multiple=True,
        metavar="NAME=URL",
        help="The API root of HTTP expert NAME (repeatable; wins over --recipe).",
    )
    @click.option(
        "--api-key-env",
        "endpoint_keys",
        multiple=True,
        metavar="NAME=VAR",
        help=(
            "The environment variable holding HTTP expert NAME's API key (repeatable; wins over "
            "--recipe)."
        ),
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any,
        endpoint_recipe: Path | None,
        endpoint_urls: tuple[str, ...],
        endpoint_keys: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        return command(
            *args,
            endpoints=parse_endpoints(endpoint_recipe, endpoint_urls, endpoint_keys),
            **kwargs,
        )

    return wrapper


def parse_endpoints(
    recipe: Path | None, base_urls: tuple[str, ...], api_key_envs: tuple[str, ...]
) -> Endpoints:
    """The options of `endpoint_options` as an `Endpoints` (the recipe read and checked now)."""
    from dersim.live.pool import Endpoints
    from dersim.recipe import load_recipe

    return Endpoints(
        recipe=None if recipe is None else load_recipe(recipe),
        base_urls=_assignments(base_urls, "--base-url", "URL"),
        api_key_envs=_assignments(api_key_envs, "--api-key-env", "VAR"),
    )


def _assignments(values: tuple[str, ...], option: str, metavar: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name.strip() or not setting.strip():
            raise DersimError(
                f"{option} {value}: expected NAME={metavar} (an expert's name, '=', its {metavar})"
            )
        if name in parsed:
            raise DersimError(f"{option} {name}=...: given twice")
        parsed[name] = setting.strip()
    return parsed


def load_live(
    run: Path, cache: Path | None, endpoints: Endpoints | None = None
) -> tuple[Any, Any, Any]:
    """(LiveRun, ExpertPool, CallPricer) for a run directory: the experts come from its cache
    (checked to be the one the run trained on), their endpoints and keys from `endpoints` only
    (default: none, so only in-process experts). A wrong cache, a recipe that disagrees with it and
    a missing endpoint are refused before any model loads."""
    from dersim.live.costs import CallPricer
    from dersim.live.policy import LiveRun
    from dersim.live.pool import ExpertPool

    live = LiveRun(run, cache)
    pool = ExpertPool(live.trainer.cache, endpoints)
    return live, pool, CallPricer(live.trainer.spec.cost_mode, pool.experts, live.trainer.cache)


def depth_note(max_calls: int | None, depth: int, t_max: int) -> None:
    if max_calls is not None and max_calls > depth:
        console.print(
            f"note: --max-calls {max_calls} goes deeper than the cache's depth {depth}: calls "
            f"beyond {depth} were never simulated, and from call {t_max + 1} on the policy is "
            f"shown step {t_max - 1}, the last it acted on in training"
        )


def read_questions(path: Path) -> list[Question]:
    """One question per non-blank JSONL line: an object with a string "question" and optional "id"
    (a string or an integer), "reference", "references" (a list of strings) and "label". The whole
    file is checked before anything loads: the first bad line is a one-line error naming it
    (file:line)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DersimError(f"{path}: cannot read ({exc.strerror})") from None
    questions = []
    for number, raw in enumerate(data.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DersimError(
                f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            ) from None
        if line.strip():
            questions.append(_question(_json(line, where), where))
    return questions


def _json(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DersimError(f"{where}: not JSON ({exc.msg})") from None
    except (
        ValueError,
        RecursionError,
    ) as exc:  # an integer of thousands of digits; nesting too deep
        raise DersimError(f"{where}: not JSON ({str(exc).splitlines()[0]})") from None


def _question(record: Any, where: str) -> Question:
    """The question of one input record; one-line errors for missing or mistyped fields."""
    from dersim.live.router import live_question

    text = record.get("question") if isinstance(record, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise DersimError(f'{where}: expected an object with a non-empty string "question"')
    qid = record.get("id")
    if qid is not None and (not isinstance(qid, str | int) or isinstance(qid, bool)):
        raise DersimError(f'{where}: "id" must be a string or an integer, got {type(qid).__name__}')
    references = record.get("references", [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise DersimError(f'{where}: "references" must be a list of strings')
    for key in ("reference", "label"):
        if not isinstance(record.get(key, ""), str):
            raise DersimError(
                f'{where}: "{key}" must be a string, got {type(record[key]).__name__}'
            )
    qid = None if qid is None else str(qid)
    for value in (
        text,
        qid or "",
        record.get("reference", ""),
        record.get("label", ""),
        *references,
    ):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DersimError(
                f"{where}: a string holds an unpaired surrogate escape (\\ud800-\\udfff), which is "
                "not text"
            ) from None
    return live_question(
        text.strip(), qid, record.get("reference", ""), tuple(references), record.get("label", "")
    )


@contextmanager
def atomic_output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or --output written whole or not at all: lines go to a temporary file beside it (one
    flush per route), renamed over it when the body ends without an error, removed otherwise. The
    file is created at once, so an unwritable --output fails before anything loads."""
    if path is None:
        yield sys.stdout
        return
    if path.is_dir():
        raise DersimError(f"--output {path}: is a directory")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        handle = tmp.open("w", encoding="utf-8")
    except OSError as exc:
        raise DersimError(
            f"--output {path}: cannot write in {path.parent} ({exc.strerror})"
        ) from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@click.command("route")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Run directory written by `dersim train --vectorized`.",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    help="The run's cache, if it has moved since training (it must be the same cache).",
)
@click.option(
    "--policy",
    "policy_index",
    type=click.IntRange(min=0),
    help="Policy index (default: the best deployable policy on val).",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    help='JSONL of questions ({"question": ..., "id": ...}); without it, an interactive prompt.',
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(path_type=Path),
    help=(
        "JSONL of routes, one per question (default: stdout); replaced only once every question is "
        "routed."
    ),
)
@click.option(
    "--max-calls",
    type=click.IntRange(min=1),
    help="Calls per question at most (default: the policy's T_max; may exceed the cache's depth).",
)
@click.option(
    "--check",
    "check_n",
    type=click.IntRange(min=1),
    metavar="N",
    help=(
        "Sim-to-real check: route N cached questions live and compare with their replay from the "
        "cache."
    ),
)
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train", "all"]),
    default="test",
    show_default=True,
    help="The --check questions' split.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="--check: print the report as JSON on stdout."
)
@endpoint_options
def route_command(
    run_dir: Path,
    cache: Path | None,
    policy_index: int | None,
    input_path: Path | None,
    output_path: Path | None,
    max_calls: int | None,
    check_n: int | None,
    split: str,
    as_json: bool,
    endpoints: Endpoints,
) -> None:
    """Route questions through the cache's real experts with a trained policy.

    Each question's state is embedded, the policy picks an expert (or STOP), the expert answers
    (seeing the previous answer through the KTP), until STOP, the judge or T_max. Batch mode writes
    one JSON line per question: the final answer and, per step, the expert, answer, tokens, latency
    and cost in the run's cost unit; a question an expert refuses or fails gets a line with an
    "error" and the batch goes on (exit status 1 at the end). --check N proves the cache exact: live
    routes on N cached questions must replay the cached ones byte for byte (exit status 1
    otherwise). HTTP experts are called only where --recipe, --base-url and --api-key-env say.
    """
    from dersim.live.router import LiveRouter

    if check_n is not None and (input_path or output_path or max_calls):
        raise DersimError(
            "--check compares with the cache's replay: it takes no --input, --output or --max-calls"
        )
    if output_path is not None and input_path is None:
        raise DersimError("--output needs --input (the interactive mode prints to the terminal)")
    questions = (
        read_questions(input_path) if input_path is not None else None
    )  # a bad line fails before loading
    failed = 0
    with atomic_output(output_path) as out:
        live, pool, pricer = load_live(run_dir, cache, endpoints)
        try:
            router = LiveRouter(live.policy(policy_index), pool, pricer)
            console.print(
                f"policy {router.policy.name}: terminator {router.policy.terminator}, T_max "
                f"{router.policy.t_max}; experts {', '.join(pool.names)}"
            )
            if check_n is not None:
                _check(router, check_n, split, as_json)
                return
            depth_note(max_calls, router.policy.max_depth, router.policy.t_max)
            if questions is not None:
                failed = _batch(router, questions, out, max_calls)
            else:
                _interactive(router, max_calls)
        finally:
            pool.close()
    if failed:
        console.print(
            f"{failed} of {len(questions or [])} questions failed (their output lines have an "
            '"error")'
        )
        sys.exit(1)


def _batch(router: Any, questions: list[Question], out: IO[str], max_calls: int | None) -> int:
    """Route every question, one JSON line each; a question an expert refuses or fails gets a line
    with its "error" and the batch goes on. Returns how many failed."""
    from dersim.live.pool import ExpertCallError

    failed = 0
    for i, question in enumerate(questions, 1):
        try:
            route = router.route(question, max_calls)
        except ExpertCallError as exc:
            failed += 1
            out.write(
                json.dumps(
                    {
                        "id": question.question_id,
                        "question": question.text,
                        "policy": router.policy.name,
                        "error": str(exc),
                    }
                )
                + "\n"
            )
            out.flush()
            console.print(f"[{i}/{len(questions)}] error: {exc}", markup=False, highlight=False)
            continue
        out.write(json.dumps(route.to_dict()) + "\n")
        out.flush()
        console.print(
            f"[{i}/{len(questions)}] {len(route.steps)} calls, stopped by {route.stopped_by}, "
            f"{route.wall_s:.2f} s"
        )
    return failed


def _interactive(router: Any, max_calls: int | None) -> None:
    from dersim.live.pool import ExpertCallError
    from dersim.live.router import live_question

    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(
            errors="surrogateescape"
        )  # bytes that are not UTF-8 are reported, not a traceback
    unit = router.pricer.unit
    click.echo("Ask a question (an empty line or Ctrl-D ends).")
    while True:
        try:
            text = input("question> ").strip()
        except EOFError:
            break
        if not text:
            break
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = ord(text[exc.start]) - 0xDC00
            click.echo(
                f"error: stdin: the line is not UTF-8 (byte 0x{byte:02x} at column "
                f"{exc.start + 1}); type the question again",
                err=True,
            )
            continue
        try:
            route = router.route(
                live_question(text),
                max_calls,
                on_step=lambda s: click.echo(
                    f"  [{s.step}] {s.expert} ({s.latency_s:.2f} s, {s.completion_tokens} tokens, "
                    f"{s.cost:.4g} "
                    f"{unit}{'' if s.judge_prob is None else f', judge {s.judge_prob:.2f}'}): "
                    f"{s.answer}"
                ),
            )
        except ExpertCallError as exc:
            click.echo(f"error: {exc}", err=True)
            continue
        total = sum(s.cost for s in route.steps)
        calls = f"{len(route.steps)} call{'' if len(route.steps) == 1 else 's'}"
        click.echo(
            f"answer ({calls}, stopped by {route.stopped_by}, {total:.4g} {unit}, "
            f"{route.wall_s:.2f} s): {route.answer}\n"
        )


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
    from dersim.live.check import describe_kernels

    out = Console()
    checked = result["questions"]
    note = "" if checked == requested else f" (the split has only {checked})"
    out.print(
        f"[bold]sim-to-real check[/bold] of {result['policy']} on {checked} {result['split']} "
        f"questions{note}: {result['agreeing']}/{checked} routes agree, "
        f"{result['same_final_state']}/{checked} final states agree"
    )
    for line in describe_kernels(result["fingerprint"]):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    table = Table("step", "questions", "same expert", "same answer (bytes)")
    for step, counts in result["steps"].items():
        table.add_row(
            str(step),
            str(counts["questions"]),
            str(counts["same_expert"]),
            str(counts["same_answer"]),
        )
    out.print(table)
    experts = Table("expert", "calls compared", "same answer (bytes)")
    for name, counts in result["experts"].items():
        experts.add_row(name, str(counts["compared"]), str(counts["same_answer"]))
    out.print(experts)
    emb = result["embeddings"]
    out.print(
        f"embeddings: {emb['bitwise_equal']}/{emb['states_compared']} live state embeddings equal "
        f"the cached ones bit for bit; max |difference| {emb['max_abs_diff']:.3g}"
    )
    latency = result["latency"]
    if latency["median_question_s"] is not None:
        per_expert = ", ".join(
            f"{name} {s:.2f} s ({latency['calls'][name]} calls)"
            for name, s in latency["median_call_s"].items()
        )
        out.print(
            f"live latency: median {latency['median_question_s']:.2f} s per question; median per "
            f"call: {per_expert}"
        )
    for m in result["mismatches"]:
        where = "final state" if m["step"] is None else f"step {m['step']} {m['what']}"
        out.print(
            f"[red]mismatch[/red] {m['question_id']} {where}:\n  replay: {m['replay']!r}\n  live:  "
            f" {m['live']!r}",
            highlight=False,
        )


@click.command("serve")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Run directory written by `dersim train --vectorized`.",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    help="The run's cache, if it has moved since training.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind (loopback by default).",
)
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8000, show_default=True)
@click.option(
    "--max-calls",
    type=click.IntRange(min=1),
    help="Calls per request at most (default: each policy's T_max; may exceed the cache's depth).",
)
@click.option(
    "--max-input-chars",
    type=click.IntRange(min=1),
    default=8000,
    show_default=True,
    help="Longest user message routed; longer ones get a 400.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    help="Largest request body read; a larger one (Content-Length or chunked) gets a 413.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Routes run at once, each on its own thread; more requests wait in the queue.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Requests waiting for a route at most; past that a request gets a 429 with Retry-After.",
)
@endpoint_options
def serve_command(
    run_dir: Path,
    cache: Path | None,
    host: str,
    port: int,
    max_calls: int | None,
    max_input_chars: int,
    max_body_bytes: int,
    concurrency: int,
    max_queue: int,
    endpoints: Endpoints,
) -> None:
    """Serve a run's policies behind an OpenAI-compatible API (/v1/models, /v1/chat/completions,
    /health).

    The model `der-<run>` is the best deployable policy on val, `der-<run>-<K>` policy K. Set
    DERSIM_SERVE_TOKEN to require `Authorization: Bearer <token>` on every request but GET /health.
    The experts load once the server listens: GET /health answers 503 until they are ready, 200
    after. SIGINT or SIGTERM stop accepting, finish the requests in flight and queued, then exit 0.
    """
    try:
        from dersim.live.server import TOKEN_ENV, create_app, serve
    except ImportError as exc:
        raise DersimError(
            f"dersim serve needs FastAPI and uvicorn ({exc.name} is missing): "
            "pip install -c constraints.txt 'dersim[serve]'"
        ) from None
    from dersim.live.policy import LiveRun
    from dersim.live.pool import resolve_experts

    token = os.environ.get(TOKEN_ENV) or None
    # Every one-line refusal (the run, its cache, nothing servable, an expert without an endpoint)
    # comes from the files alone, before the server listens and the experts load.
    live = LiveRun(run_dir, cache)
    names = live.model_names()
    if not names:
        raise DersimError(
            f"{run_dir}: no policy can route live (each reads the reference answer); none can be "
            "served"
        )
    resolve_experts(live.trainer.cache, endpoints)
    policies = {name: live.policy(i) for name, i in names.items()}
    first = next(iter(policies.values()))
    depth_note(max_calls, first.max_depth, first.t_max)
    if not _is_loopback(host) and token is None:
        console.print(f"warning: serving on {host} without a token; set {TOKEN_ENV} to require one")
    console.print(
        f"serving {len(names)} models on http://{host}:{port}/v1: {', '.join(names)} (loading the "
        "experts)"
    )
    app = create_app(
        list(names),
        lambda: _load_experts(live, policies, endpoints),
        token=token,
        max_calls=max_calls,
        max_input_chars=max_input_chars,
        max_body_bytes=max_body_bytes,
        max_queue=max_queue,
        concurrency=concurrency,
    )
    serve(app, host, port)


def _load_experts(
    live: Any, policies: dict[str, Any], endpoints: Endpoints
) -> tuple[dict[str, Any], Any]:
    """(a router per model name, the pool's close): the cache's experts loaded once for every
    policy, and the policies' network compiled before the first request."""
    import numpy as np

    from dersim.live.costs import CallPricer
    from dersim.live.pool import ExpertPool
    from dersim.live.router import LiveRouter

    pool = ExpertPool(live.trainer.cache, endpoints)
    try:
        pricer = CallPricer(live.trainer.spec.cost_mode, pool.experts, live.trainer.cache)
        routers = {name: LiveRouter(policy, pool, pricer) for name, policy in policies.items()}
        first = next(iter(policies.values()))
        first.logits(np.zeros(pool.embedder.dim, np.float32), 0, first.n_experts)
    except BaseException:
        pool.close()
        raise
    console.print(f"ready: experts {', '.join(pool.names)} loaded")
    return routers, pool.close


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
