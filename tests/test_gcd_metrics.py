"""Hungarian-matched GCD accuracy: brute force, hand cases, and gathering across processes."""
import itertools
import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gcd.metrics import (
    GCDAccuracy,
    cluster_acc,
    confusion_matrix,
    count_matrix,
    matched_predictions,
    plot_confusion,
    split_cluster_acc_v1,
    split_cluster_acc_v2,
)


def brute_force_v2(y_true, y_pred, old_mask):
    """All optimal one-to-one matchings by enumeration -> (best All, set of (Old, New))."""
    d = max(y_true.max(), y_pred.max()) + 1
    best, splits = -1, set()
    for perm in itertools.permutations(range(d)):  # perm[c] = cluster matched to class c
        hit = np.array([perm[t] == p for t, p in zip(y_true, y_pred)])
        correct = hit.sum()
        old = hit[old_mask].mean() if old_mask.any() else 0.0
        new = hit[~old_mask].mean() if (~old_mask).any() else 0.0
        if correct > best:
            best, splits = correct, {(round(old, 12), round(new, 12))}
        elif correct == best:
            splits.add((round(old, 12), round(new, 12)))
    return best / len(y_true), splits


def brute_force_acc(y_true, y_pred):
    d = max(y_true.max(), y_pred.max()) + 1
    return max(sum(perm[t] == p for t, p in zip(y_true, y_pred))
               for perm in itertools.permutations(range(d))) / len(y_true)


def random_case(rng, n_classes, n_old, n):
    y_true = rng.integers(0, n_classes, size=n)
    y_pred = rng.integers(0, rng.integers(2, n_classes + 1), size=n)
    return y_true, y_pred, y_true < n_old


def test_v2_and_v1_against_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n_classes = int(rng.integers(2, 7))
        y_true, y_pred, old = random_case(rng, n_classes, int(rng.integers(1, n_classes)), 25)
        total, old_acc, new_acc = split_cluster_acc_v2(y_true, y_pred, old)
        best, splits = brute_force_v2(y_true, y_pred, old)
        assert total == pytest.approx(best)
        assert (round(old_acc, 12), round(new_acc, 12)) in splits
        v1_all, v1_old, v1_new = split_cluster_acc_v1(y_true, y_pred, old)
        assert v1_old == pytest.approx(brute_force_acc(y_true[old], y_pred[old]))
        assert v1_new == pytest.approx(brute_force_acc(y_true[~old], y_pred[~old]))
        assert v1_all == pytest.approx(old.mean() * v1_old + (1 - old.mean()) * v1_new)
        assert v1_all >= total - 1e-12  # v1 is the more lenient metric
        assert cluster_acc(y_true, y_pred) == pytest.approx(best)


def test_v1_differs_from_v2_when_a_cluster_serves_old_and_new():
    # Cluster 0 holds every sample: v1 may match it to class 0 (old) and class 1 (new) at once.
    y_true = np.array([0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 0, 0])
    old = y_true < 1
    assert split_cluster_acc_v1(y_true, y_pred, old) == (1.0, 1.0, 1.0)
    assert split_cluster_acc_v2(y_true, y_pred, old) == pytest.approx((0.6, 1.0, 0.0))


def test_v2_hand_computed():
    # w[p, c]: cluster 2 is mostly class 0, cluster 0 mostly class 1, cluster 1 mostly class 2.
    y_true = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([2, 2, 0, 0, 0, 0, 2, 1, 1, 0])
    old = y_true < 2  # classes 0, 1 old: 7 samples; class 2 new: 3 samples
    total, old_acc, new_acc = split_cluster_acc_v2(y_true, y_pred, old)
    assert total == pytest.approx(7 / 10)   # 2 + 3 + 2 matched
    assert old_acc == pytest.approx(5 / 7)
    assert new_acc == pytest.approx(2 / 3)
    matched = matched_predictions(y_true, y_pred)
    assert matched.tolist() == [0, 0, 1, 1, 1, 1, 0, 2, 2, 1]
    assert (matched == y_true).mean() == pytest.approx(total)


