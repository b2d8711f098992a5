"""Checkpoints of a whole policy grid, and what a run directory says it was trained on.

A checkpoint is flax msgpack (no pickle), written atomically: a msgpack map holding the state's
bytes and their sha256, so one rename replaces both and a checkpoint never disagrees with its
own hash. Loading checks the hash (a flipped bit anywhere is refused, not routed) and that every
weight is finite (the one non-finite value a state holds by design is the -inf val return of a
policy not evaluated yet).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import msgpack
import numpy as np
from flax import serialization

from dersim.errors import DersimError

CHECKPOINT = "checkpoint.msgpack"
_NOT_EVALUATED = "val_return"  # -inf until a policy's first val evaluation
_RETRAIN = "train the run again with --overwrite"


def save_checkpoint(directory: Path, state: Any) -> Path:
    """Write `state` (any pytree of arrays) and its sha256 to `directory/checkpoint.msgpack`,
    atomically."""
    path = directory / CHECKPOINT
    payload = serialization.to_bytes(state)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(
        msgpack.packb({"sha256": hashlib.sha256(payload).hexdigest(), "state": payload})
    )
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: Path, template: Any) -> Any:
    """Restore a checkpoint into the structure of `template` (shapes must match). A file that does
    not decode (truncated, damaged), one whose bytes do not match its sha256, one with non-finite
    weights and one that decodes to another structure get different one-line errors."""
    path = directory / CHECKPOINT
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DersimError(f"{path}: no checkpoint (the run has not finished a chunk yet)") from None
    payload = _verified_payload(path, raw)
    try:
        state = serialization.msgpack_restore(payload)
    except Exception as exc:  # msgpack raises several error types for cut or damaged bytes
        raise DersimError(
            f"{path}: damaged checkpoint ({type(exc).__name__}); {_RETRAIN}"
        ) from None
    where = _non_finite(state)
    if where is not None:
        raise DersimError(f"{path}: non-finite weights (NaN or inf in {where}); {_RETRAIN}")
    try:
        restored = serialization.from_state_dict(template, state)
    except (ValueError, KeyError, TypeError) as exc:
        raise DersimError(
            f"{path}: checkpoint does not match this run's settings ({exc})"
        ) from None
    shapes = [getattr(x, "shape", ()) for x in jax.tree.leaves(template)]
    if shapes != [getattr(x, "shape", ()) for x in jax.tree.leaves(restored)]:
        raise DersimError(
            f"{path}: checkpoint does not match this run's settings (array shapes differ)"
        )
    return restored


def _verified_payload(path: Path, raw: bytes) -> bytes:
    """The state's bytes, once they match the sha256 stored beside them."""
    try:
        record = msgpack.unpackb(raw)
    except Exception as exc:  # as above: cut bytes raise several error types
        raise DersimError(
            f"{path}: truncated or damaged checkpoint ({type(exc).__name__}); {_RETRAIN}"
        ) from None
    if not isinstance(record, dict) or set(record) != {"sha256", "state"}:
        old = isinstance(record, dict) and "groups" in record
        raise DersimError(
            f"{path}: "
            + ("written by an older dersim (no sha256)" if old else "not a dersim checkpoint")
            + f"; {_RETRAIN}"
        )
    payload = record["state"]
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != record["sha256"]:
        raise DersimError(
            f"{path}: does not match its sha256 (damaged or edited since it was written); "
            f"{_RETRAIN}"
        )
    return payload


def _non_finite(tree: Any, where: str = "") -> str | None:
    """The path of the first float array holding NaN or inf (-inf allowed in val returns), or
    None."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            found = _non_finite(value, f"{where}/{key}" if where else str(key))
            if found is not None:
                return found
        return None
    values = np.asarray(tree)
    if values.dtype.kind != "f":
        return None
    if where.rsplit("/", 1)[-1] == _NOT_EVALUATED:
        values = values[~np.isneginf(values)]
    return None if np.isfinite(values).all() else where


def check_run_cache(run_dir: Path, cache: Path | None) -> None:
    """Refuse a cache other than the one the run trained on: its manifest digest
    (`dersim.cache.files.manifest_digest`) must be the one run.json records, so a moved copy of
    the run's cache passes and a rebuilt or different one does not. `cache` is the --cache option
    (None: the cache at the path run.json records). A run.json that does not read is left to the
    trainer's `from_run`, which reports it."""
    from dersim.cache.files import manifest_digest
    from dersim.trainer.run import RUN_FILE

    record_path = run_dir / RUN_FILE
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        recorded, trained_on = record.get("cache_digest"), Path(record["cache"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if not isinstance(recorded, str):
        raise DersimError(
            f"{record_path}: records no cache digest (written by an older dersim); {_RETRAIN}"
        )
    digest = manifest_digest(cache or trained_on)
    if digest != recorded:
        what = (
            f"--cache {cache}"
            if cache is not None
            else f"{trained_on} (rebuilt or replaced since training?)"
        )
        raise DersimError(
            f"{what}: not the cache the run trained on (its manifest sha256 is {digest[:12]}..., "
            f"{record_path} records {recorded[:12]}...)"
        )
