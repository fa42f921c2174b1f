"""`python -m cli` runs `supsup-hf`."""
from cli.main import main

main()
