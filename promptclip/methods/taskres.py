"""TaskRes (Yu et al., CVPR 2023): a learned residual added to the frozen zero-shot classifier.

As computed, with ``f`` the normalised frozen image feature ``[B, E]`` and ``τ`` CLIP's logit scale::

    W_zs   = mean_t text(t(c))                 RAW text features, averaged over the templates, NOT normalised
    W      = W_zs + α · X                      X: [C, E], learned, initialised to zeros
    logits = τ · f · normalize(W)ᵀ             (the model normalises what text_features returns)

so at initialisation TaskRes is zero-shot CLIP on the raw-mean classifier. ``α`` is 0.5, 1.0 on OxfordFlowers.

Reference: geekyutao/TaskRes trainers/taskres.py (HEAD 51953596): ``TaskResLearner`` L91-101 (the base as a buffer,
the residual ``zeros_like`` it, ``base + alpha * residual``), ``_get_base_text_features`` L118-142 (templates: the 7
``IMAGENET_TEMPLATES_SELECT`` + "a photo of a {}." on ImageNet, else the dataset's ``CUSTOM_TEMPLATES`` entry,
L125-129: CoOp's per-dataset templates, the datasets' own here; ``stack(...).mean(1)`` of the raw encoder outputs,
L140), ``CustomCLIP.forward`` L198-217 (normalise both
sides after the sum, ``logit_scale.exp()``); α per dataset in scripts/taskres/train_regular.sh (L3, L16, L29, L42,
L55: 0.5, OxfordFlowers 1.0). The base is kept un-normalised because ``α`` is relative to its norm:
``normalize(s·ŵ + α·x) = normalize(ŵ + (α/s)·x)``; normalising it first would change what α means.

The "enhanced base" (``_get_enhanced_base_text_features`` L144-178) replaces CLIP's text projection with pre-tuned
per-dataset, per-shot weights downloaded from the authors: out of scope here. The reference has no validation (the
last epoch is tested), so ``hparams: val`` runs the fixed defaults like ``fixed`` (nothing is searched).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ..backbone import normalize
from ..learners.base import LEARNERS
from ..learners.features import FeatureMethod, imagenet_ensemble, raw_template_mean
from ..options.methods import TaskResConfig

#: The reference's residual scale per dataset (scripts/taskres/train_regular.sh); any other dataset gets 0.5.
TASKRES_ALPHA: Dict[str, float] = {"OxfordFlowers": 1.0}
DEFAULT_ALPHA = 0.5


def taskres_alpha(alpha: Optional[float], dataset: str) -> float:
    """``alpha`` if given, else the reference's value for ``dataset``."""
    return alpha if alpha is not None else TASKRES_ALPHA.get(dataset, DEFAULT_ALPHA)


@LEARNERS.register("taskres")
class TaskRes(FeatureMethod):
    """Class features ``W_zs + α·X``: the raw-mean zero-shot base (a buffer) plus a zero-initialised residual."""

    Config = TaskResConfig

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        shape = (len(classnames), backbone.embed_dim)
        self.register_buffer("base", torch.zeros(shape))
        self.residual = nn.Parameter(torch.zeros(shape))
        #: saved with the run, so a loaded run keeps the α it trained with whatever the table says later
        self.register_buffer("alpha", torch.tensor(taskres_alpha(cfg.alpha, dataset)))

    def dataset_templates(self, dataset: str, template: str) -> List[str]:
        return imagenet_ensemble(dataset, template, with_photo=True)

    def prepare(self, context) -> None:
        """The base ``W_zs``: the mean of the templates' raw text features (``zeroshot``: it normalised)."""
        self.base = raw_template_mean(context.backbone, context.classnames, self.templates(context)).to(context.device)
        self.zeroshot = normalize(self.base)
        self.note_hparams()

    def text_features(self, backbone, image_features=None) -> torch.Tensor:
        return self.base + self.alpha * self.residual
