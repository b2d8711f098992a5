"""Issue 10, the cache side: every defect found by trying damaged caches and hostile inputs on
`cache info`, `build-cache` and the importers, each now a one-line error (exit status 2, no
traceback) or the right result. One test per defect, named after it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from dersim.builder.build import build_cache
from dersim.cache.check import check_cache
from dersim.cache.schema import (
    MANIFEST,
    STATES,
    TABLE_FILES,
    TRANSITIONS,
    file_sha256,
    write_manifest,
    write_parquet_atomic,
)
from dersim.cache.verify import verify_cache
from dersim.cli import main
from dersim.errors import CacheFormatError
from dersim.locking import LOCK_FILE, prepare_directory
from dersim.recipe import load_recipe

from conftest import REPO, SHARED_DATA, synthetic_recipe_text

STRATEGYQA_CACHE = REPO / "cache" / "strategyqa"
FLIPPED_BYTE = 15470  # inside a data page of transitions.parquet's next_state_id column (issue 10)


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(status: int, stderr: str, *parts: str) -> str:
    """The single `error: ...` line of a run that exited 2 without a traceback; it holds `parts`."""
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def one_line_error(result: Result, *parts: str) -> str:
    return error_line(result.exit_code, result.stderr, *parts)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    (root / "recipe.toml").write_text(synthetic_recipe_text(), encoding="utf-8")
    build_cache(load_recipe(root / "recipe.toml"), root / "cache", show_progress=False)
    return root / "cache"


@pytest.fixture
def cache_copy(small_cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(small_cache, target, ignore=shutil.ignore_patterns("journal", LOCK_FILE))
    return target


def rewrite_column(cache: Path, name: str, column: str, edit) -> None:
    """Rewrite one column of a table through `edit` (numpy -> numpy) and redo its manifest hash, so
    that only the content checks can find the damage."""
    table = pq.read_table(cache / name)
    values = edit(table[column].to_numpy(zero_copy_only=False).copy())
    index = table.schema.get_field_index(column)
    field = table.schema.field(index)
    write_parquet_atomic(table.set_column(index, field, pa.array(values, field.type)), cache / name)
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["files"][name] = file_sha256(cache / name)
    write_manifest(manifest, cache)


# ---------------------------------------------------------------------------------------------
# Damaged caches
# ---------------------------------------------------------------------------------------------


def test_byte_flip_in_a_bundled_cache_is_refused_by_cache_info(tmp_path: Path) -> None:
    copy = tmp_path / "strategyqa"
    shutil.copytree(STRATEGYQA_CACHE, copy)
    path = copy / TRANSITIONS
    data = bytearray(path.read_bytes())
    data[FLIPPED_BYTE] ^= 0xFF
    path.write_bytes(bytes(data))
    one_line_error(
        cli("cache", "info", copy, "--json"),
        f"{path}: sha256 differs from the manifest",
        "--no-verify",
    )
    # --no-verify skips the hash, not the content checks: this flip sends routes into another
    # question
    one_line_error(
        cli("cache", "info", copy, "--json", "--no-verify"),
        f"{path}:",
        "transitions lead to another question's state",
    )


def test_check_cache_reads_only_what_the_caller_reads(cache_copy: Path) -> None:
    manifest = check_cache(cache_copy, files=[STATES], metrics=["token_f1"])
    assert manifest["metric_columns"] == ["accuracy", "token_f1", "rouge_l"]
    (cache_copy / TRANSITIONS).write_bytes(b"damaged")
    check_cache(
        cache_copy, files=[STATES], metrics=["token_f1"]
    )  # transitions are not read: not checked
    with pytest.raises(CacheFormatError, match="transitions.parquet: sha256 differs"):
        check_cache(cache_copy, files=[STATES, TRANSITIONS])
    with pytest.raises(CacheFormatError, match="transitions.parquet: unreadable Parquet"):
        check_cache(cache_copy, files=[TRANSITIONS], verify_hashes=False)
    with pytest.raises(CacheFormatError, match="no metric 'bleu'"):
        check_cache(cache_copy, files=[STATES], metrics=["bleu"])


def test_no_verify_skips_only_the_hash_check(cache_copy: Path) -> None:
    manifest = json.loads((cache_copy / MANIFEST).read_text())
    manifest["files"][STATES] = "0" * 64
    write_manifest(manifest, cache_copy)
    one_line_error(cli("cache", "info", cache_copy), f"{cache_copy / STATES}: sha256 differs")
    assert cli("cache", "info", cache_copy, "--no-verify", "--json").exit_code == 0


def test_nan_scores_are_refused_naming_column_and_rows(cache_copy: Path) -> None:
    def nan_rows(values: np.ndarray) -> np.ndarray:
        values[[12, 40, 77]] = np.nan
        return values

    rewrite_column(cache_copy, STATES, "token_f1", nan_rows)
    for flags in ((), ("--no-verify",)):
        one_line_error(
            cli("cache", "info", cache_copy, *flags),
            f"{cache_copy / STATES}: 3 NaN values in column 'token_f1' (rows 12, 40, 77)",
        )
    with pytest.raises(CacheFormatError, match="NaN values in column 'token_f1'"):
        check_cache(cache_copy, metrics=["token_f1"])
    check_cache(cache_copy, metrics=["rouge_l"])  # a reader of another metric is not refused


def test_nan_in_a_state_embedding_is_refused_by_verify_and_every_checked_read(
    cache_copy: Path,
) -> None:
    """NaN passed `max() > tol` in verify and crashed `dersim routers` inside scikit-learn."""
    table = pq.read_table(cache_copy / STATES)
    index = table.schema.get_field_index("embedding")
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors[[3, 9]] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    write_parquet_atomic(
        table.set_column(index, table.schema.field(index), column), cache_copy / STATES
    )
    manifest = json.loads((cache_copy / MANIFEST).read_text())
    manifest["files"][STATES] = file_sha256(cache_copy / STATES)
    write_manifest(manifest, cache_copy)
    expected = f"{cache_copy / STATES}: 2 embeddings with NaN or infinite values (rows 3, 9)"
    assert expected in verify_cache(cache_copy)
    one_line_error(cli("cache", "info", cache_copy), expected)
    one_line_error(
        cli("routers", "--cache", cache_copy, "--out", cache_copy.parent / "routers"), expected
    )
    one_line_error(
        cli("train", "--vectorized", "--cache", cache_copy, "--out", cache_copy.parent / "run"),
        expected,
    )


def test_deleted_states_parquet_in_cache_info(cache_copy: Path) -> None:
    (cache_copy / STATES).unlink()
    for flags in ((), ("--no-verify",)):
        one_line_error(cli("cache", "info", cache_copy, *flags), f"{cache_copy / STATES}: missing")


def test_truncated_states_parquet_in_cache_info(cache_copy: Path) -> None:
    path = cache_copy / STATES
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    one_line_error(cli("cache", "info", cache_copy), f"{path}: sha256 differs")
    one_line_error(cli("cache", "info", cache_copy, "--no-verify"), f"{path}: unreadable Parquet")


def test_out_of_range_next_state_id_in_cache_info(cache_copy: Path) -> None:
    def dangle(values: np.ndarray) -> np.ndarray:
        values[5] = 10**6
        return values

    rewrite_column(cache_copy, TRANSITIONS, "next_state_id", dangle)
    one_line_error(
        cli("cache", "info", cache_copy),
        f"{cache_copy / TRANSITIONS}: 1 next_state_id value outside 0..",
        "(row 5)",
    )
    assert any("next_state_id value outside" in p for p in verify_cache(cache_copy))


KILL_DURING_WRITES = """
import os, signal, sys
import dersim.cache.writer as writer
real, written = writer.write_parquet_atomic, []
def write_then_die(table, path, *args, **kwargs):
    if len(written) == 1:  # the second table of the final writes
        os.kill(os.getpid(), signal.SIGKILL)
    written.append(path)
    return real(table, path, *args, **kwargs)
