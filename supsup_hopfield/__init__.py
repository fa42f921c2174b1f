"""supsup-hopfield: Supermasks in Superposition (Wortsman et al., NeurIPS 2020) with the task
masks held as attractors of a fixed-size Hopfield memory.

`cli/` and `compression/` are top-level folders of the source tree that install inside this
package (`supsup_hopfield.cli`, `supsup_hopfield.compression`; see setup.py). In a source
checkout, where they sit beside this folder, the package's search path takes them from there.
"""
import os as _os

__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_tree = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "cli")) and all(
        _os.path.isfile(_os.path.join(_tree, sub, "__init__.py")) for sub in ("cli", "compression")):
    __path__.append(_tree)  # noqa: F821 (a package's __path__)
