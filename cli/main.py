"""`supsup-hf`: the click group and its error convention.

Every command is a small function over library calls. Errors the user can fix (bad options,
library `ValueError`s, damaged archives, missing data) end as ONE line on stderr and exit code 2,
never a traceback. Commands live in sibling modules and are registered at the bottom.
"""
import os
import sys

# Idle OpenMP threads sleep instead of spinning: torch and Numba share the cores in one process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from supsup_hopfield.errors import UserError  # noqa: E402


class App(click.Group):
    """A click group whose every user error is one line on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.ClickException as e:
            _fail(e.format_message())
        except (UserError, ValueError, OSError) as e:  # OSError: unwritable --out or --plot, ...
            _fail(str(e))
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str):
    line = " ".join(str(message).split())  # one line, whatever the message held
    click.echo(f"Error: {line}", err=True)
    sys.exit(2)


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="supsup-hopfield")
def app():
    """Supermasks in Superposition with the masks stored in a fixed-size Hopfield memory."""


def _register():
    from cli import capacity, eval, inspect, storage, train

    for command in (train.train, eval.eval_, inspect.inspect, storage.storage_report, capacity.capacity,
                    capacity.basins):
        app.add_command(command)


_register()
main = app