writer.write_parquet_atomic = write_then_die
from dersim.cli import main
main(sys.argv[1:])
"""


def test_kill_during_the_final_table_writes_of_a_rebuild(write_recipe, tmp_path: Path) -> None:
    small, larger = (
        write_recipe(synthetic_recipe_text(train=4, test=2)),
        write_recipe(synthetic_recipe_text(train=6, test=2), "larger.toml"),
    )
    out = tmp_path / "c"
    assert cli("build-cache", small, "--out", out, "--quiet").exit_code == 0
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_DURING_WRITES,
            "build-cache",
            str(larger),
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL
    # the old manifest is still there and one new table is written: a reader must refuse the mix
    for flags in ((), ("--no-verify",)):
        one_line_error(cli("cache", "info", out, *flags), f"{out}:", "interrupted", "rerun")
    assert verify_cache(out) and "interrupted" in verify_cache(out)[0]
    assert (
        cli("build-cache", larger, "--out", out, "--quiet").exit_code == 0
    )  # the rerun repairs it
    assert verify_cache(out) == []
    assert cli("build-cache", larger, "--out", tmp_path / "clean", "--quiet").exit_code == 0
    for name in TABLE_FILES:
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# Output directories
# ---------------------------------------------------------------------------------------------


def can_create_a_file_in(directory: Path) -> bool:
    try:
        (directory / ".probe").touch()
    except OSError:
        return False
    (directory / ".probe").unlink()
    return True


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Path:
    """A directory no file can be created in: a chmod 555 one, or (root ignores modes) sysfs."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    if can_create_a_file_in(directory):  # running as root
        directory = Path("/sys/kernel")
    assert directory.is_dir() and not can_create_a_file_in(directory), (
        "found no read-only directory"
    )
    yield directory
    (tmp_path / "read-only").chmod(0o755)


