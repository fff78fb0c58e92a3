"""PromptedCLIP: a frozen backbone, a text learner, an optional vision learner and extra losses → logits and loss;
:func:`create_model`, the one way to a run's model, for training and for loading alike."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import callbacks, learners, methods  # noqa: F401  (register the built-in implementations)
from .architecture import Architecture
from .backbone import FrozenCLIP, VisionPrompts, normalize
from .errors import ConfigError
from .hooks import ModelOutput, PrepareContext
from .learners.base import Learner, StateMismatch, build_learner, check_architecture
from .losses import ExtraLoss
from .registry import LEARNERS, LOSSES

log = logging.getLogger("promptclip")


class PromptedCLIP(nn.Module):
    """Two stages: :meth:`image_features` (the image tower, prompted or not) and :meth:`head` (features → logits, by
    default ``τ · cos(image, class)``; the text learner may add to it or replace it). Every path — a training step,
    evaluation, ``predict``, ``load_run`` — calls the same ``head``. Only the learners' parameters train."""

    def __init__(self, backbone: FrozenCLIP, text: Learner, vision: Optional[Learner] = None,
                 losses: Optional[Dict[str, ExtraLoss]] = None):
        super().__init__()
        if "text" not in text.sides:
            raise ConfigError(f"text learner {text.cfg.name!r} does not prompt the text tower; use it as vision "
                              f"learner (vision.name={text.cfg.name}) with a text learner such as zeroshot or coop.")
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
        #: the classes the model was built for (trained on, or loaded as trained); evaluation may set others
        self.training_classnames = list(text.classnames)
        ruled = [name for name, loss in self.losses.items() if loss.gradient_rule]
        if len(ruled) > 1:
            raise ConfigError(f"The losses {' and '.join(ruled)} each combine their own gradient with the main one; "
                              f"a run can take one of them.")
        if self.modifies_image_tower:
            backbone.require_vision_prompts(f"{(vision or text).cfg.name} prompts")

    @property
    def modifies_image_tower(self) -> bool:
        """A learner changes the image tower (prompts or weight deltas), so image features come from images, not
        from the frozen-feature cache."""
        return self.vision is not None or "vision" in self.text.sides

    @property
    def image_conditioned(self) -> bool:
        return self.text.image_conditioned

    def learners(self) -> Dict[str, Learner]:
        return {"text": self.text, **({"vision": self.vision} if self.vision is not None else {})}

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self) -> List[dict]:
        """The trainable parameters as optimiser groups: the learners', then each loss's with its ``lr_scale``."""
        learned = [p for learner in self.learners().values() for p in learner.parameters() if p.requires_grad]
        groups = [{"params": learned, "lr_scale": 1.0}] if learned else []
        for loss in self.losses.values():
            own = [p for p in loss.parameters() if p.requires_grad]
            if own:
                groups.append({"params": own, "lr_scale": float(loss.lr_scale)})
        return groups

    def gradient_rule(self) -> Optional[ExtraLoss]:
        """The loss whose gradient is combined with the main one by its own rule (ProGrad's), if any."""
        return next((loss for loss in self.losses.values() if loss.gradient_rule), None)

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

    def _image_side(self) -> Optional[Learner]:
        source = self.vision if self.vision is not None else self.text
        return source if "vision" in source.sides else None

    def vision_prompts(self) -> Optional[VisionPrompts]:
        source = self._image_side()
        return source.vision_prompts(self.backbone) if source is not None else None

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        source = self._image_side()
        if source is None:
            return normalize(self.backbone.encode_image(images))
        return normalize(self.backbone.encode_image(images, source.vision_prompts(self.backbone),
                                                    source.vision_adapters(self.backbone)))

    def class_features(self, image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        return normalize(self.text.text_features(self.backbone, image_features))

    def head(self, image_features: torch.Tensor, class_features: Optional[torch.Tensor] = None) -> ModelOutput:
        """Logits of normalised ``image_features`` (``class_features``: computed once by the caller, else here)."""
        txt = class_features if class_features is not None else self.class_features(image_features)
        logits = self.text.head(image_features, txt, self.backbone.logit_scale)
        if not self.training:
            on_training_classes = self.classnames == self.training_classnames
            for loss in self.losses.values():
                logits = loss.fuse(logits, image_features, on_training_classes)
        return ModelOutput(logits=logits, image_features=image_features, text_features=txt,
                           logit_scale=self.backbone.logit_scale)

    def add_loss(self, out: ModelOutput, labels: torch.Tensor) -> ModelOutput:
        """``out`` with ``loss = CE + Σ weight · extra loss`` and its detached terms."""
        ce = F.cross_entropy(out.logits.float(), labels)
        terms = {"ce": ce.detach()}
        loss = ce
        for name, term in self.losses.items():
            value = term(out, labels)
            terms[name] = value.detach()
            if term.gradient_rule:
                out.separate = term.cfg.weight * value
            else:
                loss = loss + term.cfg.weight * value
        out.loss, out.terms = loss, terms
        return out

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

    def forward(self, images: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None, frozen_image_features: Optional[torch.Tensor] = None
                ) -> ModelOutput:
        """Logits for ``images``, or for their normalised frozen ``image_features`` (a model that does not prompt
        the image tower); with ``labels``, also the loss. ``frozen_image_features`` (normalised, of the same images
        without prompts) save a model that prompts the image tower computing them when a loss asks."""
        img = self.image_features(images) if image_features is None else image_features
        out = self.head(img)
        out.frozen = frozen_image_features
        if self.modifies_image_tower and image_features is None:
            out.frozen_source = self._frozen_source(images)
        return self.add_loss(out, labels) if labels is not None else out


def config_problems(cfg, arch: Architecture) -> List[str]:
    """Every problem of a run config's learners (``cfg.text``, ``cfg.vision``) on the backbone ``arch``, asked of
    their implementations, which this module imports."""
    options = [c for c in (cfg.text, cfg.vision) if c is not None]
    problems = [] if arch.text_layers is not None or cfg.text is None else [
        f"{arch.name}'s text tower is not a causal CLIP transformer with EOT pooling, which prompt learning needs"]
    return problems + [p for c in options for p in LEARNERS.get(c.name).architecture_problems(c, arch)]


@dataclass
class ModelParts:
    """What a run's model is made of: the learner and loss options and the classes it is built for."""

    text: Any  # the text learner's config
    classnames: List[str]
    template: str = "a photo of a {}."
    dataset: str = ""  # the canonical name of the dataset the class names come from
    vision: Any = None
    losses: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg, dataset) -> "ModelParts":
        """The parts of a run config ``cfg`` on ``dataset`` (a :class:`~promptclip.data.base.Dataset`)."""
        return cls(cfg.text, dataset.classnames, dataset.template, dataset.name, cfg.vision, dict(cfg.losses))


