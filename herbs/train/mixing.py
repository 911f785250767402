"""Mixup, CutMix and label smoothing of a training micro-batch: images and soft targets.

Not timm's `Mixup`: it draws from numpy's and Python's global random state, so how a batch is
mixed would depend on what that process drew before. Here every draw comes from a generator
keyed by the seed, the epoch and the micro-batch's sample keys, like the augmentation, so a
micro-batch is mixed the same way on any number of processes and after any resume. A batch is
mixed with itself reversed (timm's pairing), so every pair stays inside the micro-batch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from herbs.config import Config


@dataclass(frozen=True)
class BatchMixer:
    num_classes: int
    seed: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    @classmethod
    def from_config(cls, config: Config) -> "BatchMixer":
        d = config.data
        return cls(config.model.num_classes, config.train.seed, d.mixup_alpha, d.cutmix_alpha, d.mixup_prob, d.mixup_switch_prob,
                   config.loss.label_smoothing)

    @property
    def active(self) -> bool:
        """Off (the published recipe): the loss gets the integer labels, exactly as before."""
        return bool(self.mixup_alpha or self.cutmix_alpha or self.label_smoothing)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        smooth = self.label_smoothing
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).float()
        return one_hot * (1 - smooth) + smooth / self.num_classes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, keys: list[str], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets [B, K]) of a normalized [B, 3, H, W] batch."""
        targets = self.targets(labels)
        rng = random.Random(f"mix/{self.seed}/{epoch}/" + "\0".join(keys))
        if not (self.mixup_alpha or self.cutmix_alpha) or rng.random() >= self.prob:
            return images, targets
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        weight = rng.betavariate(alpha, alpha)
        partner = images.flip(0)
        if cutmix:
            height, width = images.shape[-2:]
            cut_h, cut_w = int(height * math.sqrt(1 - weight)), int(width * math.sqrt(1 - weight))
            cy, cx = rng.randrange(height), rng.randrange(width)
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            images = images.clone()
            images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
            weight = 1 - (bottom - top) * (right - left) / (height * width)  # the share of the image that is its own
        else:
            images = images * weight + partner * (1 - weight)
        return images, targets * weight + targets.flip(0) * (1 - weight)
