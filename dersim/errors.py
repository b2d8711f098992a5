"""User-facing errors: each one is printed as a single line naming the file, row, key or option."""


class DersimError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""


class RecipeError(DersimError):
    """A malformed build recipe (names the file and key)."""


class DatasetError(DersimError):
    """A malformed dataset file (names the file and row)."""


class BackendError(DersimError):
    """A backend could not be set up (missing model file, bad option, unknown backend)."""


class CacheFormatError(DersimError):
    """A cache directory that is missing, corrupted or inconsistent (names the file)."""


class OutputError(DersimError):
    """An output directory that cannot be written: not creatable, read-only, locked by another
    writer, or holding a result that needs --overwrite (names the directory)."""


class EnvError(DersimError):
    """A bad environment setting (unknown metric, T_max beyond the built depth, ...)."""