def create_model(parts: ModelParts, backbone: FrozenCLIP, context: Optional[PrepareContext] = None,
                 state: Optional[Dict[str, torch.Tensor]] = None) -> PromptedCLIP:
    """The one way to a run's model. For training, ``context`` prepares the learners and losses on the data (a
    cache model, prototypes, zero-shot anchors); for loading, ``state`` (``text.<name>`` / ``vision.<name>``
    tensors, as :func:`~promptclip.engine.prompts.save_prompts` writes) restores what was learned and prepared.
    Every problem of the learners on this backbone is reported at once, before anything is built."""
    check_architecture(backbone.architecture, *[c for c in (parts.text, parts.vision) if c is not None])
    built = {side: build_learner(options, backbone, parts.classnames, parts.template, parts.dataset)
             for side, options in (("text", parts.text), ("vision", parts.vision)) if options is not None}
    losses = {name: LOSSES.get(name)(options) for name, options in parts.losses.items()}
    if state is not None:
        owners = {**{side: (learner, f"the {side} learner") for side, learner in built.items()},
                  **{f"losses.{name}": (loss, f"the loss {name}") for name, loss in losses.items()}}
        for prefix, (module, what) in owners.items():  # the keys engine.prompts.prompt_tensors writes
            try:
                module.load_learned({k[len(prefix) + 1:]: v for k, v in state.items()
                                     if k.startswith(f"{prefix}.")})
            except StateMismatch as err:
                raise StateMismatch(what, str(err)) from None
    model = PromptedCLIP(backbone, built["text"], built.get("vision"), losses)
    if context is not None:
        for learner in built.values():
            learner.prepare(context)
        for loss in model.losses.values():
            loss.prepare(context)
    return model
