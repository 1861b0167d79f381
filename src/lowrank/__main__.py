"""``python -m lowrank`` is the ``lowrank`` command."""

import sys

from .cli import main

sys.exit(main())
