"""`supsup-hf`: the click group and its error convention.

Every command is a small function over library calls. Errors the user can fix (bad options,
the library's `UserError`s: damaged archives, missing data, sizes that cannot fit) end as ONE
line on stderr and exit code 2, with the library's Python parameter names written as this
command's flags; anything else is a bug and keeps its traceback. Commands live in sibling modules, imported only when one is run (torch and
Numba take seconds to import; `supsup-hf --help` and `--version` need neither).
"""
import importlib
import re
import sys

import click

from supsup_hopfield.errors import UserError


# name -> (module, command object, the line `supsup-hf --help` shows for it)
COMMANDS = {
    "basins": ("supsup_hopfield.cli.capacity", "basins", "Recall from noisy cues, per rule and load."),
    "capacity": ("supsup_hopfield.cli.capacity", "capacity", "Fixed points and recall of random ±1 patterns."),
    "eval": ("supsup_hopfield.cli.eval", "eval_", "Accuracy of ARCHIVE's tasks by inference method."),
    "inspect": ("supsup_hopfield.cli.inspect", "inspect", "What ARCHIVE holds: config, tasks, memories."),
    "storage-report": ("supsup_hopfield.cli.storage", "storage_report", "Bytes per mask: codecs against the memory."),
    "train": ("supsup_hopfield.cli.train", "train", "Learn a supermask per task; store it in the memory."),
}


class App(click.Group):
    """A click group whose every user error is one line on stderr and exit code 2, and whose
    commands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:  # the library names Python parameters; say the command's flags
            # the command's own options first, then train's (how a run was trained)
            names = [ctx.invoked_subcommand] if ctx.invoked_subcommand else []
            params = [p for n in [*names, "train"] for p in self.get_command(ctx, n).params]
            raise type(e)(in_flags(str(e), params)) from e

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
        except (UserError, OSError) as e:  # OSError: unwritable --out or --plot, ...
            _fail(str(e))
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


_PARAM = re.compile(r"`([a-z_]+)(?:=([^`]*))?`")


def in_flags(message: str, params) -> str:
    """`message` with each backticked Python parameter (`name` or `name=value`) written as the
    command's option (--name, --name value, --flag / --no-flag); other backticked names are left
    as they are, without the backticks."""
    options = {}
    for p in params:
        if isinstance(p, click.Option):
            options.setdefault(p.name, p)

    def flag(m):
        name, value = m.group(1), m.group(2)
        opt = options.get(name)
        if opt is None:
            return m.group(0)[1:-1]
        if value is None:
            return opt.opts[0]
        if opt.is_flag:
            return opt.opts[0] if value == "True" else (opt.secondary_opts or [opt.opts[0]])[0]
        value = value.strip("'\"")
        if value.startswith("(") and value.endswith(")"):  # a tuple is given comma-separated
            value = value[1:-1].replace(" ", "").rstrip(",")
        return f"{opt.opts[0]} {value}"

    return _PARAM.sub(flag, message)


def _fail(message: str):
    line = " ".join(str(message).split())  # one line, whatever the message held
    click.echo(f"Error: {line}", err=True)
    sys.exit(2)


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="supsup-hopfield")
def app():
    """Supermasks in Superposition with the masks stored in a fixed-size Hopfield memory."""


main = app
