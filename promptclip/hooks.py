"""What a method's code sees from the engine: the batch's :class:`ModelOutput`, the once-before-training
:class:`PrepareContext`, and the :class:`Callback` contract.

A learner's ``prepare``, a loss's ``prepare`` and a callback's ``prepare`` all receive the same
:class:`PrepareContext`: the backbone, the training classes, and on demand the frozen features of the training split
(any number of augmented views, through the engine's view cache), of the few-shot validation split, and zero-shot
class weights. At each step a loss reads the :class:`ModelOutput`, which also gives, once per batch, the frozen image
features of the same batch and the zero-shot logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, List, Optional, Sequence, Tuple, Union

import torch

from .learners.zeroshot import zeroshot_class_features
from .options.base import CallbackConfig
from .templates import resolve_templates

Features = Tuple[torch.Tensor, torch.Tensor]  # ([N, E] normalised float32 features, [N] labels), item order


@dataclass
class ModelOutput:
    """What the composed model computed for a batch; losses read what they need from it."""

    logits: torch.Tensor  # [B, C]
    image_features: torch.Tensor  # [B, E], normalised (prompted if the model prompts the image tower)
    text_features: torch.Tensor  # [C, E] or [B, C, E], normalised
    loss: Optional[torch.Tensor] = None
    terms: Optional[dict] = None  # name → detached value, for logs
    #: the weighted term of the loss with a gradient rule (not part of ``loss``; the trainer takes its gradient)
    separate: Optional[torch.Tensor] = None
    logit_scale: Optional[torch.Tensor] = None
    #: computes the batch's normalised image features without prompts; None: ``image_features`` are frozen already
    frozen_source: Optional[Callable[[], torch.Tensor]] = field(default=None, repr=False)
    #: those frozen features once known (given by the engine from its cache, or computed on first use)
    frozen: Optional[torch.Tensor] = field(default=None, repr=False)
    #: (class features, zero-shot logits) computed this step; the class features are held, so they are matched by
    #: identity (an ``id`` alone could be reused by a later tensor)
    _zeroshot: List[Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    @property
    def frozen_image_features(self) -> torch.Tensor:
        """The same batch's normalised image features under the frozen, unprompted image tower (no gradient),
        computed on first use and kept for the other losses of the step."""
        if self.frozen is None:
            self.frozen = (self.image_features if self.frozen_source is None else self.frozen_source()).detach()
        return self.frozen

    def zeroshot_logits(self, class_features: torch.Tensor) -> torch.Tensor:
        """Zero-shot CLIP's logits for the batch: ``τ · frozen_image_features @ class_features.T`` (normalised
        ``[C, E]`` class features, e.g. from :meth:`PrepareContext.zeroshot_class_features`); once per batch."""
        for known, logits in self._zeroshot:
            if known is class_features:
                return logits
        image = self.frozen_image_features
        logits = (self.logit_scale * image @ class_features.to(image.dtype).t()).detach()
        self._zeroshot.append((class_features, logits))
        return logits


@dataclass
class PrepareContext:
    """What a learner, loss or callback may use once before training. The feature accessors run the frozen image
    tower only on a feature-cache miss."""

    backbone: Any  # FrozenCLIP
    classnames: List[str]
    template: str  # the dataset's own template
    dataset: str  # its canonical name
    device: torch.device
    epochs: int  # train.epochs
    #: frozen features and labels of the training split, view 0 under the training transform (computed once)
    train_features: Callable[[], Features]
    #: ``train_view(v)``: view ``v`` of the training split (the views the epochs of prompt learners train on, so
    #: methods on features share them); None where the engine gives only view 0
    train_view: Optional[Callable[[int], Features]] = None
    #: frozen test-transform features of the few-shot validation split; None (or returning None) where the dataset
    #: has no validation split of its own (ImageNet's val is its test: a search there would read test labels)
    val_features: Optional[Callable[[], Optional[Features]]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def train_views(self, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Views ``0 … count-1`` of the training split: features ``[count, N, E]`` and labels ``[N]``."""
        if self.train_view is None and count > 1:
            raise ValueError("this PrepareContext gives only view 0 of the training split (train_view is None)")
        views = [self.train_view(v) if self.train_view is not None else self.train_features() for v in range(count)]
        return torch.stack([features for features, _ in views]), views[0][1]

    def validation(self) -> Optional[Features]:
        """:attr:`val_features`, or None where there is no validation split to search on."""
        return self.val_features() if self.val_features is not None else None

    def zeroshot_class_features(self, templates: Union[str, Sequence[str]] = "dataset",
                                normalize_each: bool = True) -> torch.Tensor:
        """Normalised zero-shot class features ``[C, E]`` on ``self.device`` for a template choice (``dataset``,
        ``ensemble``, ``imagenet80``, ``imagenet60``) or a list of templates; ``normalize_each`` as in
        :func:`~promptclip.learners.zeroshot.zeroshot_class_features`."""
        chosen = resolve_templates(templates if isinstance(templates, str) else list(templates), self.template,
                                   self.dataset)
        return zeroshot_class_features(self.backbone, self.classnames, chosen, normalize_each).to(self.device)


class Callback:
    """A method-owned hook at epoch end and training end, with state that checkpoints resume exactly.

    The engine calls :meth:`prepare` once before training, :meth:`on_epoch_end` after every epoch (before the
    checkpoint is written, so the checkpoint holds the state after that epoch) and :meth:`on_train_end` once when
    training is over, before the prompts are saved and evaluated. ``state_dict`` must hold tensors, numbers, strings
    and containers of them (checkpoints load with ``weights_only=True``). Every hook does nothing by default.
    """

    Config: ClassVar[type] = CallbackConfig

    def __init__(self, cfg):
        self.cfg = cfg

    def prepare(self, context: PrepareContext, model) -> None:
        """Once before training (also before a resumed run's checkpoint is restored)."""

    def on_epoch_end(self, epoch: int, model) -> None:
        """After epoch ``epoch`` (0-based) has been trained."""

    def on_train_end(self, model) -> None:
        """After the last epoch (also when a resumed run had nothing left to train), before the prompts are saved."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
