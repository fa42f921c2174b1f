"""Errors a user can fix. The CLI prints them as one line and exits with code 2; any other
exception is a bug and keeps its traceback."""


class UserError(ValueError):
    """Bad input or a missing resource: the message says what was wrong and what to do. It names
    parameters as Python does, in backticks (`hopfield_dim`, or `hopfield_dim=4096` for a value
    to pass); the CLI shows its own flags in their place. A ValueError, as numpy's are."""


class ArchiveError(UserError):
    """An archive that cannot be trusted: not HDF5, truncated, damaged, or of another schema."""


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(subject: str, parts: dict, fix: str, available: int | None = None) -> None:
    """Refuse, before anything is allocated, work whose arrays (`parts`: what -> bytes) would
    need more than this machine's RAM; the message gives the bytes and `fix`."""
    need = sum(parts.values())
    available = physical_memory() if available is None else available
    if available and need > available:
        detail = ", ".join(f"{what} {_gib(n)}" for what, n in parts.items() if n)
        raise UserError(f"{subject} would need about {_gib(need)} ({detail}), more than this machine's {_gib(available)}"
                        f" of RAM; {fix}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
