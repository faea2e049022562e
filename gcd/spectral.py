"""Spectral concept filtering (SpectralGCD, ``../shared/specs/spectralgcd.md`` §1.3).

Given teacher logits z_i = cos(f_i, T)/τ for N images over K concepts:

1. X = softmax(z) row-wise: each row is a distribution over the concepts.
2. G = X_cᵀ X_c / (N − 1), with X_c = X − 1 μᵀ the column-centred rows.
3. G = V diag(λ) Vᵀ with λ_1 ≥ λ_2 ≥ ….
4. k_e = min{k : Σ_{i≤k} λ_i ≥ β_e Σ_i λ_i}            (:func:`threshold_count`)
5. s_j = Σ_{i≤k_e} λ_i V_{j,i}²  (s = diag(G) when k_e = K: per-concept variance)
6. order = argsort(s, descending); n_keep = min{k : Σ_{i≤k} s_(i) ≥ β_c Σ_j s_j}.

Rows of X sum to 1, so the all-ones vector is in the null space of G and
rank(G) ≤ min(N − 1, K − 1). Two exact routes, chosen by ``method``:

- ``covariance`` (K ≤ N): stream Σ x and Σ x xᵀ in float64 (K×K), form G, eigh it.
- ``gram`` (N < K): keep X once (one preallocated N×K buffer), eigh the N×N Gram matrix
  X_c X_cᵀ/(N − 1) = U diag(λ) Uᵀ. Its positive eigenvalues are those of G and
  V_{:,i} = X_cᵀ u_i / sqrt((N − 1) λ_i), hence λ_i V_{j,i}² = (X_cᵀ u_i)_j² / (N − 1):
  the scores never divide by a small eigenvalue. Eigenvalues below the numerical-rank
  tolerance λ_max·max(N, K)·eps (the null direction, round-off) are dropped.

The reference held the N×K matrix about four times and built the covariance on the CPU;
here it is held at most once more than the caller's logits, on the logits' device.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from clipcore.io import atomic_write

log = logging.getLogger(__name__)

Method = Literal["auto", "covariance", "gram"]
_COLUMN_CHUNK = 2048  # columns per float64 block in the Gram path (bounds the temporaries)


def threshold_count(values_sorted_desc, beta: float) -> int:
    """Smallest k with Σ_{i<k+1} v_i ≥ β·Σ v, clamped to len(v) (the reference's thresholding).

    Identical to ``min(np.searchsorted(np.cumsum(v), β * total, side='left') + 1, len(v))``
    with ``total = cumsum[-1]``; written as "first index where cumsum ≥ threshold", which is
    what searchsorted returns here even when a tail of tiny negative eigenvalues makes the
    cumulative sum non-monotone.
    """
    if not isinstance(values_sorted_desc, torch.Tensor):  # numpy views may have negative strides
        values_sorted_desc = np.array(values_sorted_desc, dtype=np.float64)  # fresh strides
    values = torch.as_tensor(values_sorted_desc).detach().to("cpu", torch.float64).reshape(-1)
    if values.numel() == 0:
        raise ValueError("threshold_count needs at least one value")
    cumsum = torch.cumsum(values, 0)
    hits = torch.nonzero(cumsum >= beta * cumsum[-1])
    first = int(hits[0, 0]) if hits.numel() else values.numel()
    return min(first + 1, values.numel())


def resolve_method(method: Method, n_rows: int, n_concepts: int) -> str:
    """``auto`` picks the smaller eigenproblem: Gram (N×N) when N < K, else covariance (K×K)."""
    if method == "auto":
        return "gram" if n_rows < n_concepts else "covariance"
    if method not in ("covariance", "gram"):
        raise ValueError(f"method must be 'auto', 'covariance' or 'gram', got {method!r}")
    return method


@dataclass(frozen=True)
class SpectralDetails:
    """Everything spectral filtering computed (CPU tensors), e.g. for :func:`plot_spectrum`.

    ``eigenvalues``: decreasing, float64 (covariance path: all K; Gram path: the positive ones).
    ``scores``: s_j per concept (float64 [K]); ``order``: concepts by decreasing s (ties keep
    the lower index first); ``order[:n_keep]`` are the kept concepts.
    """

    eigenvalues: torch.Tensor
    k_e: int
    scores: torch.Tensor
    order: torch.Tensor
    n_keep: int
    beta_e: float
    beta_c: float
    method: str
    n_rows: int

    @property
    def kept(self) -> torch.Tensor:
        return self.order[: self.n_keep]


class SpectralAccumulator:
    """Streams batches of logits into the statistics spectral filtering needs.

    Each batch is softmaxed row-wise (fp32, or fp64 for fp64 logits) on ``device``; the
    covariance path adds Σ x and Σ x xᵀ into float64 accumulators, the Gram path copies the
    rows into one preallocated ``[max_rows, K]`` buffer. Call :meth:`finalize` once.
    """

    def __init__(self, num_concepts: int, *, method: Method = "covariance",
                 max_rows: int | None = None, device: torch.device | str | None = None,
                 buffer_dtype: torch.dtype = torch.float32):
        if num_concepts < 1:
            raise ValueError(f"num_concepts must be >= 1, got {num_concepts}")
        if method == "auto" and max_rows is None:
            raise ValueError("method='auto' needs max_rows (the number of images) to choose a path")
        self.method = resolve_method(method, max_rows or 0, num_concepts)
        self.num_concepts = num_concepts
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.n_rows = 0
        self._consumed = False
        self._gram_mean: torch.Tensor | None = None
        if self.method == "covariance":
            self._col_sum = torch.zeros(num_concepts, dtype=torch.float64, device=self.device)
            self._xtx = torch.zeros(num_concepts, num_concepts, dtype=torch.float64,
                                    device=self.device)
        else:
            if max_rows is None or max_rows < 1:
                raise ValueError("the Gram path preallocates its rows: pass max_rows >= 1")
            self._rows = torch.empty(max_rows, num_concepts, dtype=buffer_dtype, device=self.device)

    def update(self, logits: torch.Tensor) -> None:
        """Add a batch of scaled logits ``[B, K]`` (cos/τ); softmax is applied here."""
        if self._consumed:
            raise RuntimeError("SpectralAccumulator.finalize() was already called")
        if logits.ndim != 2 or logits.shape[1] != self.num_concepts:
            raise ValueError(f"expected logits of shape [B, {self.num_concepts}], "
                             f"got {tuple(logits.shape)}")
        work_dtype = torch.promote_types(logits.dtype, torch.float32)
        probs = torch.softmax(logits.to(self.device, work_dtype), dim=1)
        batch = probs.shape[0]
        if self.method == "covariance":
            x = probs.to(torch.float64)
            self._col_sum += x.sum(0)
            self._xtx.addmm_(x.T, x)
        else:
            if self.n_rows + batch > self._rows.shape[0]:
                raise ValueError(f"Gram buffer holds {self._rows.shape[0]} rows; "
                                 f"got {self.n_rows + batch}: raise max_rows")
            self._rows[self.n_rows:self.n_rows + batch].copy_(probs)
        self.n_rows += batch

    def merge_(self, other: "SpectralAccumulator") -> "SpectralAccumulator":
        """Add another accumulator's statistics (e.g. gathered from another rank)."""
        if other.method != self.method or other.num_concepts != self.num_concepts:
            raise ValueError("can only merge accumulators with the same method and K")
        if self.method == "covariance":
            self._col_sum += other._col_sum.to(self.device)
            self._xtx += other._xtx.to(self.device)
            self.n_rows += other.n_rows
        else:
            self.update_rows(other._rows[: other.n_rows])
        return self

    def update_rows(self, probs: torch.Tensor) -> None:
        """Gram path only: append rows that are already softmaxed."""
        if self.method != "gram":
            raise ValueError("update_rows is for the Gram path")
        if self._consumed:
            raise RuntimeError("SpectralAccumulator.finalize() was already called")
        end = self.n_rows + probs.shape[0]
        if end > self._rows.shape[0]:
            raise ValueError(f"Gram buffer holds {self._rows.shape[0]} rows; got {end}")
        self._rows[self.n_rows:end].copy_(probs)
        self.n_rows = end

    def sync_across_ranks(self, group=None) -> "SpectralAccumulator":
        """Combine every rank's statistics so that each rank holds the whole split's.

        Covariance path: all-reduce Σ x, Σ x xᵀ and N. Gram path: all-gather the rows in
        rank order (each rank's buffer must hold the total, i.e. max_rows = dataset size).
        A no-op without an initialised process group or with one process.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        count = torch.tensor([self.n_rows], dtype=torch.int64, device=self.device)
        if self.method == "covariance":
            dist.all_reduce(self._col_sum, group=group)
            dist.all_reduce(self._xtx, group=group)
            dist.all_reduce(count, group=group)
            self.n_rows = int(count)
            return self
        counts = [torch.zeros_like(count) for _ in range(dist.get_world_size(group))]
        dist.all_gather(counts, count, group=group)
        counts = [int(c) for c in counts]
        if sum(counts) > self._rows.shape[0]:
            raise ValueError(f"Gram buffer holds {self._rows.shape[0]} rows but the ranks "
                             f"have {sum(counts)} together: set max_rows to the dataset size")
        padded = torch.zeros(max(counts), self.num_concepts, dtype=self._rows.dtype,
                             device=self.device)
        padded[: self.n_rows] = self._rows[: self.n_rows]
        gathered = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(gathered, padded, group=group)
        start = 0
        for rows, n in zip(gathered, counts):
            self._rows[start:start + n] = rows[:n]
            start += n
        self.n_rows = start
        return self

    def column_means(self) -> torch.Tensor:
        """μ (float64 [K])."""
        if self.method == "covariance":
            return self._col_sum / self.n_rows
        rows = self._rows[: self.n_rows]
        total = torch.zeros(self.num_concepts, dtype=torch.float64, device=self.device)
        for start in range(0, self.n_rows, 4096):  # row chunks: no float64 copy of X
            total += rows[start:start + 4096].to(torch.float64).sum(0)
        return total / self.n_rows

    def _centred_columns(self, mean: torch.Tensor):
        """Yield (start, X_c[:, start:stop]) as float64 blocks (Gram path)."""
        rows = self._rows[: self.n_rows]
        for start in range(0, self.num_concepts, _COLUMN_CHUNK):
            stop = min(start + _COLUMN_CHUNK, self.num_concepts)
            yield start, rows[:, start:stop].to(torch.float64) - mean[start:stop]

    def second_moment_matrix(self) -> torch.Tensor:
        """The matrix to decompose, float64: G (K×K) or X_c X_cᵀ/(N−1) (N×N).

        The covariance is formed in place, as (Σ x xᵀ − N μ μᵀ)/(N − 1), so this consumes
        the accumulator.
        """
        n = self.n_rows
        if self.method == "covariance":
            self._xtx.addr_(self._col_sum, self._col_sum, alpha=-1.0 / n).div_(n - 1)
            self._consumed = True
            return self._xtx
        mean = self._gram_mean = self.column_means()
        gram = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        for _, block in self._centred_columns(mean):
            gram.addmm_(block, block.T)
        return gram.div_(n - 1)

    def scores_from_top(self, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor) -> torch.Tensor:
        """s_j = Σ_i λ_i V_{j,i}² over the given (top-k_e) eigenpairs, float64 [K].

        Covariance path: ``eigenvectors`` are columns of V (K×k). Gram path: columns of U
        (N×k) and λ_i V_{j,i}² = (X_cᵀ u_i)_j²/(N − 1), so ``eigenvalues`` are not needed.
        """
        if self.method == "covariance":
            return eigenvectors.to(torch.float64).pow(2) @ eigenvalues.to(torch.float64)
        u_top = eigenvectors.to(torch.float64)
        scores = torch.empty(self.num_concepts, dtype=torch.float64, device=self.device)
        mean = self._gram_mean if self._gram_mean is not None else self.column_means()
        for start, block in self._centred_columns(mean):
            proj = block.T @ u_top
            scores[start:start + block.shape[1]] = proj.pow_(2).sum(1)
        return scores.div_(self.n_rows - 1)

    def finalize(self, beta_e: float = 0.95, beta_c: float = 0.99, *,
                 eigh_dtype: torch.dtype = torch.float64) -> SpectralDetails:
        """Eigendecompose, threshold at β_e, score the concepts and threshold them at β_c."""
        if self._consumed:
            raise RuntimeError("SpectralAccumulator.finalize() was already called")
        if self.n_rows < 2:
            raise ValueError(f"spectral filtering needs at least 2 images, got {self.n_rows}")
        matrix = self.second_moment_matrix().to(eigh_dtype)
        if self.method == "covariance":
            self._xtx = None  # frees the float64 K×K accumulator when eigh runs in float32
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        del matrix
        # eigh sorts ascending; the top-k eigenpairs are the last k columns. Summing over them
        # needs no reordering, which avoids copying a K×K eigenvector matrix just to flip it.
        desc = eigenvalues.flip(0).to(torch.float64)
        if self.method == "gram":
            # Numerical rank (as matrix_rank's default tolerance): the centred Gram matrix
            # always has a null direction (the all-ones vector), which round-off can leave
            # slightly positive; it carries no variance.
            tol = desc[0].clamp(min=0) * max(self.n_rows, self.num_concepts) * torch.finfo(
                eigenvalues.dtype).eps
            desc = desc[desc > tol]
            if desc.numel() == 0:
                raise ValueError("all softmax rows are identical: no variance to filter on")
        k_e = threshold_count(desc, beta_e)
        top = slice(eigenvalues.numel() - k_e, eigenvalues.numel())
        scores = self.scores_from_top(eigenvalues[top], eigenvectors[:, top])
        del eigenvectors
        scores = scores.cpu()
        order = torch.argsort(scores, descending=True, stable=True)
        n_keep = threshold_count(scores[order], beta_c)
        self._consumed = True
        log.info("spectral filtering (%s, N=%d, K=%d): k_e=%d of %d eigenvalues, kept %d concepts",
                 self.method, self.n_rows, self.num_concepts, k_e, desc.numel(), n_keep)
        return SpectralDetails(eigenvalues=desc.cpu(), k_e=k_e, scores=scores, order=order,
                               n_keep=n_keep, beta_e=beta_e, beta_c=beta_c, method=self.method,
                               n_rows=self.n_rows)


def spectral_filter_details(logits: torch.Tensor, beta_e: float = 0.95, beta_c: float = 0.99, *,
                            method: Method = "auto", batch_size: int = 4096,
                            eigh_dtype: torch.dtype = torch.float64) -> SpectralDetails:
    """Spectral filtering of scaled logits ``[N, K]`` on their device; see the module docstring."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    n_rows, n_concepts = logits.shape
    path = resolve_method(method, n_rows, n_concepts)
    buffer_dtype = torch.promote_types(logits.dtype, torch.float32)
    acc = SpectralAccumulator(n_concepts, method=path, max_rows=n_rows, device=logits.device,
                              buffer_dtype=buffer_dtype)
    for start in range(0, n_rows, batch_size):
        acc.update(logits[start:start + batch_size])
    return acc.finalize(beta_e, beta_c, eigh_dtype=eigh_dtype)


def spectral_filter(logits: torch.Tensor, beta_e: float = 0.95, beta_c: float = 0.99, *,
                    method: Method = "auto", batch_size: int = 4096,
                    eigh_dtype: torch.dtype = torch.float64):
    """Returns ``(order, n_keep, scores)``: concept indices by decreasing importance
    (LongTensor [K]), how many to keep, and the importance scores (float64 [K]), on the CPU."""
    details = spectral_filter_details(logits, beta_e, beta_c, method=method,
                                      batch_size=batch_size, eigh_dtype=eigh_dtype)
    return details.order, details.n_keep, details.scores


def write_concepts_csv(path: str | os.PathLike, names: Sequence[str], order, n_keep: int) -> Path:
    """Write the kept concepts, most important first, under a ``ClassName`` header.

    Names are written verbatim (surrounding spaces kept, commas quoted by ``csv.writer``),
    the format the reference's ``{dataset}_concepts.csv`` uses.
    """
    order = [int(i) for i in torch.as_tensor(order).reshape(-1).tolist()]
    if len(order) != len(names):
        raise ValueError(f"order has {len(order)} entries but there are {len(names)} names")
    if not 0 <= n_keep <= len(order):
        raise ValueError(f"n_keep must be in [0, {len(order)}], got {n_keep}")

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ClassName"])
            writer.writerows([names[i]] for i in order[:n_keep])

    return atomic_write(path, write)


def plot_spectrum(details: SpectralDetails, path: str | os.PathLike) -> Path:
    """PNG: eigen-spectrum, cumulative explained variance (β_e, k_e) and cumulative
    concept importance (β_c, n_keep)."""
    # The object-oriented Agg API draws without pyplot, so the global backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    eig = details.eigenvalues.numpy()
    scores_sorted = details.scores[details.order].numpy()
    ranks = range(1, len(eig) + 1)
    fig = Figure(figsize=(15, 4.2))
    FigureCanvasAgg(fig)
    ax_eig, ax_var, ax_imp = fig.subplots(1, 3)

    positive = eig > 0
    ax_eig.semilogy([r for r, p in zip(ranks, positive) if p], eig[positive], lw=1)
    ax_eig.axvline(details.k_e, color="tab:red", ls="--", label=f"k_e = {details.k_e}")
    ax_eig.set(title="eigen-spectrum of the softmax covariance", xlabel="component", ylabel="λ")
    ax_eig.legend()

    ax_var.plot(ranks, eig.cumsum() / eig.sum(), lw=1)
    ax_var.axhline(details.beta_e, color="tab:red", ls=":", label=f"β_e = {details.beta_e}")
    ax_var.axvline(details.k_e, color="tab:red", ls="--", label=f"k_e = {details.k_e}")
    ax_var.set(title="cumulative explained variance", xlabel="components", ylabel="fraction")
    ax_var.legend()

    ax_imp.plot(range(1, len(scores_sorted) + 1), scores_sorted.cumsum() / scores_sorted.sum(), lw=1)
    ax_imp.axhline(details.beta_c, color="tab:green", ls=":", label=f"β_c = {details.beta_c}")
    ax_imp.axvline(details.n_keep, color="tab:green", ls="--", label=f"kept = {details.n_keep}")
    ax_imp.set(title="cumulative concept importance", xlabel="concepts (by importance)",
               ylabel="fraction")
    ax_imp.legend()
    fig.suptitle(f"spectral filtering: N={details.n_rows}, K={len(details.scores)}, "
                 f"path={details.method}")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
