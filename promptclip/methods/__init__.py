"""Method-specific objectives and callbacks, one file per method (the learners themselves live in learners/)."""
from . import kgcoop, promptsrc  # noqa: F401  (register their losses and callbacks)
