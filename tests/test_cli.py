"""The `supsup-hf` group itself: commands load on first use, so help and version stay light."""
import subprocess
import sys

import click
from click.testing import CliRunner

from cli.main import COMMANDS, app


def test_every_listed_command_loads_under_its_name():
    for name in COMMANDS:
        cmd = app.get_command(None, name)
        assert isinstance(cmd, click.Command) and cmd.name == name
    assert app.get_command(None, "trian") is None
    out = CliRunner().invoke(app, ["--help"]).output
    assert [line.split()[0] for line in out.split("Commands:")[1].strip().splitlines()] == sorted(COMMANDS)


def test_help_and_version_import_neither_torch_nor_numba():
    code = ("import sys\nfrom cli.main import app\n"
            "for args in (['--help'], ['--version']):\n"
            "    try:\n        app.main(args, prog_name='supsup-hf')\n    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n"
            "heavy = sorted(m for m in ('torch', 'numba', 'h5py', 'scipy') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage: supsup-hf" in res.stdout and "version" in res.stdout
