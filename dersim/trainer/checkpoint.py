"""Checkpoints of a whole policy grid: flax msgpack serialization (no pickle), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
from flax import serialization

from dersim.errors import DersimError

CHECKPOINT = "checkpoint.msgpack"


def save_checkpoint(directory: Path, state: Any) -> Path:
    """Write `state` (any pytree of arrays) to `directory/checkpoint.msgpack`, atomically."""
    path = directory / CHECKPOINT
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(serialization.to_bytes(state))
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: Path, template: Any) -> Any:
    """Restore a checkpoint into the structure of `template` (shapes must match). A file that does
    not decode (truncated, damaged) and one that decodes to another structure get different
    one-line errors."""
    path = directory / CHECKPOINT
    try:
        state = serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise DersimError(f"{path}: no checkpoint (the run has not finished a chunk yet)") from None
    except Exception as exc:  # msgpack raises several error types for cut or damaged bytes
        raise DersimError(f"{path}: truncated or damaged checkpoint ({type(exc).__name__}); train the run again "
                          "with --overwrite") from None
    try:
        restored = serialization.from_state_dict(template, state)
    except (ValueError, KeyError, TypeError) as exc:
        raise DersimError(f"{path}: checkpoint does not match this run's settings ({exc})") from None
    shapes = [getattr(x, "shape", ()) for x in jax.tree.leaves(template)]
    if shapes != [getattr(x, "shape", ()) for x in jax.tree.leaves(restored)]:
        raise DersimError(f"{path}: checkpoint does not match this run's settings (array shapes differ)")
    return restored
