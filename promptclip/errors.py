"""Errors a user can act on. The CLI prints their message without a traceback."""


class PromptclipError(Exception):
    """Base class: the message names the problem and the way out."""


class ConfigError(PromptclipError):
    """A config file, key or value is wrong."""


class DataError(PromptclipError):
    """A dataset folder, split file or image is missing or malformed."""


class BackboneError(PromptclipError):
    """A CLIP model cannot be created, loaded or used the way asked."""


class UnknownNameError(PromptclipError, LookupError):
    """A registry lookup failed (unknown learner, dataset, loss...)."""


class UnregisteredInConfig(ConfigError, LookupError):
    """A config names a learner, loss or callback that nothing registered (a typo, or a plugin not loaded)."""


class TrainingError(PromptclipError):
    """Training stopped because it cannot go on correctly (a non-finite loss)."""
