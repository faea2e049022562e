"""Spectral concept filtering against a direct dense float64 implementation of the reference."""
import csv

import numpy as np
import pytest
import torch

from gcd.spectral import (
    SpectralAccumulator,
    plot_spectrum,
    resolve_method,
    spectral_filter,
    spectral_filter_details,
    threshold_count,
    write_concepts_csv,
)


def reference_filter(logits: np.ndarray, beta_e: float, beta_c: float):
    """The reference's spectral_filter(), dense, in float64 numpy (spec §1.3)."""
    z = logits - logits.max(1, keepdims=True)
    x = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    xc = x - x.mean(0, keepdims=True)
    cov = xc.T @ xc / (x.shape[0] - 1)
    values, vectors = np.linalg.eigh(cov)
    idx = np.argsort(values)[::-1]
    values, vectors = values[idx], vectors[:, idx]
    cumsum = np.cumsum(values)
    k_e = min(np.searchsorted(cumsum, beta_e * cumsum[-1]) + 1, len(values))
    scores = ((vectors[:, :k_e] ** 2) @ np.diag(values[:k_e])).sum(1)
    order = np.argsort(scores)[::-1]
    imp = np.cumsum(scores[order])
    n_keep = min(np.searchsorted(imp, beta_c * imp[-1]) + 1, len(scores))
    return order, int(n_keep), scores, int(k_e), cov


