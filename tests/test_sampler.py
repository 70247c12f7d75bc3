"""Algorithm 1 batching: MultiTaskBatchSampler (proportional / temperature modes, length bucketing,
resume, DDP sharding, ranking groups)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtkd.sampler import MultiTaskBatchSampler, SamplingMode

BS = 8


def make_tasks():
    """Three tasks of different sizes; the indices are a subset of each split (as after caps)."""
    return {
        "big": np.arange(0, 400, 2),  # 200 examples, split of 400
        "mid": np.arange(77),  # 77 examples: last batch is partial
        "small": np.array([3, 9, 11, 20, 21]),  # 5 examples: one partial batch
    }


def task_sequence(batches):
    return [t for t, _ in batches]


def n_switches(seq):
    return sum(a != b for a, b in zip(seq, seq[1:], strict=False))


def as_key(batches):
    return [(t, tuple(int(i) for i in b)) for t, b in batches]


def check_exactly_once(batches, tasks, batch_size=BS):
    """Every example of every task appears exactly once; every batch belongs to one task."""
    seen = {t: [] for t in tasks}
    for t, b in batches:
        assert t in tasks
        assert 1 <= len(b) <= batch_size
        assert set(b.tolist()) <= set(tasks[t].tolist()), f"batch of {t} holds indices of another task"
        seen[t].extend(b.tolist())
    for t, idx in tasks.items():
        assert sorted(seen[t]) == sorted(idx.tolist()), t


# ------------------------------------------------------------------------------ proportional mode
def test_proportional_every_example_once_per_epoch_single_task_batches():
    tasks = make_tasks()
    s = MultiTaskBatchSampler(tasks, BS, seed=0)
    expected = sum(math.ceil(len(v) / BS) for v in tasks.values())  # 25 + 10 + 1
    assert len(s) == expected == 36
    assert s.batches_per_task == {"big": 25, "mid": 10, "small": 1}
    for epoch in range(3):
        batches = s.epoch_batches(epoch)
        assert len(batches) == expected
        check_exactly_once(batches, tasks)
        assert Counter(task_sequence(batches)) == {"big": 25, "mid": 10, "small": 1}


def test_iteration_yields_epoch_then_advances():
    tasks = make_tasks()
    s = MultiTaskBatchSampler(tasks, BS, seed=3)
    first = list(s)
    assert s.epoch == 1 and s.position == 0
    assert as_key([(t, i) for t, i, _ in first]) == as_key(s.epoch_batches(0))
    assert all(n == len(i) for _, i, n in first)  # global batch size (world_size 1)
    second = list(s)
    assert as_key([(t, i) for t, i, _ in second]) == as_key(s.epoch_batches(1))
    assert s.epoch == 2


def test_batches_are_interleaved_and_reshuffled_each_epoch():
    tasks = {"a": np.arange(160), "b": np.arange(160)}  # 20 batches each
    s = MultiTaskBatchSampler(tasks, BS, seed=0)
    e0, e1 = s.epoch_batches(0), s.epoch_batches(1)
    # blocked order (all of a, then all of b) has 1 switch; a random merge has ~20
    assert n_switches(task_sequence(e0)) >= 8
    assert n_switches(task_sequence(e1)) >= 8
    assert task_sequence(e0) != task_sequence(e1)
    # the examples inside the batches are reshuffled too, not only the batch order
    assert {k for k in as_key(e0)} != {k for k in as_key(e1)}
    # within a task, examples are shuffled (not consecutive chunks of the split)
    a_batches = [b.tolist() for t, b in e0 if t == "a"]
    assert sum(b == list(range(b[0], b[0] + len(b))) for b in a_batches) <= 1


def test_same_seed_same_batches_other_seed_differs():
    tasks = make_tasks()
    a = MultiTaskBatchSampler(tasks, BS, seed=7).epoch_batches(2)
    b = MultiTaskBatchSampler(tasks, BS, seed=7).epoch_batches(2)
    c = MultiTaskBatchSampler(tasks, BS, seed=8).epoch_batches(2)
    assert as_key(a) == as_key(b)
    assert as_key(a) != as_key(c)
    check_exactly_once(c, tasks)


def test_batch_size_smaller_than_world_size_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        MultiTaskBatchSampler(make_tasks(), 1, seed=0, world_size=2)


# ---------------------------------------------------------------------------------- bucketing
def padding(batches, lengths):
    return sum(int(lengths[t][b].max()) * len(b) - int(lengths[t][b].sum()) for t, b in batches)


def test_length_bucketing_keeps_guarantees_and_reduces_padding():
    rng = np.random.default_rng(0)
    tasks = {"a": np.arange(300), "b": np.arange(0, 500, 2)}
    lengths = {"a": rng.integers(5, 200, size=300), "b": rng.integers(5, 200, size=500)}
    plain = MultiTaskBatchSampler(tasks, BS, seed=1, lengths=lengths, bucket=0)
    bucketed = MultiTaskBatchSampler(tasks, BS, seed=1, lengths=lengths, bucket=5)
    assert len(bucketed) == len(plain) == math.ceil(300 / BS) + math.ceil(250 / BS)
    for epoch in range(2):
        eb = bucketed.epoch_batches(epoch)
        check_exactly_once(eb, tasks)
        assert n_switches(task_sequence(eb)) >= 10
        pad_b, pad_p = padding(eb, lengths), padding(plain.epoch_batches(epoch), lengths)
        assert pad_b < 0.5 * pad_p, (pad_b, pad_p)
    e0, e1 = bucketed.epoch_batches(0), bucketed.epoch_batches(1)
    assert as_key(e0) != as_key(e1)
    # the batches of one task are not in sorted-length order (batch order stays random)
    maxes = [int(lengths["a"][b].max()) for t, b in e0 if t == "a"]
    assert maxes != sorted(maxes) and maxes != sorted(maxes, reverse=True)
    assert as_key(MultiTaskBatchSampler(tasks, BS, seed=1, lengths=lengths, bucket=5).epoch_batches(0)) == as_key(e0)


# -------------------------------------------------------------------------------- temperature
def test_temperature_probabilities_and_epoch_size():
    tasks = make_tasks()
    s = MultiTaskBatchSampler(tasks, BS, seed=0, mode=SamplingMode.TEMPERATURE, temperature=2.0, epoch_size=50)
    n = np.array([200.0, 77.0, 5.0])
    expected = np.sqrt(n) / np.sqrt(n).sum()
    p = s.probabilities()
    assert list(p) == ["big", "mid", "small"]
    np.testing.assert_allclose(list(p.values()), expected, rtol=1e-12)
    assert len(s) == 50
    assert len(s.epoch_batches(0)) == 50 and len(s.epoch_batches(3)) == 50
    assert len(list(s)) == 50 and s.epoch == 1


def test_temperature_draw_frequencies_match_probabilities():
    tasks = make_tasks()
    s = MultiTaskBatchSampler(tasks, BS, seed=0, mode="temperature", temperature=2.0, epoch_size=1000)
    counts = Counter()
    for epoch in range(6):
        counts.update(task_sequence(s.epoch_batches(epoch)))
    total = sum(counts.values())
    assert total == 6000
    for t, p in s.probabilities().items():
        assert abs(counts[t] / total - p) < 0.02, (t, counts[t] / total, p)


def test_temperature_one_is_proportional():
    tasks = make_tasks()
    t1 = MultiTaskBatchSampler(tasks, BS, seed=0, mode="temperature", temperature=1.0)
    prop = MultiTaskBatchSampler(tasks, BS, seed=0)
    n = np.array([200.0, 77.0, 5.0])
    np.testing.assert_allclose(list(t1.probabilities().values()), n / n.sum(), rtol=1e-12)
    # proportional mode draws each task's batches once: its share is batches / all batches
    np.testing.assert_allclose(list(prop.probabilities().values()), np.array([25, 10, 1]) / 36, rtol=1e-12)
    np.testing.assert_allclose(list(t1.probabilities().values()), list(prop.probabilities().values()), atol=0.02)
    # without epoch_size, an epoch has the natural number of batches
    assert len(t1) == len(prop) == 36


def test_temperature_mode_streams_whole_passes_over_each_task():
    """A task's consecutive batches (across epochs) run through complete passes over its data."""
    tasks = make_tasks()
    s = MultiTaskBatchSampler(tasks, BS, seed=5, mode="temperature", temperature=3.0, epoch_size=40)
    stream = {t: [] for t in tasks}
    for epoch in range(5):
        for t, b in s.epoch_batches(epoch):
            stream[t].append(b)
    per = s.batches_per_task
    for t, batches in stream.items():
        full_passes = len(batches) // per[t]
        assert full_passes >= 1, t
        for k in range(full_passes):
            flat = np.concatenate(batches[k * per[t] : (k + 1) * per[t]])
            assert sorted(flat.tolist()) == sorted(tasks[t].tolist()), (t, k)


