"""The HERBS training loss and its temperature schedule (HERBS_SPEC.md §6).

Terms are summed in the order of the model's output dict (as the original code does), so the
total matches it to the last bit. The division by the number of accumulated micro-batches is
left to the training loop (Accelerate's `accumulate` does it), so the total here is per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herbs.config import TAPS, LossConfig


def temperature_at(config: LossConfig, epoch: int) -> float:
    """T = T0 * 0.5 ** (epoch // halve_every), epoch counted from 0."""
    return config.temperature * 0.5 ** (epoch // config.temperature_halve_every)


class HERBSLoss(nn.Module):
    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config

    def forward(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (total, terms): `terms` holds every weighted-in term unweighted, keyed like
        `refine/layer1`, `tap_ce/layer1`, `select_ce/layer1`, `suppress/layer1`, `combiner_ce`.
        `labels` are class indices [B], or soft targets [B, K] (mixup, CutMix, label smoothing:
        `herbs.train.mixing`), which the cross-entropy terms take as they are."""
        c = self.config
        T = temperature_at(c, epoch)
        terms: dict[str, torch.Tensor] = {}
        total = 0.0  # config validation guarantees at least one weighted term
        for name, out in outputs.items():
            out = out.float()  # the loss runs in fp32 under autocast
            if name.startswith("FPN1_"):
                if c.lambda_b0:
                    tap = name.removeprefix("FPN1_")
                    target = torch.softmax(outputs[tap].detach().float() / T, dim=-1)
                    # Mean over B*L*K elements, as the original's nn.KLDivLoss() ('batchmean' would differ).
                    term = F.kl_div(F.log_softmax(out / T, dim=-1), target, reduction="none").mean()
                    terms[f"refine/{tap}"] = term
                    total = total + c.lambda_b0 * term
            elif name.startswith("select_"):
                if c.lambda_s:
                    tap = name.removeprefix("select_")
                    n = out.size(1)
                    term = F.cross_entropy(out.reshape(-1, out.size(-1)), labels.repeat_interleave(n, dim=0))
                    terms[f"select_ce/{tap}"] = term
                    total = total + c.lambda_s * term
            elif name.startswith("drop_"):
                if c.lambda_n:
                    tap = name.removeprefix("drop_")
                    term = F.mse_loss(torch.tanh(out), torch.full_like(out, -1.0))
                    terms[f"suppress/{tap}"] = term
                    total = total + c.lambda_n * term
            elif name in TAPS:
                if c.lambda_b:
                    term = F.cross_entropy(out.mean(1), labels)
                    terms[f"tap_ce/{name}"] = term
                    total = total + c.lambda_b * term
            elif name == "comb_outs":
                if c.lambda_c:
                    term = F.cross_entropy(out, labels)
                    terms["combiner_ce"] = term
                    total = total + c.lambda_c * term
        return total, terms
