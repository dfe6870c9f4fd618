"""Headless HDM trainer (``python -m trainer fit config.toml``), driven by ``hdm_core``."""