def test_empty_subsets_score_zero():
    y = np.array([0, 1, 1, 2])
    assert split_cluster_acc_v2(y, y, np.ones(4, bool)) == (1.0, 1.0, 0.0)
    assert split_cluster_acc_v2(y, y, np.zeros(4, bool)) == (1.0, 0.0, 1.0)
    assert split_cluster_acc_v1(y, y, np.ones(4, bool)) == (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="same length"):
        split_cluster_acc_v2(y, y, np.ones(3, bool))


def test_count_and_confusion_matrices_match_loops():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 5, 200), rng.integers(0, 7, 200)
    w = np.zeros((7, 7), int)
    cm = np.zeros((7, 7), int)
    for t, p in zip(y_true, y_pred):
        w[p, t] += 1
        cm[t, p] += 1
    assert np.array_equal(count_matrix(y_true, y_pred), w)
    assert np.array_equal(confusion_matrix(y_true, y_pred, 7), cm)
    assert confusion_matrix(y_true, np.full(200, -1), 7).sum() == 0


def test_plot_confusion_writes_png(tmp_path):
    cm = confusion_matrix([0, 1, 2, 2], [0, 2, 2, 2])
    data = plot_confusion(cm, tmp_path / "cm.png", num_old=2, class_names=["a", "b", "c"]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def _data():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 6, 70)
    # predictions: a permutation of the labels, with noise
    y_pred = np.array([5, 3, 4, 0, 1, 2])[y_true]
    noise = rng.random(70) < 0.35
    y_pred[noise] = rng.integers(0, 6, noise.sum())
    return torch.as_tensor(y_true), torch.as_tensor(y_pred), torch.as_tensor(y_true < 3)


def test_metric_accumulates_batches_and_accepts_logits():
    y_true, y_pred, old = _data()
    metric = GCDAccuracy()
    for lo, hi in [(0, 5), (5, 40), (40, 70)]:
        logits = torch.nn.functional.one_hot(y_pred[lo:hi], 8).float()
        metric.update(logits, y_true[lo:hi], old[lo:hi])
    result = metric.compute()
    expected = split_cluster_acc_v2(y_true.numpy(), y_pred.numpy(), old.numpy())
    assert [result[f"{p}_v2"].item() for p in ("all", "old", "new")] == pytest.approx(expected)
    expected = split_cluster_acc_v1(y_true.numpy(), y_pred.numpy(), old.numpy())
    assert [result[f"{p}_v1"].item() for p in ("all", "old", "new")] == pytest.approx(expected)


def _ddp_worker(rank, world_size, port, out_dir):
    torch.set_num_threads(1)  # the forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        y_true, y_pred, old = _data()
        shard = slice(0, 23) if rank == 0 else slice(23, 70)  # uneven shards
        metric = GCDAccuracy()
        metric.update(y_pred[shard], y_true[shard], old[shard])
        result = {k: v.item() for k, v in metric.compute().items()}
        local = split_cluster_acc_v2(y_true[shard].numpy(), y_pred[shard].numpy(),
                                     old[shard].numpy())
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump({"gathered": result, "local_v2": local}, handle)
    finally:
        dist.destroy_process_group()


def test_metric_gathers_across_two_processes(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fork, not spawn: a spawned child re-imports torch + torchmetrics (~10-20 s each on 2 cores).
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    y_true, y_pred, old = _data()
    expected = GCDAccuracy()
    expected.update(y_pred, y_true, old)
    expected = {k: v.item() for k, v in expected.compute().items()}
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["gathered"] == pytest.approx(expected)
        # a per-rank matching would have given different numbers on this data
        assert got["local_v2"] != pytest.approx([expected[f"{p}_v2"] for p in ("all", "old", "new")])
