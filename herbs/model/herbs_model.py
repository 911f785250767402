"""HERBSModel: backbone taps -> top-down pyramid -> bottom-up pyramid -> selection -> combiner.

Returns the dict of HERBS_SPEC.md, in the original code's key order (the loss sums its terms
in that order): FPN1_layer4..1, layer1..4, select_/drop_layer1..4, comb_outs.
"""

from __future__ import annotations

import torch
from torch import nn

from herbs.config import TAPS, ModelConfig, check_selects, is_swin, token_counts
from herbs.model.backbone import SwinTaps
from herbs.model.feature_taps import FeatureTaps
from herbs.model.combiner import GraphCombiner
from herbs.model.pyramid import BottomUpPyramid, TokenClassifier, TopDownPyramid
from herbs.model.selector import select_tokens


class HERBSModel(nn.Module):
    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        """`load_pretrained=False` skips backbone weights, for models whose weights come from a checkpoint."""
        super().__init__()
        self.config = config
        self.num_selects = list(config.num_selects)
        common = dict(
            img_size=config.img_size,
            drop_path_rate=config.drop_path_rate,
            backbone_args=config.backbone_args,
            pretrained=config.pretrained and load_pretrained,
            pretrained_file=config.pretrained_file if load_pretrained else None,
            grad_checkpointing=config.grad_checkpointing,
        )
        if is_swin(config.backbone):
            self.backbone = SwinTaps(config.backbone, fused_attention=config.fused_attention, **common)
            tokens = token_counts(config)
        else:
            self.backbone = FeatureTaps(config.backbone, **common)
            tokens = self.backbone.tokens
            check_selects(config, tokens)
        F, K = config.fpn_size, config.num_classes
        self.top_down = TopDownPyramid(self.backbone.channels, tokens, F)
        self.classifier_down = nn.ModuleDict({tap: TokenClassifier(F, K) for tap in TAPS})
        self.bottom_up = BottomUpPyramid(tokens, F)
        self.classifier_up = nn.ModuleDict({tap: TokenClassifier(F, K) for tap in TAPS})
        self.combiner = GraphCombiner(sum(self.num_selects), F, K, dropout=config.combiner_dropout)

    def train(self, mode: bool = True) -> "HERBSModel":
        super().train(mode)
        if mode and self.config.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

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
    """The nine [B, K] heads of the ensemble (HERBS_SPEC.md §7): token means of both pyramids, and the combiner."""
    heads = {tap: outputs[tap].mean(1) for tap in TAPS}
    heads.update({f"FPN1_{tap}": outputs[f"FPN1_{tap}"].mean(1) for tap in TAPS})
    heads["comb_outs"] = outputs["comb_outs"]
    return heads


def ensemble_scores(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The published class score: the sum of the nine heads' softmaxes, [B, K]."""
    return sum(h.float().softmax(-1) for h in head_logits(outputs).values())
