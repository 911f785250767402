"""Cost of the HERBS heads: a training step of HERBS vs the same Swin with a plain head.

Prints one JSON line: median seconds per step (forward + loss + backward + SGD step) at batch 8
for HERBS and for the backbone with mean-pool + linear, their ratio, and the batched selector
against the original per-sample loop. Model: the reference fixture's (Swin embed 32, 224 px,
10 classes, F=64). Run: python benchmarks/train_step.py [--batch 8] [--steps 10] [--threads N]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from herbs.config import from_dict
from herbs.loss import HERBSLoss
from herbs.model import HERBSModel
from herbs.model.backbone import SwinTaps
from herbs.model.selector import select_tokens, select_tokens_loop
from herbs.data.commands import positive  # argparse: 1 or more, one line on anything else
from timing import median_times, step_fn

FIXTURE_MODEL = dict(
    backbone="swin_large_patch4_window12_384", pretrained=False, img_size=224, num_classes=10, fpn_size=64,
    num_selects=[64, 32, 16, 16], backbone_args=dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7),
)


class PlainClassifier(nn.Module):
    """The same backbone with the usual head: mean over the last tap's tokens, then a linear layer."""

    def __init__(self, backbone: SwinTaps, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.channels[-1], num_classes)

    def forward(self, images):
        return self.head(self.backbone(images)[-1].mean(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive, default=8)
    parser.add_argument("--steps", type=positive, default=10)
    parser.add_argument("--threads", type=positive, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = from_dict({"model": FIXTURE_MODEL, "data": {"resize": 256}})
    images = torch.randn(args.batch, 3, 224, 224)
    labels = torch.randint(0, 10, (args.batch,))
    herbs = HERBSModel(config.model)
    herbs_loss = HERBSLoss(config.loss)
    plain = PlainClassifier(HERBSModel(config.model).backbone, 10)

    herbs_s, plain_s = median_times([step_fn(herbs, lambda out, y: herbs_loss(out, y, 0)[0], images, labels),
                                     step_fn(plain, nn.functional.cross_entropy, images, labels)], args.steps)

    # The selector alone on the four taps of this model, as in training (inputs need gradients).
    taps = [(torch.randn(args.batch, L, 64, requires_grad=True), torch.randn(args.batch, L, 10, requires_grad=True), n)
            for L, n in zip([784, 196, 49, 49], config.model.num_selects)]

    def selector(select, backward):
        def run():
            chosen = [select(feats, logits, n) for feats, logits, n in taps]
            if backward:
                sum(c.features.sum() + c.selected_logits.sum() + c.dropped_logits.sum() for c in chosen).backward()
        return run

    batched_s, loop_s, batched_bw_s, loop_bw_s = median_times(
        [selector(select_tokens, False), selector(select_tokens_loop, False),
         selector(select_tokens, True), selector(select_tokens_loop, True)], args.steps * 10)

    print(json.dumps({
        "benchmark": "train_step",
        "batch": args.batch,
        "threads": args.threads,
        "herbs_step_s": round(herbs_s, 4),
        "plain_step_s": round(plain_s, 4),
        "herbs_over_plain": round(herbs_s / plain_s, 3),
        "selector_batched_s": round(batched_s, 6),
        "selector_loop_s": round(loop_s, 6),
        "selector_speedup": round(loop_s / batched_s, 2),
        "selector_fwd_bwd_batched_s": round(batched_bw_s, 6),
        "selector_fwd_bwd_loop_s": round(loop_bw_s, 6),
        "selector_fwd_bwd_speedup": round(loop_bw_s / batched_bw_s, 2),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
