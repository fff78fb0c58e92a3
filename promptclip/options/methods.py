"""The options of the methods in :mod:`promptclip.methods`: extra losses and callbacks (DAPT, KgCoOp, PromptSRC)
and the methods on frozen features (CLIP-Adapter, TaskRes, Tip-Adapter, LP++, ZS-LP, GDA)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Literal, Optional

from ..config import bounded
from ..registry import CALLBACKS, LEARNERS, LOSSES
from ..templates import TemplateChoice
from .base import AnchoredLossConfig, CallbackConfig, FeatureMethodConfig, LossConfig

# ------------------------------------------------------------------------------------------ losses, callbacks
#: DAPT's inter-dispersion: the reference's mean Gaussian potential, or the paper's log of it
DispersionForm = Literal["reference", "log"]


@LOSSES.options("dapt_inter")
@dataclass
class InterDispersionConfig(LossConfig):
    weight: float = bounded(0.1, ge=0)  # β_t
    t: float = bounded(2.0, gt=0)
    #: reference: the mean Gaussian potential (DAPT's code, which produced the published numbers); log: its log
    form: DispersionForm = "reference"


@LOSSES.options("dapt_intra")
@dataclass
class IntraDispersionConfig(LossConfig):
    weight: float = bounded(0.1, ge=0)  # β_v


@LOSSES.options("kgcoop")
@dataclass
class KgCoOpConfig(AnchoredLossConfig):
    """λ and the zero-shot templates: ``templates: dataset`` (the default, as in the reference) is the dataset's
    template in KgCoOp's table (``methods.kgcoop.KGCOOP_TEMPLATES``), or the dataset's own for a dataset outside
    it."""

    weight: float = bounded(8.0, ge=0)  # λ (8.0 in the reference's trainer)
    templates_option: ClassVar[str] = "losses.kgcoop.templates"


@LOSSES.options("promptsrc")
@dataclass
class PromptSRCConfig(AnchoredLossConfig):
    weight: float = bounded(1.0, ge=0)  # scales the three terms together
    text_weight: float = bounded(25.0, ge=0)  # TEXT_LOSS_WEIGHT
    image_weight: float = bounded(10.0, ge=0)  # IMAGE_LOSS_WEIGHT
    logits_weight: float = bounded(1.0, ge=0)  # the reference's fixed weight of the KL term
    temperature: float = bounded(1.0, gt=0)
    #: the reference: the 60 ImageNet templates for every dataset, their raw features averaged (CLIP's own
    #: ensembling normalises each one first)
    templates: TemplateChoice = "imagenet60"
    normalize_each_template: bool = False
    templates_option: ClassVar[str] = "losses.promptsrc.templates"


@CALLBACKS.options("gpa")
@dataclass
class GPAConfig(CallbackConfig):
    mean: float = 15.0  # μ, in epochs (1-based): GPA_MEAN
    std: float = bounded(1.0, gt=0)  # σ, in epochs: GPA_STD


# ------------------------------------------------------------------------------------------ methods on features
@LEARNERS.options("clip_adapter")
@dataclass
class CLIPAdapterConfig(FeatureMethodConfig):
    """The residual ratio and the bottleneck's reduction (the reference's 0.2 and 4)."""

    name: str = "clip_adapter"
    #: weight of the adapted feature in the blend (clip_adapter.py L104)
    ratio: float = bounded(0.2, ge=0, le=1)
    #: hidden width = embed_dim // reduction (clip_adapter.py L55, L97)
    reduction: int = bounded(4, ge=1)


@LEARNERS.options("taskres")
@dataclass
class TaskResConfig(FeatureMethodConfig):
    """The residual scale α; null: the reference's value for the dataset (0.5; OxfordFlowers 1.0)."""

    name: str = "taskres"
    alpha: Optional[float] = bounded(None, ge=0)


@LEARNERS.options("tip_adapter")
@dataclass
class TipAdapterConfig(FeatureMethodConfig):
    """The cache's views and the grid's sizes; α and β come from the reference's per-dataset values
    (``methods.tip_adapter.TIP_HPARAMS``) unless set."""

    training_free: ClassVar[bool] = True
    name: str = "tip_adapter"
    #: augmented training views averaged into each cache key (the reference's augment_epoch, configs/*.yaml:30)
    augment_epoch: int = bounded(10, ge=1)
    #: residual ratio α with ``hparams: fixed`` (and while Tip-Adapter-F trains); null: the dataset's init_alpha
    alpha: Optional[float] = bounded(None, ge=0)
    #: sharpness β likewise; null: the dataset's init_beta
    beta: Optional[float] = bounded(None, ge=0)
    #: grid points for β and α with ``hparams: val`` (the reference's search_step, configs/*.yaml:18)
    beta_steps: int = bounded(200, ge=1)
    alpha_steps: int = bounded(20, ge=1)


@LEARNERS.options("tip_adapter_f")
@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter's options; ``alpha``/``beta`` (or the dataset's values) also hold while the keys train."""

    training_free: ClassVar[bool] = False
    name: str = "tip_adapter_f"


@LEARNERS.options("lp_plus_plus")
@dataclass
class LPPlusPlusConfig(FeatureMethodConfig):
    """LP++'s solver (``hparams``: ``val`` keeps the best-validation iteration, ``fixed`` the last)."""

    training_free: ClassVar[bool] = True
    name: str = "lp_plus_plus"
    views: int = bounded(1, ge=1)  # augmented views per shot, kept as samples (1: the reference's one pass)
    iterations: int = bounded(300, ge=1)  # full-batch steps (train_epoch: 300, configs/base.yaml:L17)
    alpha_every: int = bounded(10, ge=1)  # iterations between α steps (L137)
    momentum: float = bounded(0.9, ge=0, lt=1)  # SGD momentum on W and b (L116)


@LEARNERS.options("zs_lp")
@dataclass
class ZSLPConfig(FeatureMethodConfig):
    """The zero-shot templates the weights start from; nothing else (the optimiser is the run's ``optim``)."""

    name: str = "zs_lp"


#: GDA's α grid with ``hparams: val`` (the reference's main_few_shots.py:L69)
GDA_ALPHA_GRID = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]


@LEARNERS.options("gda")
@dataclass
class GDAConfig(FeatureMethodConfig):
    """GDA's estimation views and ``α`` (``hparams``: ``fixed`` uses ``alpha``, ``val`` searches ``alphas``)."""

    training_free: ClassVar[bool] = True
    name: str = "gda"
    views: int = bounded(10, ge=1)  # augmented views per shot, kept as samples (augment_epoch: 10, configs/*.yaml)
    alpha: float = bounded(0.1, ge=0)
    alphas: List[float] = bounded(default_factory=lambda: list(GDA_ALPHA_GRID), ge=0)
