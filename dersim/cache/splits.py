"""Which questions a policy may learn from, be chosen on, and be reported on.

A cache holds `train` and `test` questions. A seeded part of the train questions (`val_fraction`,
default 0.2) is held out as `val`: policies, checkpoints and hyperparameters are chosen on it and
never trained on it, and figures are reported on `test`. So, for a run:
    train = the cache's train questions minus val;   val = the held-out part;   test = as cached.
`all` is every question. The same (questions, fraction, seed) always give the same split.
"""

from __future__ import annotations

import numpy as np

from dersim.errors import DersimError

SPLITS = ("train", "val", "test", "all")
DEFAULT_VAL_FRACTION = 0.2


def assign_splits(cache_splits: np.ndarray, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Per question (in cache order): 'train', 'val' or 'test'. The val questions are a seeded
    random round(fraction x n_train) of the cache's train questions (at least one when the fraction
    is positive and there are two or more)."""
    if not 0 <= val_fraction < 1 or not np.isfinite(val_fraction):
        raise DersimError(f"--val-fraction {val_fraction}: expected a number in [0, 1)")
    assigned = np.asarray(cache_splits, dtype=object).copy()
    train = np.flatnonzero(assigned == "train")
    n_val = int(round(val_fraction * len(train)))
    if val_fraction > 0 and len(train) >= 2:
        n_val = min(max(n_val, 1), len(train) - 1)
    chosen = train[np.random.default_rng(seed).permutation(len(train))[:n_val]]
    assigned[chosen] = "val"
    return assigned.astype(str)


def split_mask(assigned: np.ndarray, split: str) -> np.ndarray:
    """Boolean mask of the questions in `split` (one of SPLITS)."""
    if split not in SPLITS:
        raise DersimError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    return np.ones(len(assigned), dtype=bool) if split == "all" else np.asarray(assigned) == split