# ------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("mode", ["proportional", "temperature"])
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(mode):
    tasks = make_tasks()
    kw = dict(mode=mode, temperature=2.0, epoch_size=30)
    ref = MultiTaskBatchSampler(tasks, BS, seed=11, **kw)
    list(ref)  # epoch 0
    epoch1 = [(t, i.copy()) for t, i, _ in ref]

    run = MultiTaskBatchSampler(tasks, BS, seed=11, **kw)
    list(run)
    it = iter(run)
    done = [next(it) for _ in range(7)]
    state = run.state_dict()
    assert state["epoch"] == 1 and state["position"] == 7
    assert as_key([(t, i) for t, i, _ in done]) == as_key(epoch1[:7])

    fresh = MultiTaskBatchSampler(tasks, BS, seed=11, **kw)
    fresh.load_state_dict(state)
    rest = [(t, i) for t, i, _ in fresh]
    assert as_key(rest) == as_key(epoch1[7:])
    assert fresh.epoch == 2 and fresh.position == 0
    # and the following epoch matches an uninterrupted run
    assert as_key([(t, i) for t, i, _ in fresh]) == as_key([(t, i) for t, i, _ in ref])


def test_resume_at_epoch_end_starts_next_epoch():
    tasks = make_tasks()
    s = MultiTaskBatchSampler(tasks, BS, seed=2)
    list(s)
    fresh = MultiTaskBatchSampler(tasks, BS, seed=2)
    fresh.load_state_dict(s.state_dict())
    assert as_key([(t, i) for t, i, _ in fresh]) == as_key(s.epoch_batches(1))


