"""``python -m hdm_core generate --prompt ...``: see :mod:`hdm_core.cli`."""

import sys

from .cli import main

sys.exit(main())
