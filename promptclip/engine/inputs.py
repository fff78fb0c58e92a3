"""Where a run's image features come from, decided once per run.

A model that leaves the image tower frozen reads the frozen features of cached training views (one view per epoch)
and of the cached test split; a model that prompts the image tower reads images, and, where a loss compares with
the frozen tower (PromptSRC), the same views' frozen features beside them. Training steps, evaluation and
prediction then pass whatever they read through the model's one ``head``.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..config import Config
from ..data.base import Item
from ..data.loaders import eval_loader, image_loader, transform_for, view_index, view_seeds
from ..model import PromptedCLIP
from .cache import TrainingViews, feature_loader, frozen_features

Batch = Tuple[Dict[str, torch.Tensor], torch.Tensor]  # (the model's keyword inputs, labels)


class TrainingInputs:
    """An epoch's batches as keyword inputs of :class:`~promptclip.model.PromptedCLIP`: ``image_features`` (frozen,
    cached views), or ``images`` with, when a loss asks, ``frozen_image_features`` of the same views."""

    def __init__(self, model: PromptedCLIP, items: Sequence[Item], cfg: Config, views: TrainingViews):
        self.items, self.cfg = list(items), cfg
        self.features_only = not model.modifies_image_tower
        self.views = views if self.features_only or model.compares_to_frozen_images else None
        self.transform = None if self.features_only else transform_for(model.backbone, train=cfg.data.augment)

    def __len__(self) -> int:
        return len(self.items)

    def epoch(self, epoch: int, batches: List[List[int]], cut_short: bool = False) -> Iterator[Batch]:
        """The inputs of ``batches`` (item indices) under ``epoch``'s view. ``cut_short`` (an epoch capped by
        ``train.max_steps_per_epoch``): only those items' features are encoded, and not cached."""
        features = None
        if self.views is not None:
            cut = [i for batch in batches for i in batch] if cut_short else None
            features, labels = self.views.features(epoch, cut)
        if self.features_only:
            for batch in map(torch.tensor, batches):
                yield {"image_features": features[batch]}, labels[batch]
            return
        seeds = view_seeds(self.items, self.cfg.seed, view_index(epoch, self.cfg.train.views)) \
            if self.cfg.data.augment else None
        loader = image_loader(self.items, self.transform, batches, self.cfg.data.num_workers, seeds)
        for batch, (images, labels) in zip(batches, loader):
            frozen = {"frozen_image_features": features[torch.tensor(batch)]} if features is not None else {}
            yield {"images": images, **frozen}, labels


def evaluation_inputs(model: PromptedCLIP, items: Sequence[Item], cfg: Config, device: torch.device,
                      precision: str, desc: str, progress: bool) -> Tuple[object, Optional[Callable]]:
    """``(loader, encode)`` for :func:`~promptclip.engine.evaluation.predict_loader`: cached frozen test features
    passed through as they are when the image tower is not prompted, else images for the model's image tower."""
    batch, workers = cfg.train.eval_batch_size, cfg.data.num_workers
    if model.modifies_image_tower:
        return eval_loader(items, transform_for(model.backbone, train=False), batch, workers), None
    features, labels = frozen_features(model.backbone, items, cfg.output.cache_dir, batch, workers, device,
                                       precision, f"features {desc}", progress,
                                       max_gb=cfg.output.cache_max_gb)
    return feature_loader(features, labels, batch), lambda cached: cached
