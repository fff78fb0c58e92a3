"""Prompt learners, registered by name. A new method is one file here plus a preset in configs/."""
from . import cocoop, coop, ivlp, maple, vpt, zeroshot  # noqa: F401  (register the learners)
from .base import LEARNERS, Learner, LearnerConfig, build_learner

__all__ = ["LEARNERS", "Learner", "LearnerConfig", "build_learner"]
