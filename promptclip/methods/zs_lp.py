"""ZS-LP (the zero-shot-initialised linear probe of CLAP, Silva-Rodríguez et al., CVPR 2024): a cosine classifier
on frozen features whose class weights start at zero-shot CLIP's, trained by the engine.

``logits = τ · f · normalize(W)ᵀ``, ``W [C,E]`` the trainable class weights (the learner's class features; the model
normalises them in every forward, as jusiro/CLAP trainers/adapters.py ``forward_lp`` L343-354 does), ``τ`` CLIP's
frozen logit scale (L294, L351), no bias. ``W₀ = mean_t text(t, c)``: the raw, unnormalised mean of the template
features (L118-128, L148-150), so at initialisation the logits are zero-shot CLIP's with ``normalize(W₀)`` as weights;
``W₀``'s norm matters only to the SGD dynamics, as in the reference. The recipe (configs/methods/zs_lp.yaml) is
configs/trainers/SGD_lr1e-1_B256_ep300.yaml; there is no validation and no search (``hparams`` changes nothing).
An epoch here is one pass over the N = K·C features of one cached view (view = epoch mod ``train.views``); the
reference's is ⌊N/256⌋ batches (at least 1) drawn from all 20 views at once (run_epoch, L421-484).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from ..backbone import normalize
from ..learners.base import LEARNERS
from ..learners.features import FeatureMethod, imagenet_ensemble, raw_template_mean
from ..options.methods import ZSLPConfig


@LEARNERS.register("zs_lp")
class ZSLP(FeatureMethod):
    """Class weights ``W`` (a Parameter) initialised at the raw zero-shot template mean; the default cosine head."""

    Config = ZSLPConfig

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        self.weight = nn.Parameter(torch.zeros(len(classnames), backbone.embed_dim))

    def dataset_templates(self, dataset: str, template: str) -> List[str]:
        """CLAP's ``CUSTOM_TEMPLATES`` (L31-47: the CoOp per-dataset ones, promptclip's own); on ImageNet the 7-
        template ensemble plus "a photo of a {}." (L112-116)."""
        return imagenet_ensemble(dataset, template, with_photo=True)

    def prepare(self, context) -> None:
        raw = raw_template_mean(context.backbone, self.classnames, self.templates(context))
        with torch.no_grad():
            self.weight.copy_(raw)
        self.zeroshot = normalize(raw).to(self.zeroshot.device)  # the zero-shot weights W₀ stands for
        self.note_hparams()

    def text_features(self, backbone, image_features=None) -> torch.Tensor:
        return self.weight