def long_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


LONG_ROWS = [
    {
        "qid": f"q{q}",
        "prompt": f"What is {q} + {q}?",
        "llm": model,
        "output": str(2 * q + bad),
        "grade": float(bad == 0),
    }
    for q in range(6)
    for model, bad in (("small", q % 2), ("large", 0))
]
LONG_ARGS = (
    "--question-id",
    "qid",
    "--question",
    "prompt",
    "--model",
    "llm",
    "--answer",
    "output",
    "--score",
    "grade",
    "--embedding",
    "hashing",
    "--dim",
    "16",
    "--quiet",
)


def test_read_only_output_directory_in_build_cache_and_imports(
    read_only_dir: Path, write_recipe, tmp_path: Path
) -> None:
    # the dataset does not exist: the output directory must be checked before anything is read
    recipe = write_recipe(synthetic_recipe_text(dataset=tmp_path / "missing.json"))
    missing_source = tmp_path / "missing.jsonl"
    one_line_error(
        cli("build-cache", recipe, "--out", read_only_dir), f"{read_only_dir}: not writable"
    )
    one_line_error(
        cli("cache", "import", "long", missing_source, "--out", read_only_dir, *LONG_ARGS),
        f"{read_only_dir}: not writable",
    )
    one_line_error(
        cli("cache", "import", "routerbench", missing_source, "--out", read_only_dir),
        f"{read_only_dir}: not writable",
    )
    below = read_only_dir / "new"
    one_line_error(
        cli("build-cache", recipe, "--out", below), f"{below}: cannot create the directory"
    )
    with pytest.raises(Exception, match="not writable|cannot create"):
        prepare_directory(below)


