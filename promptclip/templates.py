"""Zero-shot prompt templates: each dataset's CoOp template and the ensembles used in the papers."""
from __future__ import annotations

from typing import List, Sequence

#: The 7 ImageNet templates CoOp's "ZeroshotCLIP2" adds to each dataset's own template.
COOP_ENSEMBLE = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


def imagenet80() -> List[str]:
    """CLIP's 80 ImageNet templates, as shipped by open_clip."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def resolve_templates(choice, dataset_template: str) -> List[str]:
    """``dataset`` → the dataset's own; ``ensemble`` → CoOp's 7 + the dataset's; ``imagenet80``; or a list."""
    if isinstance(choice, str):
        if choice == "dataset":
            return [dataset_template]
        if choice == "ensemble":
            return COOP_ENSEMBLE + [dataset_template]
        if choice == "imagenet80":
            return imagenet80()
        choice = [choice]
    templates = list(choice)
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        from .errors import ConfigError

        raise ConfigError(f"Templates need exactly one '{{}}' for the class name: {bad[:3]}.")
    return templates


def fill(template: str, classnames: Sequence[str]) -> List[str]:
    from .data.base import prompt_classname

    return [template.format(prompt_classname(c)) for c in classnames]
