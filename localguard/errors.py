"""One exception family: anything the user can fix raises LocalguardError.

The CLI prints such an error as one line and exits 2; every other exception is a bug in
localguard and exits 1 (with the traceback under --debug).
"""

from __future__ import annotations


class LocalguardError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class RecipeError(LocalguardError):
    """A recipe that cannot be parsed or does not fit the schema."""


class ModelNotFoundError(LocalguardError):
    """A model reference that resolves to no usable local folder."""


class InputError(LocalguardError):
    """A data file, artifact or option that cannot be used."""
