"""Background suppression: keep each tap's most confident tokens (HERBS_SPEC.md §4).

Batched: one sort and one gather for the whole batch. `select_tokens_loop` is the original
per-sample loop, kept only as the reference the benchmark and tests compare against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Selection(NamedTuple):
    features: torch.Tensor  # [B, n, F] features of the selected (foreground) tokens
    selected_logits: torch.Tensor  # [B, n, K] in descending confidence
    dropped_logits: torch.Tensor  # [B, L - n, K] in descending confidence


def _take(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x[b, order[b]] for every b, as one index_select on the flattened tokens (much faster than gather)."""
    batch, count = order.shape
    rows = (order + torch.arange(batch, device=order.device).unsqueeze(1) * x.size(1)).flatten()
    return x.reshape(-1, x.size(-1)).index_select(0, rows).view(batch, count, x.size(-1))


def select_tokens(features: torch.Tensor, logits: torch.Tensor, num_select: int) -> Selection:
    """Rank tokens by their probability of the sample's predicted class; split at `num_select`."""
    with torch.no_grad():  # the ranking is not differentiated; only the gathered tokens are
        predicted = logits.mean(1).argmax(-1)  # argmax of the mean logits == argmax of its softmax
        probs = logits.softmax(-1)
        confidence = probs.gather(2, predicted.view(-1, 1, 1).expand(-1, probs.size(1), 1)).squeeze(-1)
        order = confidence.sort(dim=1, descending=True).indices
    keep, drop = order[:, :num_select], order[:, num_select:]
    return Selection(_take(features, keep), _take(logits, keep), _take(logits, drop))


def select_tokens_loop(features: torch.Tensor, logits: torch.Tensor, num_select: int) -> Selection:
    """The original implementation, one sample at a time (reference only)."""
    probs = torch.softmax(logits, dim=-1)
    sum_probs = torch.softmax(logits.mean(1), dim=-1)
    kept, selected, dropped = [], [], []
    for b in range(logits.size(0)):
        predicted = torch.max(sum_probs[b], dim=-1).indices
        ranks = torch.sort(probs[b, :, predicted], descending=True).indices
        kept.append(features[b][ranks[:num_select]])
        selected.append(logits[b][ranks[:num_select]])
        dropped.append(logits[b][ranks[num_select:]])
    return Selection(torch.stack(kept), torch.stack(selected), torch.stack(dropped))
