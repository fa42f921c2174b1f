"""supsup-hopfield: Supermasks in Superposition (Wortsman et al., NeurIPS 2020) with the task
masks held as attractors of a fixed-size Hopfield memory.

`cli/` and `compression/` are top-level folders of the source tree that install inside this
package as `supsup_hopfield.cli` and `supsup_hopfield.compression` (setup.py's package_dir); in
the source tree, `supsup_hopfield/cli` and `supsup_hopfield/compression` are symbolic links to
them, so the same names import from a checkout.
"""

__version__ = "0.1.0"
