"""Output paths checked when the command line is read, before any work is done."""
import os
from pathlib import Path

import click


class OutputFile(click.Path):
    """A file the command will write: its folder must exist and be writable, and it must not be a
    folder itself. Checked at parse time, so a typo costs nothing."""

    def __init__(self):
        super().__init__(dir_okay=False, path_type=str)

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        path = Path(value)
        if path.is_dir():
            self.fail(f"{value} is a folder; give a file path", param, ctx)
        folder = path.parent
        if not folder.is_dir():
            self.fail(f"folder {folder} does not exist; create it first", param, ctx)
        if not os.access(folder, os.W_OK):
            self.fail(f"folder {folder} is not writable; choose another path", param, ctx)
        return value
