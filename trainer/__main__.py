"""``python -m trainer fit config.toml`` / ``python -m trainer convert in.pt out.safetensors``."""

import sys

from .cli import main

sys.exit(main())
