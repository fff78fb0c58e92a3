"""``python -m promptclip`` (and ``torchrun -m promptclip train ...``) runs the command line."""
import sys

from .cli import main

sys.exit(main())