# ---------------------------------------------------------------------------------------- DDP
@pytest.mark.parametrize("mode", ["proportional", "temperature"])
def test_ddp_ranks_get_disjoint_halves_of_the_same_global_batch(mode):
    tasks = make_tasks()
    kw = dict(mode=mode, temperature=2.0, epoch_size=40)
    glob = MultiTaskBatchSampler(tasks, BS, seed=4, **kw)
    r0 = MultiTaskBatchSampler(tasks, BS, seed=4, rank=0, world_size=2, **kw)
    r1 = MultiTaskBatchSampler(tasks, BS, seed=4, rank=1, world_size=2, **kw)
    assert len(r0) == len(r1) == len(glob)
    n = 0
    for (tg, ig, ng), (t0, i0, n0), (t1, i1, n1) in zip(glob, r0, r1, strict=True):
        assert tg == t0 == t1  # one task per update across ranks
        assert ng == n0 == n1 == len(ig)
        assert not set(i0.tolist()) & set(i1.tolist())
        assert sorted(i0.tolist() + i1.tolist()) == sorted(ig.tolist())
        assert abs(len(i0) - len(i1)) <= 1
        n += 1
    assert n == len(glob)


def test_ddp_batch_smaller_than_world_size_is_repeated():
    s0 = MultiTaskBatchSampler({"t": np.array([5])}, 4, seed=0, rank=0, world_size=2)
    s1 = MultiTaskBatchSampler({"t": np.array([5])}, 4, seed=0, rank=1, world_size=2)
    ((_, i0, n0),), ((_, i1, n1),) = list(s0), list(s1)
    assert i0.tolist() == [5] and i1.tolist() == [5] and n0 == n1 == 2


