"""IVLP (MaPLe's baseline): independent deep prompts on the text and image towers, no coupling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..backbone import VisionPrompts
from ..config import bounded
from ..errors import ConfigError
from .base import LEARNERS, LearnerConfig, check_architecture
from .deep import DeepTextLearner, LayerPrompts, depth_problems, vision_problems
from .prompts import check_init_words


@dataclass
class IVLPConfig(LearnerConfig):
    name: str = "ivlp"
    #: learned text tokens per layer, right after SOS
    n_text: int = bounded(2, ge=1)
    #: the first n_text words start the context; the rest stay as fixed text ("of a" for n_text=2)
    init: Optional[str] = "a photo of a"
    #: prompted text layers, from the input
    text_depth: int = bounded(12, ge=1)
    #: learned vision tokens per layer, after the patch tokens; 0 prompts the text tower only
    n_vision: int = bounded(2, ge=0)
    #: prompted vision layers, from the input
    vision_depth: int = bounded(12, ge=1)
    init_std: float = bounded(0.02, gt=0)

    def __post_init__(self):
        check_init_words(self.n_text, self.init, "text.n_text")


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
        if cfg.n_text < 1:
            raise ConfigError("IVLP needs text prompts (text.n_text >= 1). For vision-only deep prompting use "
                              "text.name=zeroshot with vision.name=vpt (preset vpt_deep_clip).")
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