def test_out_under_a_regular_file(write_recipe, tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    recipe = write_recipe(synthetic_recipe_text())
    one_line_error(
        cli("build-cache", recipe, "--out", regular / "c"),
        f"{regular / 'c'}: not a directory ({regular} is a file)",
    )
    one_line_error(
        cli("build-cache", recipe, "--out", regular), f"{regular}: a file, not a directory"
    )
    source = long_jsonl(tmp_path / "answers.jsonl", LONG_ROWS)
    one_line_error(
        cli("cache", "import", "long", source, "--out", regular / "c", *LONG_ARGS),
        f"{regular} is a file",
    )


def test_import_into_an_existing_cache_needs_overwrite(tmp_path: Path) -> None:
    source = long_jsonl(tmp_path / "answers.jsonl", LONG_ROWS)
    out = tmp_path / "c"
    assert cli("cache", "import", "long", source, "--out", out, *LONG_ARGS).exit_code == 0
    before = (out / MANIFEST).read_text()
    one_line_error(
        cli("cache", "import", "long", source, "--out", out, *LONG_ARGS),
        f"{out}: already holds a cache; pass --overwrite",
    )
    assert (out / MANIFEST).read_text() == before
    assert (
        cli("cache", "import", "long", source, "--out", out, "--overwrite", *LONG_ARGS).exit_code
        == 0
    )
    assert verify_cache(out) == []


def test_header_only_routerbench_csv(tmp_path: Path) -> None:
    header = (
        (SHARED_DATA / "routerbench" / "arc_challenge_test.csv").open(encoding="utf-8").readline()
    )
    path = tmp_path / "arc_challenge_test.csv"
    path.write_text(header, encoding="utf-8")
    one_line_error(
        cli(
            "cache",
            "import",
            "routerbench",
            path,
            "--out",
            tmp_path / "c",
            "--embedding",
            "hashing",
        ),
        f"{path}: no rows",
    )


def test_two_build_cache_runs_into_one_out(write_recipe, tmp_path: Path) -> None:
    recipe = write_recipe(
        synthetic_recipe_text(train=4, test=2, depth=1, latency_ms=300)
    )  # 18 calls, 5.4 s
    out = tmp_path / "c"
    command = [
        sys.executable,
        "-m",
        "dersim",
        "build-cache",
        str(recipe),
        "--out",
        str(out),
        "--quiet",
    ]
    first = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not (out / LOCK_FILE).exists() or not (out / LOCK_FILE).read_text().strip():
        assert time.monotonic() < deadline and first.poll() is None, (
            "the first build never took the lock"
        )
        time.sleep(0.02)
    started = time.monotonic()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert first.poll() is None, (
        "the first build ended before the second started; the test proves nothing"
    )
    error_line(
        second.returncode, second.stderr, f"{out}: another writer (PID {first.pid}, dersim build)"
    )
    assert time.monotonic() - started < 30
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert verify_cache(out) == []


# ---------------------------------------------------------------------------------------------
# What imported caches report
# ---------------------------------------------------------------------------------------------


def test_cache_info_shows_real_call_counts_and_question_marks_for_unknowns(tmp_path: Path) -> None:
    source = long_jsonl(tmp_path / "answers.jsonl", LONG_ROWS)
    out = tmp_path / "c"
    assert (
        cli(
            "cache", "import", "long", source, "--out", out, "--max-calls", "3", *LONG_ARGS
        ).exit_code
        == 0
    )
    info = json.loads(cli("cache", "info", out, "--json").stdout)
    assert info["transitions"] > 12
    for expert in info["experts"]:
        assert expert["calls"] == 6  # each model answered the 6 questions once
        assert (
            expert["mean_latency_s"] is None
            and expert["mean_cost_usd"] is None
            and expert["params_b"] is None
        )
    table = cli("cache", "info", out).stdout
    small = next(line for line in table.splitlines() if "small" in line)
    assert [cell.strip() for cell in small.split("│")[2:6]] == [
        "?",
        "6",
        "?",
        "?",
    ]  # params, calls, s, USD


def test_booleans_are_scores_in_csv_and_jsonl(tmp_path: Path) -> None:
    rows = [{**row, "grade": row["grade"] == 1.0} for row in LONG_ROWS]
    jsonl = long_jsonl(tmp_path / "answers.jsonl", rows)
    csv = tmp_path / "answers.csv"
    csv.write_text(
        "qid,prompt,llm,output,grade\n"
        + "".join(
            f"{r['qid']},{r['prompt']},{r['llm']},{r['output']},{str(r['grade']).lower()}\n"
            for r in rows
        ),
        encoding="utf-8",
    )
    scores = []
    for source in (jsonl, csv):
        out = tmp_path / source.suffix[1:]
        assert cli("cache", "import", "long", source, "--out", out, *LONG_ARGS).exit_code == 0
        scores.append(pq.read_table(out / STATES)["accuracy"].to_pylist())
    assert scores[0] == scores[1] and set(scores[0]) == {0.0, 1.0}


def test_verify_advice_for_missing_answers_depends_on_how_the_cache_was_made(
    write_recipe, tmp_path: Path
) -> None:
    source = long_jsonl(
        tmp_path / "answers.jsonl", LONG_ROWS[:-1]
    )  # the last question lacks one answer
    out = tmp_path / "imported"
    assert (
        cli(
            "cache", "import", "long", source, "--out", out, "--no-drop-incomplete", *LONG_ARGS
        ).exit_code
        == 0
    )
    failed = next(p for p in verify_cache(out) if "failed calls" in p)
    assert "re-import" in failed and "build-cache" not in failed
    experts = {
        e["name"]: e for e in json.loads(cli("cache", "info", out, "--json").stdout)["experts"]
    }
    assert (experts["small"]["calls"], experts["large"]["calls"]) == (
        6,
        5,
    )  # the missing answer was no call
    assert experts["large"]["failed"] == 1
    recipe = write_recipe(synthetic_recipe_text(train=3, test=1, fail_rate=0.5, retries=0))
    build_cache(load_recipe(recipe), tmp_path / "built", show_progress=False)
    assert "rerun build-cache" in next(
        p for p in verify_cache(tmp_path / "built") if "failed calls" in p
    )


def test_kill_9_leaves_no_lock_behind(write_recipe, tmp_path: Path) -> None:
    """The lock is the kernel's: a killed writer never blocks the rerun."""
    out = tmp_path / "c"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dersim.locking import directory_lock\n"
            "with directory_lock(sys.argv[1], 'build'):\n    print('locked', flush=True); "
            "time.sleep(60)",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    one_line_error(
        cli("build-cache", write_recipe(synthetic_recipe_text()), "--out", out, "--quiet"),
        f"PID {holder.pid}",
    )
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (
        cli("build-cache", write_recipe(synthetic_recipe_text()), "--out", out, "--quiet").exit_code
        == 0
    )
