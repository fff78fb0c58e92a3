"""PromptedCLIP: a frozen backbone, a text learner, an optional vision learner and extra losses → logits and loss."""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import FrozenCLIP, VisionPrompts, normalize
from .errors import ConfigError
from .learners.base import Learner
from .losses import ExtraLoss, ModelOutput

log = logging.getLogger("promptclip")


class PromptedCLIP(nn.Module):
    """``logits = τ · cos(image, class)``; only the learners' parameters train."""

    def __init__(self, backbone: FrozenCLIP, text: Learner, vision: Optional[Learner] = None,
                 losses: Optional[Dict[str, ExtraLoss]] = None):
        super().__init__()
        if "text" not in text.sides:
            raise ConfigError(f"text learner {text.cfg.name!r} does not prompt the text tower; use it as vision learner "
                              f"(vision.name={text.cfg.name}) with a text learner such as zeroshot or coop.")
        if vision is not None:
            if "vision" not in vision.sides:
                raise ConfigError(f"vision learner {vision.cfg.name!r} does not prompt the image tower.")
            if "text" in vision.sides:
                raise ConfigError(f"{vision.cfg.name!r} prompts both towers: use it as the text learner "
                                  f"(text.name={vision.cfg.name}) and set vision=null.")
            if "vision" in text.sides:
                raise ConfigError(f"{text.cfg.name!r} already prompts the image tower; it cannot be combined with "
                                  f"vision learner {vision.cfg.name!r}. Set vision=null.")
        self.backbone = backbone
        self.text = text
        self.vision = vision
        self.losses = nn.ModuleDict(losses or {})
        if self.prompts_vision:
            backbone.require_vision_prompts(f"{(vision or text).cfg.name} prompts")

    @property
    def prompts_vision(self) -> bool:
        return self.vision is not None or "vision" in self.text.sides

    @property
    def image_conditioned(self) -> bool:
        return self.text.image_conditioned

    def learners(self) -> Dict[str, Learner]:
        return {"text": self.text, **({"vision": self.vision} if self.vision is not None else {})}

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_report(self) -> str:
        n = sum(p.numel() for p in self.trainable_parameters())
        total = self.backbone.num_parameters()
        return f"{n:,} prompt parameters ({100 * n / total:.3f}% of the {total / 1e6:.1f} M frozen backbone)"

    def set_classnames(self, classnames: List[str], template: Optional[str] = None,
                       dataset: Optional[str] = None) -> None:
        for learner in self.learners().values():
            learner.set_classnames(self.backbone, classnames, template, dataset)

    @property
    def classnames(self) -> List[str]:
        return self.text.classnames

    def vision_prompts(self) -> Optional[VisionPrompts]:
        source = self.vision if self.vision is not None else self.text
        return source.vision_prompts(self.backbone) if "vision" in source.sides else None

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(self.backbone.encode_image(images, self.vision_prompts()))

    def class_features(self, image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        return normalize(self.text.text_features(self.backbone, image_features))

    def logits(self, image_features: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        scale = self.backbone.logit_scale
        if class_features.dim() == 3:
            return scale * torch.einsum("be,bce->bc", image_features, class_features.to(image_features.dtype))
        return scale * image_features @ class_features.to(image_features.dtype).t()

    def _frozen_source(self, images: torch.Tensor):
        """The batch's unprompted image features, for losses that ask :attr:`ModelOutput.frozen_image_features`."""
        def compute() -> torch.Tensor:
            with torch.no_grad():
                return normalize(self.backbone.encode_image(images))

        return compute

    @property
    def compares_to_frozen_images(self) -> bool:
        """A loss reads ``ModelOutput.frozen_image_features`` (which the engine can then give from its cache)."""
        return any(loss.uses_frozen_image_features for loss in self.losses.values())

    def forward(self, images: Optional[torch.Tensor], labels: Optional[torch.Tensor] = None,
                class_features: Optional[torch.Tensor] = None, image_features: Optional[torch.Tensor] = None,
                frozen_image_features: Optional[torch.Tensor] = None) -> ModelOutput:
        """Logits for ``images``; with ``labels``, also the loss. ``class_features`` skips the text tower;
        ``image_features`` (normalised frozen features, for a model that does not prompt the image tower) replace
        ``images`` and the image tower; ``frozen_image_features`` (normalised, of the same images without prompts)
        save a model that prompts the image tower computing them when a loss asks."""
        img = self.image_features(images) if image_features is None else image_features
        txt = class_features if class_features is not None else self.class_features(img)
        source = self._frozen_source(images) if self.prompts_vision and image_features is None else None
        out = ModelOutput(logits=self.logits(img, txt), image_features=img, text_features=txt,
                          logit_scale=self.backbone.logit_scale, frozen_source=source, frozen=frozen_image_features)
        if labels is not None:
            ce = F.cross_entropy(out.logits.float(), labels)
            terms = {"ce": ce.detach()}
            loss = ce
            for name, term in self.losses.items():
                value = term(out, labels)
                terms[name] = value.detach()
                loss = loss + term.cfg.weight * value
            out.loss, out.terms = loss, terms
        return out
