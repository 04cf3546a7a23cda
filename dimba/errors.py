"""User-facing errors: the CLI prints their message as one line and exits non-zero, without a traceback."""


class DimbaError(Exception):
    """Bad input or environment that the user can fix (a missing file, a bad flag, a wrong checkpoint)."""
