"""``python -m hdm_core.tipo``: the ``tipo`` command on its own."""

import sys

from .cli import main

sys.exit(main())
