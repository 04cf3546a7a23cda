"""User-facing errors: the CLI prints their message as one line and exits with code 2, without a traceback."""


class DimbaError(Exception):
    """Bad input or environment that the user can fix (a missing file, a bad flag, a wrong checkpoint)."""


class ConfigError(DimbaError, ValueError):
    """An invalid setting (a sampling option, a model or training configuration). A ValueError too, so that
    code calling the library catches it as one."""
