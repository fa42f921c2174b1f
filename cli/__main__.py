"""`python -m cli` runs `supsup-hf`."""
from supsup_hopfield.cli.main import main

main()