def test_ddp_batch_smaller_than_world_size_goes_whole_to_every_rank_and_counts_exactly():
    """3 examples, 4 ranks: every rank gets all 3 and the count is 12, so the loop's
    `sum * 4 / 12` averaged over the ranks is the plain mean (before: the batch was resized to
    [a, b, c, a] and `a` counted twice)."""
    ranks = [MultiTaskBatchSampler({"t": np.array([5, 6, 7])}, 4, seed=0, rank=r, world_size=4) for r in range(4)]
    outs = [list(s)[0] for s in ranks]
    assert all(sorted(i.tolist()) == [5, 6, 7] and n == 12 for _, i, n in outs)
    loss = {5: 1.0, 6: 2.0, 7: 6.0}
    assert np.mean([sum(loss[j] for j in i) * 4 / n for _, i, n in outs]) == pytest.approx(3.0)


# ------------------------------------------------------------------------------ ranking groups
def grouped_task(seed=0, n_groups=40):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, size=n_groups)
    gid = np.repeat(rng.permutation(n_groups), sizes)  # group ids not sorted by position
    return gid


def check_whole_groups(batches, task, gid):
    for t, b in batches:
        if t != task:
            continue
        in_batch = Counter(gid[b].tolist())
        for g, c in in_batch.items():
            assert c == int((gid == g).sum()), f"group {g} split across batches"


def test_ranking_groups_are_never_split():
    gid = grouped_task()
    n = len(gid)
    tasks = {"rank": np.arange(n), "cls": np.arange(50)}
    s = MultiTaskBatchSampler(tasks, BS, seed=0, groups={"rank": gid})
    for epoch in range(3):
        batches = s.epoch_batches(epoch)
        check_exactly_once(batches, tasks, batch_size=BS + 6)
        check_whole_groups(batches, "rank", gid)
        # a batch closes as soon as it reaches the batch size
        for t, b in batches:
            if t == "rank":
                groups_in = list(dict.fromkeys(gid[b].tolist()))
                assert len(b) - int((gid == groups_in[-1]).sum()) < BS


def test_ranking_groups_with_a_subset_of_examples():
    gid = grouped_task(seed=1)
    keep = np.flatnonzero(np.isin(gid, np.arange(0, 40, 2)))  # caps keep whole groups here
    s = MultiTaskBatchSampler({"rank": keep}, BS, seed=0, groups={"rank": gid})
    batches = s.epoch_batches(0)
    check_exactly_once(batches, {"rank": keep}, batch_size=BS + 6)
    check_whole_groups(batches, "rank", gid)


def test_ranking_groups_in_temperature_mode():
    """Packing whole groups gives each pass a different number of batches; temperature mode must
    still stream complete passes (this raised IndexError before)."""
    gid = grouped_task()
    n = len(gid)
    tasks = {"rank": np.arange(n), "cls": np.arange(30)}
    s = MultiTaskBatchSampler(
        tasks, BS, seed=0, mode="temperature", temperature=1.0, epoch_size=50, groups={"rank": gid}
    )
    pass_lens = [len(s._task_batches("rank", r)) for r in range(8)]
    assert len(set(pass_lens)) > 1  # the case this test is about
    stream = []
    for epoch in range(5):
        batches = s.epoch_batches(epoch)
        assert len(batches) == 50
        check_whole_groups(batches, "rank", gid)
        stream += [b for t, b in batches if t == "rank"]
    pos = 0
    for r, k in enumerate(pass_lens):
        if pos + k > len(stream):
            break
        flat = np.concatenate(stream[pos : pos + k])
        assert sorted(flat.tolist()) == list(range(n)), r
        pos += k
    assert pos > 0


