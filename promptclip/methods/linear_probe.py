"""The linear probe as a registered learner: logistic regression on frozen image features, fitted in closed form.

It holds no prompts, so it is never built as a prompt learner: the engine fits it
(:func:`promptclip.engine.linear_probe.fit_linear_probe`) because its options are ``fits_in_closed_form``.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..learners.base import LEARNERS, Learner
from ..options.learners import LinearProbeConfig


@LEARNERS.register("linear_probe")
class LinearProbe(Learner):
    """A closed-form method on frozen features; building it as a prompt learner is refused."""

    Config = LinearProbeConfig

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        raise ConfigError("linear_probe is not a prompt learner: it cannot be combined with prompts or loaded as "
                          "saved prompts. Run it on its own (promptclip train -c linear_probe ...), which fits a "
                          "logistic regression on frozen image features.")
