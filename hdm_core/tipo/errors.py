"""Errors of the TIPO prompt expander; every message says what is wrong and how to fix it."""

from __future__ import annotations


class TipoError(RuntimeError):
    """A TIPO expansion that cannot run or did not give a usable prompt."""


class TipoDependencyError(TipoError):
    """A Python package TIPO needs is missing or broken (tipo-kgen, sentencepiece, llama-cpp-python)."""


class TipoModelError(TipoError):
    """No usable TIPO model: none found, files missing, or an unsupported kind of model."""


class TipoLengthError(TipoError):
    """The model kept writing fewer tags or sentences than the length target asked for."""