# ------------------------------------------------------------------------------------ property
@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
    batch_size=st.integers(2, 9),
    bucket=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 3),
    world=st.integers(1, 2),
)
def test_property_exactly_once_and_shards_partition(sizes, batch_size, bucket, seed, epoch, world):
    tasks = {f"t{i}": np.arange(n) * 3 + i for i, n in enumerate(sizes)}
    rng = np.random.default_rng(seed)
    lengths = {t: rng.integers(1, 50, size=int(v.max()) + 1) for t, v in tasks.items()}
    glob = MultiTaskBatchSampler(tasks, batch_size, seed, lengths=lengths, bucket=bucket)
    batches = glob.epoch_batches(epoch)
    assert len(batches) == len(glob) == sum(math.ceil(n / batch_size) for n in sizes)
    check_exactly_once(batches, tasks, batch_size)
    ranks = [
        MultiTaskBatchSampler(tasks, batch_size, seed, lengths=lengths, bucket=bucket, rank=r, world_size=world)
        for r in range(world)
    ]
    for (t, b), *parts in zip(batches, *(r.epoch_batches(epoch) for r in ranks), strict=True):
        shards = [r.shard(b) for r in ranks]
        assert all(pt == t for pt, _ in parts)
        if len(b) >= world:
            assert sorted(np.concatenate(shards).tolist()) == sorted(b.tolist())


# ------------------------------------------------------------------------------ ranking under DDP
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_never_splits_a_group_across_ranks(world):
    """Before: `indices[rank::world_size]` cut a query's candidates across ranks, so each rank's
    listwise softmax saw part of the group."""
    gid = grouped_task(seed=2)
    tasks = {"rank": np.arange(len(gid)), "cls": np.arange(30)}
    glob = MultiTaskBatchSampler(tasks, BS, seed=3, groups={"rank": gid})
    ranks = [
        MultiTaskBatchSampler(tasks, BS, seed=3, groups={"rank": gid}, rank=r, world_size=world) for r in range(world)
    ]
    for epoch in range(2):
        for (t, b), *parts in zip(glob.epoch_batches(epoch), *(r.epoch_batches(epoch) for r in ranks), strict=True):
            assert all(pt == t and np.array_equal(pb, b) for pt, pb in parts)  # batches do not depend on world_size
            splits = [r.split(b, t) for r in ranks]
            if t != "rank":
                continue
            n_groups = len(set(gid[b].tolist()))
            if n_groups < world:  # whole batch on every rank, counted world times
                assert all(np.array_equal(i, b) and n == len(b) * world for i, n in splits)
                continue
            assert all(n == len(b) for _, n in splits)
            assert sorted(np.concatenate([i for i, _ in splits]).tolist()) == sorted(b.tolist())
            owners = {}
            for r, (i, _) in enumerate(splits):
                assert len(i) > 0
                for g in set(gid[i].tolist()):
                    assert owners.setdefault(g, r) == r, f"group {g} on ranks {owners[g]} and {r}"
                    assert int((gid[i] == g).sum()) == int((gid[b] == g).sum())
            sizes = sorted(Counter(gid[b].tolist()).values(), reverse=True)
            loads = [len(i) for i, _ in splits]
            assert max(loads) - min(loads) <= sizes[0]  # greedy balance: off by at most one group


def test_ddp_grouped_loss_scaling_equals_the_one_process_mean():
    """The loop's `per_example.sum() * world_size / count`, averaged over the ranks (DDP), equals
    one process's `per_example.sum() / len(batch)` for the ranking loss with uneven group splits,
    and also when a batch has fewer groups than ranks."""
    import torch

    from mtkd.heads.ranking import ranking_loss

    rng = np.random.default_rng(0)
    gid = np.repeat(np.arange(12), [1, 5, 3, 2, 6, 1, 4, 2, 3, 1, 5, 2])
    labels = (rng.random(len(gid)) < 0.4).astype(np.int64)
    scores = rng.normal(size=len(gid))

    def loss_of(i):
        return ranking_loss(torch.tensor(scores[i]), torch.tensor(labels[i]), torch.tensor(gid[i]), positive=1)

    for world in (2, 3):
        ranks = [
            MultiTaskBatchSampler({"q": np.arange(len(gid))}, 6, seed=1, groups={"q": gid}, rank=r, world_size=world)
            for r in range(world)
        ]
        for batch in [np.arange(len(gid)), np.flatnonzero(gid == 4), *ranks[0].epoch_batches(0)]:
            batch = batch[1] if isinstance(batch, tuple) else batch
            one = float(loss_of(batch).sum()) / len(batch)
            ddp = np.mean([float(loss_of(i).sum()) * world / n for i, n in (r.split(batch, "q") for r in ranks)])
            assert ddp == pytest.approx(one, rel=1e-9)
