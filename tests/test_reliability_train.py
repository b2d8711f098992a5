"""Issue 10, the train / eval side: a damaged cache, a bad option or a busy or read-only run
directory gives one line (exit status 2, no traceback) before any work; runs are byte-reproducible.
One test per defect, named after it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from dersim.builder.build import build_cache
from dersim.cache.schema import (
    MANIFEST,
    STATES,
    TRANSITIONS,
    file_sha256,
    write_manifest,
    write_parquet_atomic,
)
from dersim.cli import main
from dersim.locking import LOCK_FILE
from dersim.recipe import load_recipe

from conftest import REPO, synthetic_recipe_text

STRATEGYQA_CACHE = REPO / "cache" / "strategyqa"
FLIPPED_BYTE = 19583  # inside a data page of transitions.parquet's next_state_id column (issue 10)
FAST = (
    "--seeds",
    "1",
    "--steps",
    "640",
    "--num-envs",
    "8",
    "--rollout",
    "8",
    "--chunk-updates",
    "10",
    "--quiet",
)


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result: Result, *parts: str) -> str:
    """The single `error: ...` line of a run that exited 2 without a traceback; it holds `parts`."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def train(cache: Path, out: Path, *extra: object) -> Result:
    return cli(
        "train",
        "--vectorized",
        "--cache",
        cache,
        "--out",
        out,
        "--metric",
        "accuracy",
        "--p0",
        "0.5",
        *FAST,
        *extra,
    )


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability-train")
    (root / "recipe.toml").write_text(synthetic_recipe_text(train=12, test=4), encoding="utf-8")
    build_cache(load_recipe(root / "recipe.toml"), root / "cache", show_progress=False)
    return root / "cache"


@pytest.fixture
def cache_copy(small_cache: Path, tmp_path: Path) -> Path:
    return Path(
        shutil.copytree(
            small_cache, tmp_path / "copy", ignore=shutil.ignore_patterns("journal", LOCK_FILE)
        )
    )


