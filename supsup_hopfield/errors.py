"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input or a missing resource: the message says what was wrong and what to do."""


class ArchiveError(UserError):
    """An archive that cannot be trusted: not HDF5, truncated, damaged, or of another schema."""
