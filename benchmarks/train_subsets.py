"""The examples a round's training contenders share: a seeded subset of exactly steps x BATCH examples
of the config's capped training set, trained in one pass, so no contender gets an easier length mix.
A new seed each round: the subset changes from round to round."""

from __future__ import annotations

import numpy as np

from suite import BATCH, Env


def subset(indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded random subset of `indices` of size n (sorted)."""
    indices = np.asarray(indices)
    if n > len(indices):
        raise ValueError(f"asked for {n} examples of a set of {len(indices)}")
    return np.sort(np.random.default_rng(seed).choice(indices, size=n, replace=False)).astype(np.int64)


def allocate_batches(sizes: dict[str, int], n_batches: int) -> dict[str, int]:
    """Split n_batches over tasks in proportion to their (capped) training sizes, largest remainder."""
    total = sum(sizes.values())
    quota = {t: n_batches * s / total for t, s in sizes.items()}
    alloc = {t: int(q) for t, q in quota.items()}
    for t in sorted(quota, key=lambda t: quota[t] - alloc[t], reverse=True)[: n_batches - sum(alloc.values())]:
        alloc[t] += 1
    return {t: n for t, n in alloc.items() if n > 0}


def fixed_train_sets(env: Env, tasks: list[str], n_batches: int, seed: int) -> dict:
    """task -> TrainSet holding exactly (its share of) n_batches * BATCH examples drawn from the config's
    capped training set: one pass over them is exactly n_batches full single-task batches."""
    from mtkd.loop import TrainSet

    full = {t: env.data.train_set(t) for t in tasks}
    alloc = allocate_batches({t: len(s.indices) for t, s in full.items()}, n_batches) if len(tasks) > 1 else {tasks[0]: n_batches}
    return {t: TrainSet(full[t].data, subset(full[t].indices, k * BATCH, seed * 1009 + i))
            for i, (t, k) in enumerate(alloc.items())}
