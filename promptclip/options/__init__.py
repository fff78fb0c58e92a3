"""The options dataclasses of every built-in learner, loss and callback, declared without torch.

A run's config holds each chosen registrant's options (``text``, ``vision``, ``losses``, ``callbacks``), so the
config layer must know them; declaring them here, apart from the modules that implement the methods, lets
``build_config`` check a run's settings without importing torch. Each registrant's implementation takes its
``Config`` from here; an outside plugin may declare its options beside its implementation instead.
:mod:`promptclip` imports this package, so the declarations are there before any lookup.
"""
from . import learners, methods  # noqa: F401  (declare the built-in options)
