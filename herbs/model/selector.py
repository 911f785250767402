"""Background suppression: keep each tap's most confident tokens (HERBS_SPEC.md §4).

Batched: one sort for the whole batch, then one row selection for the logits and one for the
features. `select_tokens_loop` is the original per-sample loop, kept only as the reference the
benchmark and tests compare against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Selection(NamedTuple):
    features: torch.Tensor  # [B, n, F] features of the selected (foreground) tokens
    selected_logits: torch.Tensor  # [B, n, K] in descending confidence
    dropped_logits: torch.Tensor  # [B, L - n, K] in descending confidence


def select_tokens(features: torch.Tensor, logits: torch.Tensor, num_select: int) -> Selection:
    """Rank tokens by their probability of the sample's predicted class; split at `num_select`."""
    batch, tokens = logits.shape[:2]
    with torch.no_grad():  # the ranking is not differentiated; only the gathered tokens are
        # Ranked in fp32 with a stable sort: under autocast the logits are bf16/fp16, whose coarse
        # steps tie many tokens, and an unstable sort would break those ties by kernel and batch
        # layout (so by the number of processes a batch is split over); stable keeps token order.
        scores = logits.float()
        predicted = scores.mean(1).argmax(-1)  # argmax of the mean logits == argmax of its softmax
        probs = scores.softmax(-1)
        confidence = probs.gather(2, predicted.view(-1, 1, 1).expand(-1, tokens, 1)).squeeze(-1)
        order = confidence.argsort(dim=1, descending=True, stable=True)
        # rows of the [B * L, C] flattened tokens, best first within each sample: index_select on
        # those is much faster than gather, and one for all logits serves both sides of the split
        rows = (order + torch.arange(0, batch * tokens, tokens, device=order.device).unsqueeze(1)).flatten()
    ranked = logits.flatten(0, 1).index_select(0, rows).view(batch, tokens, -1)
    kept_rows = rows.view(batch, tokens)[:, :num_select].flatten()
    kept = features.flatten(0, 1).index_select(0, kept_rows).view(batch, num_select, -1)
    return Selection(kept, ranked[:, :num_select], ranked[:, num_select:])


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
