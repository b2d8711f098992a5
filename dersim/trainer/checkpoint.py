"""Checkpoints of a whole policy grid: flax msgpack serialization (no pickle), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
    """Restore a checkpoint into the structure of `template` (shapes must match)."""
    path = directory / CHECKPOINT
    try:
        return serialization.from_bytes(template, path.read_bytes())
    except FileNotFoundError:
        raise DersimError(f"{path}: no checkpoint to resume from") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DersimError(f"{path}: checkpoint does not match this run's settings ({exc})") from None
