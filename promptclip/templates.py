"""Zero-shot prompt templates: each dataset's CoOp template and the ensembles used in the papers."""
from __future__ import annotations

from typing import List, Literal, Sequence, Union

from .errors import ConfigError

#: The 7 ImageNet templates of CoOp's "ZeroshotCLIP2" ensemble (``IMAGENET_TEMPLATES_SELECT``).
COOP_ENSEMBLE = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


#: The 60 of CLIP's 80 ImageNet templates that PromptSRC averages for its frozen text features, in its order
#: (muzairkhattak/PromptSRC, trainers/imagenet_templates.py ``IMAGENET_TEMPLATES``), for every dataset.
IMAGENET60 = [
    'a photo of a {}.',
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
]


def imagenet80() -> List[str]:
    """CLIP's 80 ImageNet templates, as shipped by open_clip."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def coop_ensemble(dataset_template: str, dataset: str = "") -> List[str]:
    """CoOp's ensemble: the 7 templates, plus the dataset's own for every dataset but ImageNet itself.

    As in CoOp's ``ZeroshotCLIP2``, which appends the dataset's template unless the dataset name is exactly
    ``ImageNet``: ImageNet gets 7 templates, its shift sets (ImageNetV2, -Sketch, -A, -R) and all others 8.
    """
    return list(COOP_ENSEMBLE) if dataset == "ImageNet" else COOP_ENSEMBLE + [dataset_template]


#: a template choice: a named set (see :func:`resolve_templates`) or a list of templates with one "{}" each
TemplateChoice = Union[Literal["dataset", "ensemble", "imagenet80", "imagenet60"], List[str]]


def check_templates(templates, option: str) -> None:
    """Refuse a list of templates that has one without exactly one "{}" for the class name (a named set passes)."""
    bad = [t for t in templates if t.count("{}") != 1] if isinstance(templates, list) else []
    if bad:
        raise ConfigError(f"{option} need exactly one '{{}}' for the class name each: {bad[:3]}.")


def resolve_templates(choice, dataset_template: str, dataset: str = "") -> List[str]:
    """``dataset`` → the dataset's own; ``ensemble`` → :func:`coop_ensemble` (``dataset`` is the canonical dataset
    name, which decides whether the dataset's template joins the 7); ``imagenet80``; ``imagenet60``; or a list."""
    if isinstance(choice, str):
        if choice == "dataset":
            return [dataset_template]
        if choice == "ensemble":
            return coop_ensemble(dataset_template, dataset)
        if choice == "imagenet80":
            return imagenet80()
        if choice == "imagenet60":
            return list(IMAGENET60)
        choice = [choice]
    templates = list(choice)
    check_templates(templates, "Templates")
    return templates


def prompt_classname(name: str) -> str:
    """Class names enter prompts with underscores as spaces."""
    return name.replace("_", " ")


def fill(template: str, classnames: Sequence[str]) -> List[str]:
    return [template.format(prompt_classname(c)) for c in classnames]
