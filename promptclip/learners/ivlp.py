"""IVLP (MaPLe's baseline): independent deep prompts on the text and image towers, no coupling."""
from __future__ import annotations

from typing import Optional

from ..backbone import VisionPrompts
from ..options.learners import IVLPConfig
from .base import LEARNERS, check_architecture
from .deep import DeepTextLearner, LayerPrompts, depth_problems, vision_problems


@LEARNERS.register("ivlp")
class IVLP(DeepTextLearner):
    """Text side as in :class:`DeepTextLearner`; vision tokens ``[n_vision, D_v]`` per layer (``N(0, 0.02²)``)
    appended after the patches before ``ln_pre`` and replaced at layers ``1..vision_depth−1``.

    With ``n_vision=0`` the learner prompts the text tower only (``sides == ("text",)``), so a separate vision
    learner may be combined with it. For vision-only deep prompting use ``text.name=zeroshot`` with the ``vpt`` vision
    learner (preset ``vpt_deep_clip``).
    """

    Config = IVLPConfig
    sides = ("text", "vision")

    @classmethod
    def architecture_problems(cls, cfg, arch):
        problems = depth_problems(cfg.text_depth, arch.text_layers, "text.text_depth", "text")
        if cfg.n_vision > 0:
            problems += vision_problems(arch) + depth_problems(cfg.vision_depth, arch.vision_layers,
                                                               "text.vision_depth", "vision")
        return problems

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        if cfg.n_vision > 0:
            backbone.require_vision_prompts("IVLP vision prompts")
        check_architecture(backbone.architecture, cfg)
        self._build_text(backbone, cfg.n_text, cfg.text_depth, cfg.init, cfg.init_std, "text.n_text")
        if cfg.n_vision > 0:
            self.vision_deep = LayerPrompts(range(cfg.vision_depth), cfg.n_vision, backbone.vision_width,
                                            scale=cfg.init_std)
        else:
            self.sides = ("text",)

    def vision_prompts(self, backbone) -> Optional[VisionPrompts]:
        if "vision" not in self.sides:
            return None
        return VisionPrompts(self.vision_deep.per_layer(), placement="after_patches", before_ln_pre=True)
