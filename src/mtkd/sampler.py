"""Algorithm 1 of the paper: single-task mini-batches from every task, merged and shuffled.

Each epoch is a pure function of (seed, epoch), so the sampler's whole state is (epoch, position):
a checkpoint stores two integers and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from enum import Enum

import numpy as np


class SamplingMode(str, Enum):
    PROPORTIONAL = "proportional"  # Algorithm 1: every batch of every task once per epoch
    TEMPERATURE = "temperature"  # draw the task of each batch with p_t ∝ n_t^(1/T), epoch_size batches


class MultiTaskBatchSampler:
    """Yields (task, indices) batches; `indices` index the task's training split.

    task_indices: task -> indices of the training examples to use (after caps).
    lengths: task -> token length of every example of the split (for length bucketing).
    bucket: if > 0, the shuffled examples of a task are cut into chunks of `bucket` batches and
        sorted by length within each chunk before batching, so a batch holds similar lengths (less
        padding) while the chunk and batch order stay random.
    groups: task -> group id of every example (ranking tasks: a batch holds whole groups).
    rank, world_size: under DDP every rank takes its share of the same global batch (`shard`), so
        each update is on one task across ranks. The batches do not depend on world_size.
    """

    def __init__(
        self,
        task_indices: dict[str, np.ndarray],
        batch_size: int,
        seed: int,
        mode: SamplingMode = SamplingMode.PROPORTIONAL,
        temperature: float = 1.0,
        epoch_size: int | None = None,
        lengths: dict[str, np.ndarray] | None = None,
        bucket: int = 0,
        groups: dict[str, np.ndarray] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the number of processes {world_size}")
        self.tasks = list(task_indices)
        self.task_indices = {t: np.asarray(v, dtype=np.int64) for t, v in task_indices.items()}
        self.batch_size, self.seed = batch_size, seed
        self.mode, self.temperature = SamplingMode(mode), temperature
        self.lengths, self.bucket, self.groups = lengths or {}, bucket, groups or {}
        self.rank, self.world_size = rank, world_size
        self.batches_per_task = {t: len(self._task_batches(t, 0)) for t in self.tasks}
        natural = sum(self.batches_per_task.values())
        self.epoch_size = natural if (self.mode == SamplingMode.PROPORTIONAL or not epoch_size) else int(epoch_size)
        self.epoch, self.position = 0, 0
        self._pass_len: dict[tuple[str, int], int] = {}  # (grouped task, pass) -> its number of batches

    # -- one task's batches for its `rep`-th pass over its data
    def _task_batches(self, task: str, rep: int) -> list[np.ndarray]:
        ti = self.tasks.index(task)
        rng = np.random.default_rng([self.seed, ti, rep])
        idx = self.task_indices[task]
        bs = self.batch_size
        if task in self.groups:  # ranking: shuffle whole groups, pack them into batches
            gid = self.groups[task][idx]
            order = np.argsort(gid, kind="stable")
            cuts = np.flatnonzero(np.diff(gid[order])) + 1
            units = np.split(idx[order], cuts)
            batches, cur = [], []
            for u in (units[i] for i in rng.permutation(len(units))):
                cur.append(u)
                if sum(map(len, cur)) >= bs:
                    batches.append(np.concatenate(cur))
                    cur = []
            if cur:
                batches.append(np.concatenate(cur))
            return batches
        perm = idx[rng.permutation(len(idx))]
        if self.bucket > 0 and task in self.lengths:
            lens = self.lengths[task]
            chunk = self.bucket * bs
            perm = np.concatenate(
                [c[np.argsort(lens[c], kind="stable")] for c in np.split(perm, range(chunk, len(perm), chunk))]
            )
            batches = [perm[i : i + bs] for i in range(0, len(perm), bs)]
            return [batches[i] for i in rng.permutation(len(batches))]
        return [perm[i : i + bs] for i in range(0, len(perm), bs)]

    def probabilities(self) -> dict[str, float]:
        """Chance that a batch comes from each task (temperature mode: p_t ∝ n_t^(1/T))."""
        n = np.array([len(self.task_indices[t]) for t in self.tasks], dtype=np.float64)
        if self.mode == SamplingMode.PROPORTIONAL:
            p = np.array([self.batches_per_task[t] for t in self.tasks], dtype=np.float64)
        else:
            p = n ** (1.0 / self.temperature)
        return dict(zip(self.tasks, p / p.sum(), strict=False))

    def _draws(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1_000_003, epoch])
        p = np.array(list(self.probabilities().values()))
        return rng.choice(len(self.tasks), size=self.epoch_size, p=p)

    def epoch_batches(self, epoch: int) -> list[tuple[str, np.ndarray]]:
        """All global batches of `epoch`, in order (before sharding across ranks)."""
        if self.mode == SamplingMode.PROPORTIONAL:
            merged = [(t, b) for t in self.tasks for b in self._task_batches(t, epoch)]
            order = np.random.default_rng([self.seed, 2_000_003, epoch]).permutation(len(merged))
            return [merged[i] for i in order]
        # temperature: each task streams through its own reshuffled passes over its data
        consumed = np.zeros(len(self.tasks), dtype=np.int64)
        for e in range(epoch):
            consumed += np.bincount(self._draws(e), minlength=len(self.tasks))
        out, cache = [], {}
        for ti in self._draws(epoch):
            t = self.tasks[ti]
            rep, k = self._locate(t, int(consumed[ti]))
            if (t, rep) not in cache:
                cache[(t, rep)] = self._task_batches(t, rep)
            out.append((t, cache[(t, rep)][k]))
            consumed[ti] += 1
        return out

    def _locate(self, task: str, consumed: int) -> tuple[int, int]:
        """(pass, batch within the pass) of a task's `consumed`-th batch. Packing whole groups makes
        the number of batches of a grouped task vary from pass to pass, so those passes are walked."""
        if task not in self.groups:
            return divmod(consumed, self.batches_per_task[task])
        rep = 0
        while True:
            if (task, rep) not in self._pass_len:
                self._pass_len[(task, rep)] = len(self._task_batches(task, rep))
            if consumed < self._pass_len[(task, rep)]:
                return rep, consumed
            consumed -= self._pass_len[(task, rep)]
            rep += 1

    def shard(self, indices: np.ndarray, task: str | None = None) -> np.ndarray:
        """This rank's part of a global batch of `task` (see `split`)."""
        return self.split(indices, task)[0]

    def split(self, indices: np.ndarray, task: str | None = None) -> tuple[np.ndarray, int]:
        """(this rank's indices, global count) for a global batch of `task`.

        Ungrouped tasks: `indices[rank::world_size]`. Grouped (ranking) tasks: whole groups, never
        a group split across ranks (the listwise softmax needs all of a query's candidates), dealt
        largest first to the rank with the fewest examples so far. A batch with fewer examples
        (groups) than ranks is given whole to every rank and counted world_size times.
        The global count is what the loop divides by: `per_example.sum() * world_size / count`,
        averaged over the ranks by DDP, is then the mean over the global batch, as in one process,
        however unevenly the groups split."""
        indices = np.asarray(indices)
        w = self.world_size
        if w == 1:
            return indices, len(indices)
        if task in self.groups:
            _, first, unit = np.unique(self.groups[task][indices], return_index=True, return_inverse=True)
            if len(first) < w:
                return indices, len(indices) * w
            sizes = np.bincount(unit)
            load, owner = np.zeros(w, dtype=np.int64), np.empty(len(first), dtype=np.int64)
            for u in sorted(range(len(first)), key=lambda u: (-sizes[u], first[u])):
                owner[u] = int(np.argmin(load))
                load[owner[u]] += sizes[u]
            return indices[owner[unit] == self.rank], len(indices)
        if len(indices) < w:
            return indices, len(indices) * w
        return indices[self.rank :: w], len(indices)

    def __len__(self) -> int:
        return self.epoch_size

    def __iter__(self):
        """Yield (task, this rank's indices, global count; see `split`) from the current position to the epoch end."""
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            task, idx = batches[self.position]
            self.position += 1
            yield (task, *self.split(idx, task))
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "epoch_size": self.epoch_size}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
