"""HERBSModel: backbone taps -> top-down pyramid -> bottom-up pyramid -> selection -> combiner.

Returns the dict of HERBS_SPEC.md, in the original code's key order (the loss sums its terms
in that order): FPN1_layer4..1, layer1..4, select_/drop_layer1..4, comb_outs.
"""

from __future__ import annotations

import torch
from torch import nn

from herbs.config import TAPS, ModelConfig, check_selects
from herbs.model.combiner import GraphCombiner
from herbs.model.pyramid import BottomUpPyramid, TokenClassifier, TopDownPyramid
from herbs.model.selector import select_tokens
from herbs.model.tapped import TappedModel


class HERBSModel(TappedModel):
    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        super().__init__(config, load_pretrained)
        check_selects(config, self.tokens)  # Swin's were checked with the config; other backbones' counts are known now
        self.num_selects = list(config.num_selects)
        F, K, tokens = config.fpn_size, config.num_classes, self.tokens
        self.top_down = TopDownPyramid(self.backbone.channels, tokens, F)
        matmul = config.matmul_heads
        self.classifier_down = nn.ModuleDict({tap: TokenClassifier(F, K, matmul) for tap in TAPS})
        self.bottom_up = BottomUpPyramid(tokens, F)
        self.classifier_up = nn.ModuleDict({tap: TokenClassifier(F, K, matmul) for tap in TAPS})
        self.combiner = GraphCombiner(sum(self.num_selects), F, K, dropout=config.combiner_dropout)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        down = self.top_down(self.backbone(images))
        up = self.bottom_up(down)
        out = {f"FPN1_{tap}": self.classifier_down[tap](down[i]) for i, tap in reversed(list(enumerate(TAPS)))}
        out.update({tap: self.classifier_up[tap](up[i]) for i, tap in enumerate(TAPS)})
        selected = []
        for i, tap in enumerate(TAPS):
            chosen = select_tokens(up[i], out[tap], self.num_selects[i])
            out[f"select_{tap}"] = chosen.selected_logits
            out[f"drop_{tap}"] = chosen.dropped_logits
            selected.append(chosen.features)
        out["comb_outs"] = self.combiner(torch.cat(selected, dim=1))
        return out


def head_logits(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The [B, K] heads of the ensemble: HERBS's nine (HERBS_SPEC.md §7: token means of both pyramids,
    and the combiner), or the linear head's one (`herbs.model.linear_head`, which gives `comb_outs` only)."""
    heads = {tap: outputs[tap].mean(1) for tap in TAPS if tap in outputs}
    heads.update({f"FPN1_{tap}": outputs[f"FPN1_{tap}"].mean(1) for tap in TAPS if f"FPN1_{tap}" in outputs})
    heads["comb_outs"] = outputs["comb_outs"]
    return heads


def ensemble_scores(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The published class score: the sum of the heads' softmaxes, [B, K]."""
    return sum(h.float().softmax(-1) for h in head_logits(outputs).values())


def ensemble_probabilities(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean of the heads' class probabilities, [B, K], summing to 1 over the classes; its arg-max is
    the published prediction."""
    return ensemble_scores(outputs) / len(head_logits(outputs))