def random_logits(n, k, seed=0, dim=8):
    """Low-rank cosine logits / 0.05, the structure the teacher produces."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(k, dim, generator=gen, dtype=torch.float64), dim=1)
    return img @ txt.T / 0.05


@pytest.mark.parametrize("n,k", [(24, 70), (90, 35)])
@pytest.mark.parametrize("method", ["covariance", "gram"])
def test_matches_dense_reference(n, k, method):
    logits = random_logits(n, k, seed=n + k)
    order_ref, n_keep_ref, scores_ref, k_e_ref, _ = reference_filter(logits.numpy(), 0.95, 0.99)
    details = spectral_filter_details(logits, 0.95, 0.99, method=method, batch_size=16)
    assert details.method == method
    assert details.k_e == k_e_ref
    assert details.n_keep == n_keep_ref
    assert 1 < details.n_keep < k  # the thresholds actually select something here
    np.testing.assert_allclose(details.scores.numpy(), scores_ref, rtol=1e-8,
                               atol=1e-12 * scores_ref.max())
    assert details.order.tolist() == order_ref.tolist()
    order, n_keep, scores = spectral_filter(logits, 0.95, 0.99, method=method)
    assert order.dtype == torch.long and n_keep == n_keep_ref
    assert torch.equal(order, details.order) and torch.allclose(scores, details.scores)


def test_float32_logits_close_to_float64_reference():
    logits = random_logits(60, 120, seed=3)
    _, n_keep_ref, scores_ref, _, _ = reference_filter(logits.numpy(), 0.95, 0.99)
    for method in ("covariance", "gram"):
        d = spectral_filter_details(logits.float(), method=method)
        np.testing.assert_allclose(d.scores.numpy(), scores_ref, rtol=1e-3, atol=1e-6 * scores_ref.max())
        assert abs(d.n_keep - n_keep_ref) <= 1


def test_auto_picks_smaller_eigenproblem():
    assert resolve_method("auto", 10, 20) == "gram"
    assert resolve_method("auto", 20, 20) == "covariance"
    assert spectral_filter_details(random_logits(12, 30)).method == "gram"
    assert spectral_filter_details(random_logits(40, 30)).method == "covariance"
    with pytest.raises(ValueError, match="method"):
        resolve_method("svd", 1, 1)


@pytest.mark.parametrize("method", ["covariance", "gram"])
def test_streaming_uneven_batches_equals_one_shot(method):
    logits = random_logits(53, 41, seed=7)
    one_shot = spectral_filter_details(logits, 0.9, 0.95, method=method, batch_size=1000)
    acc = SpectralAccumulator(41, method=method, max_rows=60, buffer_dtype=torch.float64)
    for lo, hi in [(0, 1), (1, 8), (8, 21), (21, 53)]:
        acc.update(logits[lo:hi])
    streamed = acc.finalize(0.9, 0.95)
    assert streamed.n_rows == 53
    assert torch.equal(streamed.order, one_shot.order)
    assert streamed.n_keep == one_shot.n_keep and streamed.k_e == one_shot.k_e
    torch.testing.assert_close(streamed.scores, one_shot.scores, rtol=1e-10, atol=1e-15)
    with pytest.raises(RuntimeError, match="already"):
        acc.finalize()


@pytest.mark.parametrize("method", ["covariance", "gram"])
def test_merge_of_two_accumulators_equals_one_shot(method):
    logits = random_logits(40, 30, seed=11)
    one_shot = spectral_filter_details(logits, method=method)
    first = SpectralAccumulator(30, method=method, max_rows=40, buffer_dtype=torch.float64)
    second = SpectralAccumulator(30, method=method, max_rows=40, buffer_dtype=torch.float64)
    first.update(logits[:17])
    second.update(logits[17:])
    merged = first.merge_(second).finalize()
    torch.testing.assert_close(merged.scores, one_shot.scores, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("n,k", [(20, 45), (70, 25)])
def test_beta_c_one_keeps_everything(n, k):
    logits = random_logits(n, k, seed=5)
    for method in ("covariance", "gram"):
        d = spectral_filter_details(logits, 0.95, 1.0, method=method)
        assert (d.scores > 0).all()
        assert d.n_keep == k
        assert spectral_filter_details(logits, 0.95, 0.5, method=method).n_keep < k


@pytest.mark.parametrize("n,k", [(20, 45), (70, 25)])
def test_beta_e_one_scores_are_per_concept_variances(n, k):
    logits = random_logits(n, k, seed=9)
    probs = torch.softmax(logits, dim=1).numpy()
    variances = probs.var(axis=0, ddof=1)
    for method in ("covariance", "gram"):
        d = spectral_filter_details(logits, 1.0, 0.99, method=method)
        np.testing.assert_allclose(d.scores.numpy(), variances, rtol=1e-8, atol=1e-14)
        partial = spectral_filter_details(logits, 0.5, 0.99, method=method)
        assert (partial.scores.numpy() < variances - 1e-12).any()


def test_rank_is_bounded_and_eigenvalues_agree_between_paths():
    logits = random_logits(15, 40, seed=2, dim=30)
    cov = spectral_filter_details(logits, method="covariance")
    gram = spectral_filter_details(logits, method="gram")
    # rows sum to one and are centred: at most N - 1 = 14 positive eigenvalues
    assert gram.eigenvalues.numel() <= 14
    assert len(cov.eigenvalues) == 40
    torch.testing.assert_close(cov.eigenvalues[: gram.eigenvalues.numel()], gram.eigenvalues,
                               rtol=1e-8, atol=1e-14)
    assert cov.eigenvalues[14:].abs().max() < 1e-12 * cov.eigenvalues[0]


def test_threshold_count_hand_cases_and_numpy_equivalence():
    values = [5.0, 3.0, 2.0]  # cumsum 5, 8, 10
    assert threshold_count(values, 0.5) == 1
    assert threshold_count(values, 0.8) == 2
    assert threshold_count(values, 0.81) == 3
    assert threshold_count(values, 1.0) == 3
    assert threshold_count(values, 1.5) == 3  # clamped to the length
    assert threshold_count(torch.tensor([1.0, 0.0, 0.0]), 1.0) == 1
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = np.sort(rng.exponential(size=rng.integers(1, 30)))[::-1]
        beta = rng.uniform(0.1, 1.0)
        cumsum = np.cumsum(v)
        expected = min(np.searchsorted(cumsum, beta * cumsum[-1], side="left") + 1, len(v))
        assert threshold_count(v, beta) == expected


def test_input_validation():
    with pytest.raises(ValueError, match="at least 2"):
        spectral_filter_details(random_logits(1, 5))
    acc = SpectralAccumulator(5, method="gram", max_rows=3)
    with pytest.raises(ValueError, match="shape"):
        acc.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="max_rows"):
        acc.update(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="max_rows"):
        SpectralAccumulator(5, method="auto")
    with pytest.raises(ValueError, match="identical"):
        spectral_filter_details(torch.zeros(4, 6), method="gram")


def test_write_concepts_csv_round_trip(tmp_path):
    names = ["cat", "Skittles ", "red, white and blue", "dog", "x"]
    order = torch.tensor([3, 2, 0, 1, 4])
    path = write_concepts_csv(tmp_path / "sub" / "cub_concepts.csv", names, order, 3)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["ClassName"], ["dog"], ["red, white and blue"], ["cat"]]
    assert sorted(p.name for p in path.parent.iterdir()) == ["cub_concepts.csv"]
    with pytest.raises(ValueError, match="n_keep"):
        write_concepts_csv(path, names, order, 6)
    with pytest.raises(ValueError, match="names"):
        write_concepts_csv(path, names[:4], order, 2)
    assert path.read_text(encoding="utf-8").count("\n") == 4  # untouched by the failed writes


def test_plot_spectrum_writes_png(tmp_path):
    details = spectral_filter_details(random_logits(30, 50))
    path = plot_spectrum(details, tmp_path / "spectrum.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def _sync_worker(rank, world_size, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)  # the forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        logits = random_logits(45, 30, seed=21)
        shard = logits[:19] if rank == 0 else logits[19:]  # uneven shards, rank order kept
        for method in ("covariance", "gram"):
            acc = SpectralAccumulator(30, method=method, max_rows=45, buffer_dtype=torch.float64)
            acc.update(shard)
            details = acc.sync_across_ranks().finalize()
            torch.save({"scores": details.scores, "n_rows": details.n_rows},
                       f"{out_dir}/{method}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_across_two_processes_equals_one_shot(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_sync_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    logits = random_logits(45, 30, seed=21)
    for method in ("covariance", "gram"):
        expected = spectral_filter_details(logits, method=method).scores
        for rank in range(2):
            got = torch.load(tmp_path / f"{method}{rank}.pt", weights_only=True)
            assert got["n_rows"] == 45
            torch.testing.assert_close(got["scores"], expected, rtol=1e-10, atol=1e-15)
