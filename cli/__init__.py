"""The `supsup-hf` command line: thin click commands over the library."""