@pytest.fixture(scope="module")
def trained(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert train(small_cache, out).exit_code == 0
    return out


def rewrite_column(cache: Path, name: str, column: str, edit) -> None:
    """Rewrite one column through `edit` and redo the manifest hash: only content checks can see
    it."""
    table = pq.read_table(cache / name)
    index = table.schema.get_field_index(column)
    field = table.schema.field(index)
    values = edit(table[column].to_numpy(zero_copy_only=False).copy())
    write_parquet_atomic(table.set_column(index, field, pa.array(values, field.type)), cache / name)
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["files"][name] = file_sha256(cache / name)
    write_manifest(manifest, cache)


def unwritable(directory: Path) -> Path:
    """Make `directory` (created) refuse new files, even to root (chmod, then the immutable
    attribute)."""
    directory.mkdir(exist_ok=True)
    directory.chmod(0o555)
    try:
        (directory / ".probe").touch()
    except OSError:
        return directory
    (directory / ".probe").unlink()
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    return directory


def writable_again(directory: Path) -> None:
    subprocess.run(["chattr", "-i", str(directory)], check=False, capture_output=True)
    directory.chmod(0o755)


def test_byte_flip_in_transitions_train_refuses(tmp_path: Path) -> None:
    cache = Path(
        shutil.copytree(STRATEGYQA_CACHE, tmp_path / "x", ignore=shutil.ignore_patterns(LOCK_FILE))
    )
    data = bytearray((cache / TRANSITIONS).read_bytes())
    data[FLIPPED_BYTE] ^= 0xFF
    (cache / TRANSITIONS).write_bytes(bytes(data))
    one_line_error(
        cli("train", "--vectorized", "--cache", cache, "--out", tmp_path / "rx", *FAST),
        str(cache / TRANSITIONS),
        "sha256 differs",
    )
    assert not (tmp_path / "rx" / "checkpoint.msgpack").exists(), "refused before any work"


def test_nan_scores_train_and_eval_refuse(cache_copy: Path, tmp_path: Path) -> None:
    assert train(cache_copy, tmp_path / "run").exit_code == 0
    rewrite_column(
        cache_copy, STATES, "accuracy", lambda v: np.where(np.arange(len(v)) % 7 == 3, np.nan, v)
    )
    one_line_error(
        train(cache_copy, tmp_path / "again"), str(cache_copy / STATES), "NaN", "accuracy"
    )
    # The damaged cache's manifest was re-hashed: it is no longer the cache the run trained on.
    one_line_error(
        cli("eval", "--run", tmp_path / "run"), str(cache_copy), "not the cache the run trained on"
    )


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_deleted_or_truncated_states_parquet_in_train_and_eval(
    cache_copy: Path, tmp_path: Path, damage: str
) -> None:
    assert train(cache_copy, tmp_path / "run").exit_code == 0
    path = cache_copy / STATES
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for result in (
        train(cache_copy, tmp_path / "again"),
        cli("eval", "--run", tmp_path / "run", "--no-verify"),
    ):
        one_line_error(result, str(path))


def test_out_of_range_next_state_id_in_train_and_eval(cache_copy: Path, tmp_path: Path) -> None:
    assert train(cache_copy, tmp_path / "run").exit_code == 0
    rewrite_column(
        cache_copy,
        TRANSITIONS,
        "next_state_id",
        lambda v: np.where(np.arange(len(v)) == 5, 10**6, v),
    )
    one_line_error(
        train(cache_copy, tmp_path / "again"), str(cache_copy / TRANSITIONS), "next_state_id"
    )
    assert not (tmp_path / "again" / "checkpoint.msgpack").exists(), (
        "refused before the first chunk"
    )
    # The damaged cache's manifest was re-hashed: it is no longer the cache the run trained on.
    one_line_error(
        cli("eval", "--run", tmp_path / "run"), str(cache_copy), "not the cache the run trained on"
    )


def test_read_only_run_directory_in_train_and_eval(
    small_cache: Path, trained: Path, tmp_path: Path
) -> None:
    blocked = unwritable(tmp_path / "ro")  # tmp_path itself stays writable
    try:
        one_line_error(train(small_cache, blocked), str(blocked), "not writable")
        one_line_error(
            train(small_cache, blocked / "run"), str(blocked / "run"), "cannot create the directory"
        )
        run = Path(shutil.copytree(trained, tmp_path / "ro-run"))
        (run / "pareto_test.png").unlink(missing_ok=True)
        unwritable(run)
        try:
            one_line_error(cli("eval", "--run", run), str(run), "not writable")
        finally:
            writable_again(run)
    finally:
        writable_again(blocked)


def test_out_under_a_regular_file_in_train(small_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    one_line_error(train(small_cache, tmp_path / "file" / "run"), "is a file")


def test_train_into_an_existing_run_needs_resume_or_overwrite(
    small_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert train(small_cache, out).exit_code == 0
    before = (out / "checkpoint.msgpack").read_bytes()
    one_line_error(train(small_cache, out), "already holds a run", "--resume", "--overwrite")
    assert (out / "checkpoint.msgpack").read_bytes() == before, "the old run is untouched"
    assert train(small_cache, out, "--overwrite", "--grid", "lr=1e-3").exit_code == 0
    assert json.loads((out / "run.json").read_text())["policies"][0]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        (("--p0", "2"), ("--p0 2.0", "within [0, 1]")),
        (("--alpha", "nan"), ("--alpha nan", "finite")),
        (("--grid", "lr=-1"), ("lr = -1 must be > 0",)),
        (("--cost-mode", "usd"), ("every 'usd' cost on the train split is zero",)),
        (("--judge-error", "-0.1"), ("--judge-error -0.1",)),
        (("--val-fraction", "1"), ("--val-fraction 1.0",)),
    ],
)
def test_nonsense_options_are_refused(
    small_cache: Path, tmp_path: Path, options: tuple[str, ...], parts: tuple[str, ...]
) -> None:
    one_line_error(train(small_cache, tmp_path / "run", *options), *parts)


def test_steps_below_one_chunk_say_what_they_round_to(small_cache: Path, tmp_path: Path) -> None:
    result = cli(
        "train",
        "--vectorized",
        "--algo",
        "ppo",
        "--cache",
        small_cache,
        "--out",
        tmp_path / "run",
        "--metric",
        "accuracy",
        "--seeds",
        "1",
        "--steps",
        "1",
        "--num-envs",
        "8",
        "--rollout",
        "8",
        "--chunk-updates",
        "10",
    )
    assert result.exit_code == 0, result.output
    assert "--steps 1 rounds up to 1 chunk(s) of 640: 640 env steps per PPO policy" in result.stderr


def test_runs_parquet_is_byte_identical_across_runs(small_cache: Path, tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        assert (
            train(small_cache, tmp_path / name, "--grid", "alpha=0,0.2", "--seeds", "2").exit_code
            == 0
        )
        assert cli("eval", "--run", tmp_path / name, "--json").exit_code == 0
        outputs.append((tmp_path / name / "runs.parquet").read_bytes())
    assert outputs[0] == outputs[1]


def test_resume_on_an_empty_directory_says_there_is_nothing_to_resume(
    small_cache: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    one_line_error(train(small_cache, tmp_path / "empty", "--resume"), "nothing to resume")


def test_truncated_checkpoint_is_reported_as_damaged(
    small_cache: Path, trained: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    checkpoint = run / "checkpoint.msgpack"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    message = one_line_error(cli("eval", "--run", run), str(checkpoint), "truncated or damaged")
    assert "settings" not in message


def test_eval_on_another_cache_keeps_the_runs_own_plot(
    small_cache: Path, trained: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    assert cli("eval", "--run", run).exit_code == 0
    own = (run / "pareto_test.png").read_bytes()
    other = Path(
        shutil.copytree(
            small_cache, tmp_path / "other", ignore=shutil.ignore_patterns("journal", LOCK_FILE)
        )
    )
    result = cli("eval", "--run", run, "--cache", other, "--json")
    assert result.exit_code == 0, result.output
    assert (run / "pareto_test.png").read_bytes() == own and (
        run / "pareto_test_other.png"
    ).exists()
    assert all(
        None not in row["route_lengths"].values() for row in json.loads(result.stdout)["baselines"]
    )
