"""User-facing errors: the CLI prints their message and exits non-zero without a traceback."""


class SrcoreError(Exception):
    """An error the user can fix (bad input, missing data, wrong configuration)."""


class DataError(SrcoreError):
    """Missing, empty, unreadable or unsupported data."""


class ConfigError(SrcoreError):
    """Invalid parameters, unknown names, incompatible options."""


class CheckpointError(SrcoreError):
    """A weights file that cannot be loaded into the requested model."""


class CheckpointUploadFailed(SrcoreError):
    """Checkpoints could not reach the store for the configured time; the newest is kept locally."""
