"""The options of the prompt learners (CoOp, CoCoOp, MaPLe, IVLP, VPT/VFPT), zero-shot CLIP and the linear probe."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from ..config import bounded
from ..errors import ConfigError
from ..registry import LEARNERS
from ..templates import TemplateChoice, check_templates
from .base import Init, LearnerConfig, Position, check_init_words

#: CoOp's context vectors without text.init
DEFAULT_N_CTX = 16
#: how MaPLe's couplings start: layers 1..J−1 as copies of one draw (the authors' code), or each its own draw
CouplingInit = Literal["reference", "independent"]
#: where vision prompt tokens go: after the class token (VPT, DAPT) or after the patch tokens (MaPLe, IVLP)
Placement = Literal["after_cls", "after_patches"]
#: VFPT's Fourier prompts: none, or the FFT over both dimensions, the hidden one or the sequence one
Fourier = Literal["none", "both", "hidden", "sequence"]
#: prompt dropout: a mask per image (VPT, VFPT and DAPT expand the prompts to the batch first) or one per batch
DropoutMode = Literal["per_image", "shared"]


@LEARNERS.options("coop")
@dataclass
class CoOpConfig(LearnerConfig):
    name: str = "coop"
    #: context vectors; null: as many as text.init has tokens (resolved when the model is built), else 16
    n_ctx: Optional[int] = bounded(None, ge=1)
    #: initialise the context from these words ("a photo of a"): one vector per token, so n_ctx must match
    init: Optional[str] = None
    #: one context per class (CSC) instead of one shared context
    class_specific: bool = False
    #: where the class name goes: end, middle or front
    position: Position = "end"
    init_std: float = bounded(0.02, gt=0)

    @property
    def transfers_to_new_classes(self) -> bool:
        return not self.class_specific  # one context per training class

    def __post_init__(self):
        super().__post_init__()
        if self.init and self.class_specific:
            raise ConfigError("Class-specific context (text.class_specific=true) starts from random vectors; "
                              "remove text.init or set text.class_specific=false.")
        if self.n_ctx is None and not self.init:
            self.n_ctx = DEFAULT_N_CTX


@LEARNERS.options("cocoop")
@dataclass
class CoCoOpConfig(LearnerConfig):
    name: str = "cocoop"
    n_ctx: int = bounded(4, ge=1)
    #: the first n_ctx words start the context (the rest stay as fixed text); null: N(0, init_std²)
    init: Optional[str] = "a photo of a"
    init_std: float = bounded(0.02, gt=0)
    #: image × class prompts per text-encoder call; 0 derives it from memory_budget_mb
    chunk_size: int = bounded(0, ge=0)
    #: memory one text-encoder call may use (an estimate from widths, lengths and layers)
    memory_budget_mb: float = bounded(1024.0, gt=0)
    #: recompute each chunk in the backward pass, so training keeps one chunk's activations instead of all B × C
    checkpoint: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_init_words(self.n_ctx, self.init)


@LEARNERS.options("maple")
@dataclass
class MaPLeConfig(LearnerConfig):
    name: str = "maple"
    #: learned text tokens per layer (and vision tokens, through the coupling)
    n_ctx: int = bounded(2, ge=1)
    #: the first n_ctx words start the context; the rest stay as fixed text ("of a" for n_ctx=2)
    init: Optional[str] = "a photo of a"
    #: prompted layers J, from the input, on both towers (at most the towers' layer count, checked with the model)
    depth: int = bounded(9, ge=1)
    #: how the couplings start: "reference" (MaPLe's code: layer 0 its own draw, layers 1..J−1 copies of one
    #: draw, so they start equal) or "independent" (every layer its own draw)
    coupling_init: CouplingInit = "reference"

    def __post_init__(self):
        super().__post_init__()
        check_init_words(self.n_ctx, self.init)


@LEARNERS.options("ivlp")
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
        if isinstance(self.n_text, int) and self.n_text < 1:  # before the type check, whose bound says less
            raise ConfigError("IVLP needs text prompts (text.n_text >= 1). For vision-only deep prompting use "
                              "text.name=zeroshot with vision.name=vpt (preset vpt_deep_clip).")
        super().__post_init__()
        check_init_words(self.n_text, self.init, "text.n_text")


@LEARNERS.options("vpt")
@dataclass
class VPTConfig(LearnerConfig):
    name: str = "vpt"
    #: prompt tokens per layer
    n_tokens: int = bounded(16, ge=1)
    #: layers with their own prompts, from the input: 1 = VPT-shallow; the tower's layer count (12 for ViT-B) = VPT-deep
    depth: int = bounded(1, ge=1)
    #: after_cls (VPT, DAPT) or after_patches (MaPLe/IVLP-style deep vision prompting)
    placement: Placement = "after_cls"
    #: insert before ln_pre (MaPLe/IVLP) or after it (DAPT)
    before_ln_pre: bool = False
    #: uniform: VPT's ±sqrt(6 / (3·patch² + D_v)); normal: N(0, init_std²)
    init: Init = "uniform"
    init_std: float = bounded(0.02, gt=0)
    #: dropout on the prompt tokens of every prompted layer, in training only (scaled by 1/(1−p), as nn.Dropout)
    dropout: float = bounded(0.0, ge=0, lt=1)
    #: per_image: each image of a batch its own mask (the reference codes); shared: one mask for the whole batch
    dropout_mode: DropoutMode = "per_image"
    #: VFPT: none, both (FFT over hidden then sequence), hidden or sequence
    fourier: Fourier = "none"
    #: fraction α of each layer's tokens made Fourier prompts (floor(α·n_tokens), placed first)
    fourier_fraction: float = bounded(0.5, ge=0, le=1)


@LEARNERS.options("zeroshot")
@dataclass
class ZeroShotConfig(LearnerConfig):
    uses_training_data: ClassVar[bool] = False
    name: str = "zeroshot"
    #: "dataset" (the dataset's template), "ensemble" (CoOp's 7 + the dataset's; on ImageNet the 7 alone, as in
    #: CoOp), "imagenet80", "imagenet60", or a list of templates with one "{}" each
    templates: TemplateChoice = "dataset"

    def __post_init__(self):
        super().__post_init__()
        check_templates(self.templates, "text.templates")


@LEARNERS.options("linear_probe")
@dataclass
class LinearProbeConfig(LearnerConfig):
    fits_in_closed_form: ClassVar[bool] = True
    name: str = "linear_probe"
    #: inverse L2 regularisation strength; null: searched on the validation split
    C: Optional[float] = bounded(None, gt=0)
    #: C when it is searched but the dataset has no validation split of its own
    default_C: float = bounded(0.316, gt=0)
    #: refinements of the C search after the coarse grid
    search_steps: int = bounded(8, ge=0)
    max_iter: int = bounded(1000, ge=1)

    @property
    def transfers_to_new_classes(self) -> bool:
        return False  # one weight row per training class
