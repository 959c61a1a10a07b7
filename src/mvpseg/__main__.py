"""``python -m mvpseg`` (and ``torchrun -m mvpseg``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
