"""How a prompt learner's prompts go through the text tower at its floor: the prefix every prompt
shares, and length groups that pad the fewest tokens (used by `kdpl.prompts.base`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PromptLayout:
    """How the selected prompts are encoded: ``prefix`` leading positions shared by all of them
    (SOT, a shared context, common words), and groups of prompts of similar length, ascending:
    group b holds ``counts[b]`` prompts of at most ``lengths[b]`` tokens (EOT included; each is
    padded to that and pooled at its own EOT), ``order[sum(counts[:b]):][:counts[b]]``;
    ``inverse`` puts the groups' rows back in class order."""

    prefix: int
    lengths: tuple[int, ...]
    counts: tuple[int, ...]
    order: Tensor
    inverse: Tensor


@dataclass
class Prompts:
    """Assembled prompt embeddings `[*lead, C_sel, L, W]`, EOT positions `[C_sel]`, layout."""

    embeddings: Tensor
    eot: Tensor
    layout: PromptLayout


def length_buckets(eot: Tensor, prefix: int, max_buckets: int) -> tuple[tuple[int, ...], tuple[int, ...], Tensor]:
    """(lengths, counts, order): prompts sorted by length ``eot + 1`` and cut into at most
    ``max_buckets`` groups, each padded to its longest, that pad the fewest tokens after the
    shared ``prefix``. One host read of a small histogram when ``eot`` lives on a device."""
    histogram = torch.bincount(eot.long()).tolist()
    lengths = [i + 1 for i, n in enumerate(histogram) if n]
    counts = [n for n in histogram if n]
    ends = fewest_padded_tokens(lengths, counts, prefix, max(1, max_buckets))
    starts = [0] + [e + 1 for e in ends[:-1]]
    return (tuple(lengths[e] for e in ends), tuple(sum(counts[a:e + 1]) for a, e in zip(starts, ends)),
            torch.argsort(eot, stable=True))


def fewest_padded_tokens(lengths: list[int], counts: list[int], prefix: int, max_groups: int) -> list[int]:
    """Indices of the last length of each group: the split of the ascending ``lengths`` into at
    most ``max_groups`` runs minimising the tokens encoded, sum of (longest - prefix) x prompts
    (dynamic programming over the at most 77 distinct lengths)."""
    n = len(lengths)
    total = [0]
    for c in counts:
        total.append(total[-1] + c)
    # best[g][j]: fewest tokens for lengths[:j] in g groups, and where its last group starts.
    inf = float("inf")
    best = [[(inf, -1)] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = (0, -1)
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            best[g][j] = min(((best[g - 1][i][0] + (lengths[j - 1] - prefix) * (total[j] - total[i]), i)
                              for i in range(j) if best[g - 1][i][0] < inf), default=(inf, -1))
    groups = min(range(1, max_groups + 1), key=lambda g: (best[g][n][0], g))
    ends, j = [], n
    for g in range(groups, 0, -1):
        ends.append(j - 1)
        j = best[g][j][1]
    return ends[::-1]


def common_prefix(sources: Tensor) -> int:
    """How many leading positions hold the same thing (token id or context vector) in every row."""
    same = (sources == sources[:1]).all(dim=0)
    return int(same.int().cumprod(0).sum())
