"""MaPLe (Khattak et al., CVPR 2023): deep text prompts coupled to deep vision prompts by per-layer linear maps."""
from __future__ import annotations

import copy

from torch import nn

from ..backbone import VisionPrompts
from ..options.learners import MaPLeConfig
from .base import LEARNERS, check_architecture
from .deep import DeepTextLearner, depth_problems, vision_problems


@LEARNERS.register("maple")
class MaPLe(DeepTextLearner):
    """Text prompts ``ctx`` (layer 0) and ``P_i`` (layers ``1..J−1``) as in :class:`DeepTextLearner`; the vision
    prompts are their images under one ``Linear(D_t, D_v)`` per layer, ``F_i(P_i)``, appended after the patch tokens
    before ``ln_pre`` and replaced at layers ``1..J−1``. Text → vision only; widths come from the backbone.

    Every coupling is its own parameter; with ``coupling_init="reference"`` those of layers ``1..J−1`` start as
    copies of one ``Linear`` (as in the authors' code), with ``"independent"`` each is drawn on its own.

    ViT-B/16 defaults: ``9·2·512 + 9·(512·768 + 768) = 3,555,072`` parameters.
    """

    Config = MaPLeConfig
    sides = ("text", "vision")

    @classmethod
    def architecture_problems(cls, cfg, arch):
        return (depth_problems(cfg.depth, arch.text_layers, "text.depth", "text") + vision_problems(arch)
                + depth_problems(cfg.depth, arch.vision_layers, "text.depth", "vision"))

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        backbone.require_vision_prompts("MaPLe prompts")
        check_architecture(backbone.architecture, cfg)
        self._build_text(backbone, cfg.n_ctx, cfg.depth, cfg.init)
        self.couplings = self._build_couplings(backbone.text_width, backbone.vision_width, cfg.depth,
                                               cfg.coupling_init)

    @staticmethod
    def _build_couplings(text_width: int, vision_width: int, depth: int, init: str) -> nn.ModuleList:
        """One ``Linear(D_t, D_v)`` per prompted layer, each drawn with torch's default ``Linear`` init."""
        first = nn.Linear(text_width, vision_width)
        if init == "independent":
            return nn.ModuleList([first] + [nn.Linear(text_width, vision_width) for _ in range(depth - 1)])
        shared_start = nn.Linear(text_width, vision_width)
        return nn.ModuleList([first] + [copy.deepcopy(shared_start) for _ in range(depth - 1)])

    def vision_prompts(self, backbone) -> VisionPrompts:
        tokens = {layer: self.couplings[layer](p) for layer, p in self.text_layers().items()}
        return VisionPrompts(tokens, placement="after_patches", before_ln_pre=True)
