"""supsup-hopfield: Supermasks in Superposition (Wortsman et al., NeurIPS 2020) with the task
masks held as attractors of a fixed-size Hopfield memory."""

__version__ = "0.1.0"
