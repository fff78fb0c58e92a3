"""What every learner's, loss's and callback's options have, and the choices several of them share.

Every options dataclass checks its values against its field types when it is built (:func:`~promptclip.config.
check_types`), so the types are the one validator, for options read from YAML and built in Python alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from ..config import bounded, check_types
from ..errors import ConfigError
from ..templates import TemplateChoice, check_templates

#: where the class name goes among the context slots
Position = Literal["end", "middle", "front"]
#: prompt token init: N(0, scale²) or U(−scale, scale)
Init = Literal["normal", "uniform"]
#: fixed: the published defaults, no validation data read; val: the reference's search on the few-shot validation
#: split (min(shots, 4) per class, as CoOp draws it), never on test
HyperParameters = Literal["fixed", "val"]


def check_init_words(n_ctx: int, words: Optional[str], option: str = "text.n_ctx") -> None:
    """Refuse more context vectors than ``words`` has words (a config check: it needs no tokenizer)."""
    if words and len(words.split()) < n_ctx:
        raise ConfigError(f"{option}={n_ctx} context vectors start from the first {n_ctx} words of "
                          f"text.init={words!r}, which has {len(words.split())}: set {option} to at most "
                          f"{len(words.split())}, or text.init=null for a random start.")


@dataclass
class LearnerConfig:
    """Options every learner has; subclasses add their own fields."""

    #: the learner trains on (or fits to) the few-shot training split; false runs need no shot count
    uses_training_data: ClassVar[bool] = True
    #: uses the training data only in ``prepare`` (a cache model, class statistics): nothing to train by gradient
    training_free: ClassVar[bool] = False
    #: fitted by ``Learner.fit`` on frozen features in closed form (the linear probe) instead of by gradient steps;
    #: such a learner is a method of its own, with no prompts to combine or save
    fits_in_closed_form: ClassVar[bool] = False
    name: str = ""

    def __post_init__(self):
        check_types(self)

    @property
    def transfers_to_new_classes(self) -> bool:
        """Whether what it learns applies to classes it was not trained on (base-to-new, cross-dataset)."""
        return True


@dataclass
class FeatureMethodConfig(LearnerConfig):
    """Options every method on features has."""

    #: the zero-shot class weights' templates: "dataset" (the method's reference choice for the dataset), a named
    #: set ("ensemble", "imagenet80", "imagenet60") or a list of templates with one "{}" each
    templates: TemplateChoice = "dataset"
    hparams: HyperParameters = "fixed"

    @property
    def transfers_to_new_classes(self) -> bool:
        return False  # built from the training classes' features

    def __post_init__(self):
        super().__post_init__()
        check_templates(self.templates, "text.templates")


@dataclass
class LossConfig:
    weight: float = bounded(1.0, ge=0)

    def __post_init__(self):
        check_types(self)


@dataclass
class AnchoredLossConfig(LossConfig):
    #: the frozen class features' templates: a named set ("dataset", "ensemble", "imagenet80", "imagenet60") or a
    #: list of templates with one "{}" each
    templates: TemplateChoice = "dataset"
    #: normalise each template's features before averaging them (CLIP's ensembling); false averages the raw ones
    normalize_each_template: bool = True
    #: the option's full name, for messages
    templates_option: ClassVar[str] = "templates"

    def __post_init__(self):
        super().__post_init__()
        check_templates(self.templates, self.templates_option)


@dataclass
class CallbackConfig:
    """Options every callback has (none yet); subclasses add their own fields."""

    def __post_init__(self):
        check_types(self)
